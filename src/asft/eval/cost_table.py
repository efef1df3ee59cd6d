"""Training cost per method (the paper's Table 4: hours and peak memory per method): what each training
job measures, and the aggregate's `cost.csv` and "Training cost" section of table.md (docs/cost.md).

Measured in the train job (`measured_cost`, called by asft.train.trainer at the end of training):
- `peak_gpu_memory_gb`: `torch.cuda.max_memory_allocated()` (its counter reset when training starts),
  summed over the job's GPUs (every device of each process, then every rank), in GiB (2**30 bytes):
  the paper's GRPO row (484 GB) can only be a sum over GPUs. `peak_gpu_memory_per_device_gb` is the
  largest single device's peak. Both are absent on CPU.
- `peak_rss_gb`: the process's maximum resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, its
  waited-for children's `RUSAGE_CHILDREN` peak added when larger than nothing), summed over the ranks
  under torchrun (each rank measures itself; the job has no data-loader workers): an upper bound on the
  job's simultaneous host memory, since the ranks' peaks need not coincide.
- `device`: `torch.cuda.get_device_name()` or "cpu"; `num_devices`: GPUs (or processes on CPU).
The time is the trainer's `train_runtime_s` (HF's `train_runtime`: the training loop, without loading
the model; a resumed run's is its last attempt's only, so the table counts resumed runs).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

GIB = 2**30
#: Published cost tables' metrics (config/published.yaml, `metrics:`): ours in the same units.
HOURS, MEMORY = "hours", "memory_gb"
#: Our cost table's group columns before the swept settings (method: full or lora, from the manifest).
COST_GROUP = ("train_set", "mode", "method")


# --- measured in the train job ---------------------------------------------------------------------------

def reset_peak_memory() -> None:
    """Start the GPU peak-memory counters afresh (no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(device)


def _max_rss_bytes() -> int:
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * scale


def measured_cost() -> dict[str, Any]:
    """This job's peak memory and device (module docstring). Under torch.distributed every rank must call
    it (one all_gather_object of three numbers); every rank gets the job's totals."""
    import torch

    cuda = torch.cuda.is_available()
    per_device = [torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())] if cuda else []
    mine = (sum(per_device), max(per_device, default=0), _max_rss_bytes(), len([b for b in per_device if b]) or 1)
    ranks = [mine]
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        ranks = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, mine)
    stats: dict[str, Any] = {}
    if cuda:
        stats["peak_gpu_memory_gb"] = round(sum(r[0] for r in ranks) / GIB, 3)
        stats["peak_gpu_memory_per_device_gb"] = round(max(r[1] for r in ranks) / GIB, 3)
    stats["peak_rss_gb"] = round(sum(r[2] for r in ranks) / GIB, 3)
    stats["device"] = torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else "cpu"
    stats["num_devices"] = sum(r[3] for r in ranks)
    return stats


# --- the aggregate's cost table --------------------------------------------------------------------------

def cost_runs(train_rows: Sequence[Mapping[str, Any]], train_dirs: Mapping[str, Path] | None,
              swept: Sequence[str] = ()) -> pd.DataFrame:
    """One row per training run whose manifest has its stats: labels, method, hours, peak memory, device."""
    records = []
    for row in train_rows:
        folder = (train_dirs or {}).get(row["train_key"])
        if folder is None or not (Path(folder) / "manifest.json").is_file():
            continue
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
        stats = manifest.get("stats")
        if not stats:  # not a train job's manifest (nothing measured)
            continue
        seconds = stats.get("train_runtime_s")
        if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
            seconds = manifest.get("wall_seconds", math.nan)
        records.append({
            "train_set": row.get("train_set"), "mode": row.get("mode"),
            "method": (manifest.get("settings") or {}).get("method", "-"),
            **{name: row.get(name) for name in swept}, "seed": row.get("seed"), "train_key": row["train_key"],
            "hours": float(seconds) / 3600,
            "peak_gpu_memory_gb": float(stats.get("peak_gpu_memory_gb", math.nan)),
            "peak_rss_gb": float(stats.get("peak_rss_gb", math.nan)),
            "device": stats.get("device", "unknown"),
            "resumed": bool(stats.get("resumed_from")),
        })
    return pd.DataFrame(records, columns=[*COST_GROUP, *swept, "seed", "train_key", "hours", "peak_gpu_memory_gb",
                                          "peak_rss_gb", "device", "resumed"])


def _match(published: Mapping[str, Any] | None, train_set: Any, mode: Any, method: Any) -> Mapping[str, Any] | None:
    """The published row of (train set, mode, method); a row without `method` matches either."""
    for row in (published or {}).get("rows", []):
        if row["train_set"] == train_set and row["mode"] == mode and row.get("method", method) == method:
            return row
    return None


def cost_table(runs: pd.DataFrame, *, swept: Sequence[str] = (), mode_order: Sequence[str] = (),
               published: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Per (train set, mode, method, swept values): hours (mean and std over seeds), peak memory (the max
    over seeds: GPU where measured, else the process's RSS, `memory_kind` says which), device(s), runs,
    resumed runs; each relative to the train set's SFT run (full fine-tuning where there is one), and
    the published numbers (`<metric>_published`, and their ratio to the published SFT row) beside."""
    keys = [*COST_GROUP, *swept]
    records = []
    for values, group in runs.groupby(keys, sort=False, dropna=False):
        record = dict(zip(keys, values))
        gpu = group["peak_gpu_memory_gb"].dropna()
        memory_kind = "gpu" if len(gpu) else "rss"
        record.update({
            "runs": len(group), "resumed": int(group["resumed"].sum()),
            HOURS: group["hours"].mean(), "hours_std": group["hours"].std() if len(group) > 1 else math.nan,
            MEMORY: gpu.max() if len(gpu) else group["peak_rss_gb"].max(), "memory_kind": memory_kind,
            "peak_rss_gb": group["peak_rss_gb"].max(),
            "device": ", ".join(sorted(set(map(str, group["device"])))),
        })
        records.append(record)
    table = pd.DataFrame(records, columns=[*keys, "runs", "resumed", HOURS, "hours_std", MEMORY, "memory_kind",
                                           "peak_rss_gb", "device"])
    order = {m: i for i, m in enumerate(mode_order)}
    if len(table):
        table = table.assign(_o=[order.get(m, len(order)) for m in table["mode"]]).sort_values(
            ["train_set", "_o", "method"], kind="stable").drop(columns="_o").reset_index(drop=True)
    _add_ratios(table, "")
    if published:
        matched = [_match(published, *row) for row in table[list(COST_GROUP)].itertuples(index=False)]
        for metric in published.get("metrics", []):
            table[f"{metric}_published"] = [float(r[metric]) if r and metric in r else math.nan for r in matched]
        _add_ratios(table, "_published", published)
    return table


def _sft_row(table: pd.DataFrame, train_set: Any) -> pd.Series | None:
    """The train set's SFT row the others are compared with: full fine-tuning where there is one."""
    sft = table[(table["train_set"] == train_set) & (table["mode"] == "sft")]
    if not len(sft):
        return None
    full = sft[sft["method"] == "full"]
    return (full if len(full) else sft).iloc[0]


def _add_ratios(table: pd.DataFrame, suffix: str, published: Mapping[str, Any] | None = None) -> None:
    """`<metric><suffix>_vs_sft`: each row over its train set's SFT row (ours, or the published SFT row)."""
    for metric in (HOURS, MEMORY):
        column = f"{metric}{suffix}"
        if column not in table:
            continue
        ratios = []
        for _, row in table.iterrows():
            if published is None:
                base = _sft_row(table, row["train_set"])
                denominator = base[column] if base is not None else math.nan
            else:
                base_row = _match(published, row["train_set"], "sft", "full") or _match(published, row["train_set"],
                                                                                      "sft", row["method"])
                denominator = float(base_row[metric]) if base_row and metric in base_row else math.nan
            ratios.append(row[column] / denominator if denominator and not math.isnan(denominator) else math.nan)
        table[f"{column}_vs_sft"] = ratios


def _number(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def cost_markdown(table: pd.DataFrame, *, swept: Sequence[str] = (),
                  published: Mapping[str, Any] | None = None) -> str:
    """The "Training cost" section of table.md."""
    from asft.eval.table import swept_text

    if not len(table):
        return ""
    kinds = set(table["memory_kind"])
    memory_title = {frozenset({"gpu"}): "peak GPU memory GB", frozenset({"rss"}): "peak RSS GB (CPU)"}.get(
        frozenset(kinds), "peak memory GB (GPU; RSS on CPU rows)")
    has_published = published is not None and f"{HOURS}_published" in table
    lines = ["", "## Training cost", "",
             "Per training run: the training loop's wall time (HF `train_runtime`), and peak memory: the GPU's "
             "`max_memory_allocated` summed over the job's GPUs, or the process's peak RSS on CPU (docs/cost.md). "
             "Hours are the mean over seeds, memory the max; × SFT is relative to the train set's SFT run.", ""]
    head = ["train set", "mode", "method", *swept, "runs", "hours", "× SFT", memory_title, "× SFT", "device"]
    if has_published:
        head += ["published hours", "× SFT", "published memory GB", "× SFT"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        runs = f"{row['runs']}" + (f" ({row['resumed']} resumed)" if row["resumed"] else "")
        memory = _number(row[MEMORY], 2) + (" (RSS)" if row["memory_kind"] == "rss" and len(kinds) > 1 else "")
        cells = [str(row["train_set"]), str(row["mode"]), str(row["method"]), *(swept_text(row[s]) for s in swept),
                 runs, _number(row[HOURS], 3), _number(row["hours_vs_sft"], 2) + "x", memory,
                 _number(row["memory_gb_vs_sft"], 2) + "x", str(row["device"])]
        if has_published:
            cells += [_number(row["hours_published"], 3), _number(row["hours_published_vs_sft"], 2) + "x",
                      _number(row["memory_gb_published"], 2), _number(row["memory_gb_published_vs_sft"], 2) + "x"]
        lines.append("| " + " | ".join(c.replace("-x", "-") for c in cells) + " |")
    if published is not None:
        lines += ["", f"Published: {' '.join(str(published['source']).split())}"]
        ours = {tuple(r) for r in table[list(COST_GROUP)].itertuples(index=False)}
        others = [r for r in published["rows"]
                  if not any(r["train_set"] == t and r["mode"] == m and r.get("method", k) == k for t, m, k in ours)]
        if others:
            lines += ["", "Published rows not run here: " + "; ".join(
                f"{r['mode']}{' (' + r['method'] + ')' if r.get('method') else ''} on {r['train_set']}: "
                f"{r.get(HOURS, '-')} h, {r.get(MEMORY, '-')} GB" for r in others) + "."]
    return "\n".join(lines) + "\n"


def published_cost(published: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The cost table a published accuracy table names (`cost:` in config/published.yaml), loaded and checked."""
    if not published or not published.get("cost"):
        return None
    from asft.eval.published import load_published

    return load_published(published["cost"])


def write_cost(out_dir: Path, train_rows: Sequence[Mapping[str, Any]], train_dirs: Mapping[str, Path] | None, *,
               swept: Sequence[str] = (), mode_order: Sequence[str] = (),
               published: Mapping[str, Any] | None = None) -> str:
    """Write `out_dir/cost.csv` (a header only without training runs) and return the markdown section
    ("" without training runs). `published` is the results table's published table: its `cost:` names
    the published cost table shown beside ours."""
    from asft.eval.table import _swept_as_text, _write_atomic

    cost = published_cost(published)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    table = cost_table(cost_runs(train_rows, train_dirs, swept), swept=swept, mode_order=mode_order, published=cost)
    _write_atomic(Path(out_dir) / "cost.csv", _swept_as_text(table, swept).to_csv(index=False, float_format="%.6g"))
    return cost_markdown(table, swept=swept, published=cost)
