"""Job entry points: what each `workflow/scripts/<stage>.py` calls with the Snakemake job.

A job reads its node (typed settings, parents, runtime) from its node file, runs the stage's runner
named by the stage table with a `StageJob` (its parents' folders and a temporary folder to write into),
and the folder becomes `results/<stage>/<key>/` only when complete
(asft.workflow.artifacts.writing_artifact). Logs go to the rule's log file, progress bars included.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asft.core.job import StageJob
from asft.workflow.artifacts import MANIFEST, Node, atomic_folder, partial_dir, write_manifest, writing_artifact
from asft.workflow.integrity import ArtifactError, artifact_report, parent_digests, verify_parents
from asft.workflow.job_records import job_record
from asft.workflow.plan import read_node
from asft.workflow.stages import get_stage, stage_of_rule


def run_stage(node: Node, inputs: Mapping[str, Path], final: Path, *, threads: int = 1,
              verify_parents_first: bool = True) -> dict[str, Any]:
    """Run one stage's runner (from the stage table) into `final` atomically; returns its stats (also in
    stats.json). What must survive a killed job (training checkpoints) lives in `<key>.partial/`, removed
    once the artifact is complete.

    Every parent is verified against its manifest before the runner reads it, and the child's manifest
    records each parent's content (the digest of its file table). An artifact that is already complete and sound is returned
    at once: after a kill between the rename and Snakemake's bookkeeping, the documented resume
    (`snakemake --unlock`, then the same command; the profiles set rerun-incomplete) costs nothing.
    """
    final = Path(final)
    resume = partial_dir(final)
    if (final / MANIFEST).is_file():
        stats = _already_complete(node, final, inputs)
        if stats is not None:
            # killed between the rename and the clean-up below: the checkpoints are stale now
            shutil.rmtree(resume, ignore_errors=True)
            return stats
    stage = get_stage(node.stage)
    runner = stage.load_runner()
    extra: dict[str, Any] = {}
    if verify_parents_first:
        checking = time.perf_counter()
        extra["parent_files"] = verify_parents(inputs)
        extra["parent_check_seconds"] = round(time.perf_counter() - checking, 3)  # the cost, for the record
    with writing_artifact(final, node, extra) as tmp:
        job = StageJob(settings=node.settings, runtime=node.runtime, parents=dict(inputs), out=tmp,
                       resume_dir=resume, threads=threads, labels=dict(node.labels))
        stats = runner(job)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
        extra["stats"] = stats
    shutil.rmtree(resume, ignore_errors=True)  # the artifact is complete: its resume point is no longer needed
    return stats


def _already_complete(node: Node, final: Path, inputs: Mapping[str, Path]) -> dict[str, Any] | None:
    """The stats of a complete, sound artifact made from the parents as they are now; None after removing
    one made from parents whose content has changed since (it is stale: the job makes it again)."""
    manifest, problems = artifact_report(final, node.stage)
    if problems:
        raise ArtifactError(f"{final} holds an artifact that is not what its manifest says ({'; '.join(problems[:3])}); "
                            "run `asft verify --fix`, then the same snakemake command")
    recorded = manifest.get("parent_files") or {}
    now = parent_digests(inputs)
    if any(recorded.get(role) not in (None, digest) for role, digest in now.items()):
        print(f"[asft] {node.stage} {node.key}: its parents' content changed since it was made; making it again",
              flush=True)
        shutil.rmtree(final)
        return None
    print(f"[asft] {node.stage} {node.key} is already complete and sound: nothing to do", flush=True)
    return dict(manifest.get("stats") or {})


@contextmanager
def failures_logged(what: str) -> Iterator[None]:
    """A job's traceback goes into its rule log (where users look first, and what Snakemake shows for a
    failed job), followed by one line saying it failed; the exception goes on."""
    try:
        yield
    except BaseException:
        traceback.print_exc()
        print(f"[asft] {what} failed", flush=True)
        raise


@contextmanager
def redirect_output(log_path: str | os.PathLike | None) -> Iterator[None]:
    """Send this process's stdout and stderr (C level too: tqdm, warnings) to the log file."""
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_from_snakemake(smk: Any) -> None:
    """Entry point of the stage scripts: `run_from_snakemake(snakemake)`.

    The job reads its node from the file the Snakefile wrote at parse time (asft.workflow.plan), not
    from params, so settings outside the key (batch size, chunk size) never make Snakemake re-run a job,
    and no job parses the config or rebuilds the plan.
    """
    stage, key = stage_of_rule(smk.rule).name, smk.wildcards.key
    log = smk.log[0] if smk.log else None
    with job_record(stage, key, log=log):  # what `asft status` reads: running, or failed with the error
        node = read_node(stage, key)
        inputs = {role: Path(path).parent for role, path in smk.input.items() if str(path).endswith("manifest.json")}
        with redirect_output(log):
            print(f"[asft] {node.stage} {node.key} {json.dumps(dict(node.labels))}", flush=True)
            with failures_logged(f"{node.stage} {node.key}"):
                run_stage(node, inputs, Path(smk.output[0]).parent, threads=int(smk.threads))
            print(f"[asft] {node.stage} {node.key} done", flush=True)


def run_aggregate_from_snakemake(smk: Any) -> None:
    """The keyed table folder (table, per-run rows, chart, LaTeX, resolved config, plan, manifest),
    written like every artifact: into a temporary folder, fsynced, renamed into place."""
    import yaml

    from asft.eval.published import load_published
    from asft.eval.table import aggregate

    params, out = smk.params, smk.output
    final = Path(out.csv).parent
    with redirect_output(smk.log[0] if smk.log else None), failures_logged("aggregate"):
        score_dirs = {Path(p).parent.name: Path(p).parent for p in smk.input.scores}
        train_dirs = {Path(p).parent.name: Path(p).parent for p in getattr(smk.input, "train", [])}
        verify_parents({f"score {key}": folder for key, folder in score_dirs.items()}
                       | {f"train {key}": folder for key, folder in train_dirs.items()})
        started = time.time()
        with atomic_folder(final, replace=True) as tmp:
            table = aggregate(params.rows, score_dirs, tmp, benchmarks=params.benchmarks, target=params.target,
                              retention=params.retention, mode_order=params.modes, title=params.title,
                              labels=params.labels, published=load_published(params.published),
                              train_rows=getattr(params, "train_rows", []), train_dirs=train_dirs)
            (tmp / Path(out.config).name).write_text(yaml.safe_dump(params.config, sort_keys=False))
            (tmp / Path(out.plan).name).write_text(json.dumps({"rows": params.rows}, indent=2) + "\n")
            write_manifest(tmp, {"stage": final.parent.name, "key": final.name}, started)
        print(table.to_string(), flush=True)


def publish_from_snakemake(smk: Any) -> None:
    """Copy each keyed table file to its fixed name (temp file + rename: never half-written), and
    rebuild results/runs/, the browsable index of the published table's runs (asft.workflow.run_index)."""
    import shutil

    from asft.workflow.run_index import write_run_index

    with redirect_output(smk.log[0] if smk.log else None), failures_logged("publish"):
        for name, source in smk.input.items():
            tmp = Path(smk.output[name] + ".tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(smk.output[name])
        table = Path(smk.input[0]).parent
        results = table.parent.parent
        rows = json.loads((table / "plan.json").read_text())["rows"]
        print(f"[asft] published {table.name}; runs indexed in {write_run_index(results, rows)}", flush=True)
