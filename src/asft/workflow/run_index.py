"""`results/runs/`: the content-keyed folders of each run under names people browse.

    results/runs/<train set>/<mode>/seed<k>/train        -> results/train/<key>
                                          /merge        -> results/merge/<key>      (LoRA runs)
                                          /generate/<benchmark>          -> results/generate/<key>
                                          /score/<benchmark>/<policy>    -> results/score/<key>
    results/runs/base/generate/<benchmark>, results/runs/base/score/<benchmark>/<policy>
    a sweep point adds a folder of its settings: results/runs/mul/asft/seed0/loss.kl_weight=0.05/train
    results/runs/index.csv: one row per (run, benchmark, policy) with the same paths

Built by `publish` from the table it publishes (its plan.json rows name the scores; each manifest
names its parents), so it always describes the published table. Links are relative, so the results
folder can be moved or copied; the whole index is replaced at once (built beside, then renamed).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

INDEX = "runs"


def _parents(results: Path, ref: str) -> dict[str, str]:
    try:
        return dict(json.loads((results / ref / "manifest.json").read_text()).get("parents") or {})
    except (OSError, ValueError):
        return {}


#: The labels every row has; any other is a swept setting (asft.workflow.sweeps) and names a point.
ROW_LABELS = frozenset({"train_set", "mode", "seed", "benchmark", "grading", "score_key", "policies"})


def run_folder(row: Mapping[str, Any]) -> Path:
    """base, or <train set>/<mode>/seed<k>; a sweep point's settings add a folder (`loss.kl_weight=0.05`)."""
    folder = Path("base") if row.get("mode") == "base" else \
        Path(str(row["train_set"])) / str(row["mode"]) / f"seed{row['seed']}"
    point = ",".join(f"{name}={row[name]}" for name in sorted(set(row) - ROW_LABELS) if row[name] not in (None, "-"))
    return folder / point.replace("/", "_") if point else folder


def index_entries(results: Path, rows: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One entry per table row: the run's folder in the index and the artifacts it links to."""
    entries = []
    for row in rows:
        score = f"score/{row['score_key']}"
        generate = _parents(results, score).get("samples", "")
        model = _parents(results, generate).get("model", "") if generate else ""
        merge = model if model.startswith("merge/") else ""
        train = _parents(results, merge).get("train", "") if merge else (model if model.startswith("train/") else "")
        entries.append({"run": str(run_folder(row)), "benchmark": str(row["benchmark"]),
                        "grading": str(row.get("grading", "")), "train": train, "merge": merge,
                        "generate": generate, "score": score})
    return entries


def _link(index: Path, name: Path, target: str, results: Path) -> None:
    if not target or not (results / target).is_dir():
        return
    link = index / name
    if link.is_symlink() or link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(results / target, link.parent), target_is_directory=True)


def write_run_index(results: Path, rows: list[Mapping[str, Any]]) -> Path:
    """(Re)build results/runs/ for the table's rows; returns its folder."""
    results = Path(results)
    final = results / INDEX
    for leftover in [*results.glob(f".{INDEX}.building-*"), *results.glob(f".{INDEX}.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)  # of a killed publish (publish is a local rule: one at a time)
    building = results / f".{INDEX}.building-{os.getpid()}"
    building.mkdir(parents=True)
    entries = index_entries(results, rows)
    for entry in entries:
        run = Path(entry["run"])
        _link(building, run / "train", entry["train"], results)
        _link(building, run / "merge", entry["merge"], results)
        _link(building, run / "generate" / entry["benchmark"], entry["generate"], results)
        _link(building, run / "score" / entry["benchmark"] / (entry["grading"] or "score"), entry["score"], results)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["run", "benchmark", "grading", "train", "merge", "generate", "score"])
    writer.writeheader()
    writer.writerows(entries)
    (building / "index.csv").write_text(table.getvalue())
    old = results / f".{INDEX}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    building.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
