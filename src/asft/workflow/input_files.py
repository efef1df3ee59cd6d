"""Parse-time checks of the local files a configuration names: training files and benchmark copies.

`parse_config` (asft.workflow.config) runs these once the config itself is valid, and a bad file
is a ConfigError like a bad field. That is where the Snakefile already turns a ConfigError into a
WorkflowError at parse time, so `snakemake -n` (and `asft plan`, `asft status`) stops before any
job starts, with one line per bad file naming the setting, the file, the line or row and the
column, and no traceback:

    invalid configuration:
      train_sets[toy].path: /data/toy.jsonl: line 12: column 'response' is null, not text

Checked: train sets with `source: local`, hub train sets with a local mirror (`path`), and the
`eval.benchmark_files` copies of the benchmarks in `eval.benchmarks`. Not checked: hub files
without a mirror, fetched by the data job (which checks their sha256; files already in the hub
cache are skipped too: finding them would mean resolving revisions at parse time), and
`source: hub_dataset` sets, hub ids and local folders alike, which only `datasets.load_dataset` in
the data job resolves (the rows are checked there, with the same messages). The data job
reads every file again with the same readers (asft.train.data_checks), so a file changed after the
parse still fails there, with the same message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from asft.train.data_checks import (
    LARGE_FILE_BYTES,
    DataFileError,
    RowSpec,
    check_jsonl_file,
    check_train_file,
    empty_file,
)

if TYPE_CHECKING:
    from asft.workflow.config import Config, TrainSetConfig


def _local(path: str) -> Path:
    """The path as the job will open it: `~` expanded, relative to the working directory."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # `~someone` with no such user: the path as written, which then does not exist
        return Path(path)


def train_set_file(train_set: TrainSetConfig) -> Path:
    """The file a local (or hub-mirrored) train set reads, as asft.train.data.locate_source finds it."""
    setting = f"train_sets[{train_set.name}]"
    local = _local(train_set.path)
    if local.is_dir():
        if not train_set.filename:
            raise DataFileError(f"{local} is a folder: set {setting}.filename to the file in it")
        folder, local = local, local / train_set.filename
        if not local.is_file():
            raise DataFileError(f"{local} does not exist (no {setting}.filename '{train_set.filename}' "
                                f"in the folder {folder})")
    if not local.is_file():
        raise DataFileError(f"{local} does not exist" if not local.exists() else f"{local} is not a regular file")
    return local


def train_set_problem(train_set: TrainSetConfig) -> str | None:
    """What is wrong with a train set's local file, as `train_sets[name].path: ...`; None if nothing."""
    setting = f"train_sets[{train_set.name}]"
    try:
        check_train_file(train_set_file(train_set), RowSpec.of(train_set, setting))
    except DataFileError as error:
        return f"{setting}.path: {error}"
    except (OSError, ValueError) as error:  # unreadable (permissions, a path the OS refuses)
        return f"{setting}.path: {train_set.path}: cannot be read ({error})"
    return None


def benchmark_copy_problem(benchmark: str, path: str) -> str | None:
    """What is wrong with a local benchmark copy, as `eval.benchmark_files.<name>: ...`; None if nothing.

    The file must be UTF-8 JSON Lines of objects, not empty; a hub benchmark's own loader (the only kind
    that reads a copy) reads it with the same reader, so the fields it needs are checked by the parser
    that will use them.
    """
    from asft.eval.benchmarks import get_benchmark

    setting = f"eval.benchmark_files.{benchmark}"
    local = _local(path)
    try:
        if not local.is_file():
            return f"{setting}: {local} " + ("is a folder, not a file" if local.is_dir() else "does not exist")
        loader = get_benchmark(benchmark)
        if loader.hub is not None and local.stat().st_size <= LARGE_FILE_BYTES:
            # its loader reads every line with the same reader, so the file is read once
            if not loader.load_rows({"local_file": str(local)}):
                raise empty_file(local)
        else:
            check_jsonl_file(local)
    except (OSError, ValueError) as error:  # DataFileError, or the loader's own message
        return f"{setting}: {str(error).removeprefix(f'benchmark {benchmark}: ')}"
    return None


def input_file_problems(cfg: Config) -> list[str]:
    """One message per bad local file of a configuration (each file stops at its first problem)."""
    problems = [train_set_problem(s) for s in cfg.train_sets if s.source == "local" or (s.source == "hub" and s.path)]
    copies = cfg.eval.benchmark_files
    problems += [benchmark_copy_problem(name, copies[name]) for name in cfg.eval.benchmarks if name in copies]
    return [problem for problem in problems if problem]
