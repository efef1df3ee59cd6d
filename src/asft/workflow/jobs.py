"""Stage entry points: what each `workflow/scripts/<stage>.py` calls with the Snakemake job.

Each stage gets its node (settings, parents, runtime) and its input artifact folders, writes into
a temporary folder, and the folder becomes `results/<stage>/<key>/` only when complete
(asft.workflow.artifacts.writing_artifact). Logs go to the rule's log file, progress bars included.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asft.workflow.artifacts import Node, writing_artifact


def weights_dir(artifact: Path) -> Path:
    """Model weights of an artifact: `model/` inside a training run, the folder itself otherwise."""
    inner = Path(artifact) / "model"
    return inner if inner.is_dir() else Path(artifact)


def _model(node: Node, inputs: Mapping[str, Path], out: Path, threads: int) -> dict[str, Any]:
    import torch

    from asft.train.models import build_model

    torch.set_num_threads(threads)
    return build_model(node.settings, out)


def _data(node: Node, inputs: Mapping[str, Path], out: Path, threads: int) -> dict[str, Any]:
    from asft.train.data import build_dataset

    return build_dataset(node.settings, out)


def _tokenize(node: Node, inputs: Mapping[str, Path], out: Path, threads: int) -> dict[str, Any]:
    from asft.train.data import tokenize_dataset

    return tokenize_dataset(node.settings, inputs["data"], inputs["model"], out,
                            num_proc=int(node.runtime.get("num_proc", 1)))


def checkpoint_dir(final: Path) -> Path:
    """Where a training run keeps its checkpoints: beside its artifact, never deleted on failure."""
    return final.parent / f"{final.name}.partial"


def _train(node: Node, inputs: Mapping[str, Path], out: Path, threads: int, final: Path) -> dict[str, Any]:
    from asft.train.trainer import launch_distributed, train_run

    paths = {"model_dir": inputs["model"], "dataset_dir": inputs["tokenize"] / "dataset", "out_dir": out,
             "checkpoint_dir": checkpoint_dir(final), "threads": threads}
    processes = int(node.runtime.get("num_processes", 1))
    if processes > 1:
        return launch_distributed(node.settings, node.runtime, num_processes=processes, **paths)
    return train_run(node.settings, node.runtime, **paths)


def _merge(node: Node, inputs: Mapping[str, Path], out: Path, threads: int) -> dict[str, Any]:
    import torch

    from asft.train.merge import merge_adapter

    torch.set_num_threads(threads)
    return merge_adapter(weights_dir(inputs["train"]), inputs["model"], out, dtype=node.settings["dtype"])


def _eval(node: Node, inputs: Mapping[str, Path], out: Path, threads: int) -> dict[str, Any]:
    from asft.eval.evaluation import run_eval

    base = weights_dir(inputs["base"]) if "base" in inputs else None
    return run_eval(node.settings, node.runtime, model_dir=weights_dir(inputs["model"]), out_dir=out,
                    base_dir=base, threads=threads)


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "model": _model, "data": _data, "tokenize": _tokenize, "train": _train, "merge": _merge, "eval": _eval,
}


def run_stage(node: Node, inputs: Mapping[str, Path], final: Path, *, threads: int = 1) -> dict[str, Any]:
    """Run one stage into `final` atomically; returns the stage's stats (also in stats.json)."""
    final = Path(final)
    extra: dict[str, Any] = {}
    with writing_artifact(final, node, extra) as tmp:
        if node.stage == "train":
            stats = _train(node, inputs, tmp, threads, final)
        else:
            stats = STAGES[node.stage](node, inputs, tmp, threads)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
        extra["stats"] = stats
    if node.stage == "train":
        from asft.train.trainer import remove_checkpoints

        remove_checkpoints(checkpoint_dir(final))  # the run is complete: its resume point is no longer needed
    return stats


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


#: Rule names whose stage name differs.
RULE_STAGES = {"download_model": "model", "download_data": "data"}


def run_from_snakemake(smk: Any) -> None:
    """Entry point of the stage scripts: `run_from_snakemake(snakemake)`.

    The node is rebuilt from the job's config and its key wildcard rather than passed as params,
    so settings outside the key (batch size, chunk size) never make Snakemake re-run a job.
    """
    from asft.workflow.config import parse_config
    from asft.workflow.plan import build_plan

    node = build_plan(parse_config(smk.config)).node(RULE_STAGES.get(smk.rule, smk.rule), smk.wildcards.key)
    inputs = {role: Path(path).parent for role, path in smk.input.items() if str(path).endswith("manifest.json")}
    with redirect_output(smk.log[0] if smk.log else None):
        print(f"[asft] {node.stage} {node.key} {json.dumps(dict(node.labels))}", flush=True)
        try:
            run_stage(node, inputs, Path(smk.output[0]).parent, threads=int(smk.threads))
        except BaseException:
            traceback.print_exc()  # into the rule's log, where users look first
            print(f"[asft] {node.stage} {node.key} failed", flush=True)
            raise
        print(f"[asft] {node.stage} {node.key} done", flush=True)


def run_aggregate_from_snakemake(smk: Any) -> None:
    """The keyed table folder: table, per-run rows, chart, LaTeX, resolved config and plan."""
    import yaml

    from asft.eval.published import load_published
    from asft.eval.table import aggregate

    params, out = smk.params, smk.output
    with redirect_output(smk.log[0] if smk.log else None):
        eval_dirs = {Path(p).parent.name: Path(p).parent for p in smk.input.evals}
        table = aggregate(params.rows, eval_dirs, Path(out.csv).parent, benchmarks=params.benchmarks,
                          target=params.target, retention=params.retention, mode_order=params.modes,
                          title=params.title, labels=params.labels, published=load_published(params.published))
        for path, text in ((out.config, yaml.safe_dump(params.config, sort_keys=False)),
                           (out.plan, json.dumps({"rows": params.rows}, indent=2) + "\n")):
            Path(path + ".tmp").write_text(text)
            Path(path + ".tmp").replace(path)
        print(table.to_string(), flush=True)


def publish_from_snakemake(smk: Any) -> None:
    """Copy each keyed table file to its fixed name (temp file + rename: never half-written)."""
    import shutil

    for name, source in smk.input.items():
        tmp = Path(smk.output[name] + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(smk.output[name])
