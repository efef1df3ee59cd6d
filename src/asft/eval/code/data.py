"""The EvalPlus data files shipped in data/benchmarks/ (see PROVENANCE.md there), checked on every load.

HumanEval+ v0.1.10 (164 tasks) and MBPP+ v0.2.0 (378 tasks), gzipped jsonl as released. Each holds
both suites: `base_input` (the original benchmark's tests) and `plus_input` (EvalPlus's extra tests).
EvalPlus itself reads them through its override variables (HUMANEVAL_OVERRIDE_PATH, MBPP_OVERRIDE_PATH);
here they are only read for the prompts. A user's own copy (`eval.benchmark_files.<name>`) replaces the
shipped file, its sha256 recorded instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asft.core.files import sha256_file

DATA_DIR = Path(__file__).resolve().parents[4] / "data" / "benchmarks"


@dataclass(frozen=True)
class CodeDataset:
    """An EvalPlus dataset: its shipped file, the variable EvalPlus reads a local copy from, its fields."""

    name: str  # EvalPlus's dataset name (humaneval, mbpp)
    path: Path
    sha256: str
    override_env: str
    n_tasks: int


DATASETS = {
    "humaneval": CodeDataset("humaneval", DATA_DIR / "humaneval" / "HumanEvalPlus.jsonl.gz",
                             "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
                             "HUMANEVAL_OVERRIDE_PATH", 164),
    "mbpp": CodeDataset("mbpp", DATA_DIR / "mbpp" / "MbppPlus.jsonl.gz",
                        "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63",
                        "MBPP_OVERRIDE_PATH", 378),
}
REQUIRED_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")


def get_dataset(name: str) -> CodeDataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown EvalPlus dataset '{name}'; known: {', '.join(DATASETS)}") from None


def checked_file(dataset: str, local_file: str | None = None, local_sha256: str | None = None) -> Path:
    """The data file to use, its bytes checked: the shipped one, or a user's copy against the sha256 the plan
    recorded (a copy changed since is an error)."""
    data = get_dataset(dataset)
    path, expected = (Path(local_file), local_sha256) if local_file else (data.path, data.sha256)
    if not path.is_file():
        raise FileNotFoundError(f"EvalPlus data file {path} is missing")
    actual = sha256_file(path)
    if expected is not None and actual != expected.lower():
        raise ValueError(f"EvalPlus data file {path} was changed: sha256 {actual}, expected {expected}")
    return path


def read_tasks(path: Path) -> list[dict[str, Any]]:
    """The tasks of an EvalPlus file in file order (jsonl or jsonl.gz, as EvalPlus's own reader takes them)."""
    from evalplus.data.utils import stream_jsonl

    tasks = []
    for line, task in enumerate(stream_jsonl(str(path)), 1):
        missing = [f for f in REQUIRED_FIELDS if f not in task]
        if missing:
            raise ValueError(f"{path}: task {line} ({task.get('task_id', '?')}) has no {', '.join(missing)}: "
                             "not an EvalPlus HumanEval+/MBPP+ file")
        tasks.append(task)
    if not tasks:
        raise ValueError(f"{path}: holds no task")
    return tasks
