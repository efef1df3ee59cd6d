"""The `aggregate` stage: the results table, per-run rows, a bar chart and a LaTeX table.

Per run (train set, mode, seed): the accuracy on each benchmark, the mean over the target
benchmarks (the new task), the mean over the retention benchmarks (what the base knew), and the
drift from the base on the target benchmarks. Per (train set, mode): mean and sample std over
seeds of each of these, and the number of seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from asft.benchmarks import get_benchmark

GROUP_COLUMNS = ("train_set", "mode")
PUBLISHED_FILE = Path(__file__).resolve().parents[2] / "config" / "published.yaml"


def load_published(name: str | None, path: Path = PUBLISHED_FILE) -> dict[str, Any] | None:
    """A named table of published numbers (config/published.yaml), or None."""
    if not name:
        return None
    import yaml

    tables = yaml.safe_load(Path(path).read_text())
    if name not in tables:
        raise ValueError(f"table.published: no table '{name}' in {path}; known: {', '.join(sorted(tables))}")
    return tables[name]


def add_published(table: pd.DataFrame, published: Mapping[str, Any] | None) -> pd.DataFrame:
    """Columns `<metric>_published` and `<metric>_delta` (ours minus published) where a number exists."""
    if not published:
        return table
    table = table.copy()
    by_row = {(str(r["train_set"]), str(r["mode"])): r for r in published["rows"]}
    metrics = sorted({k for r in published["rows"] for k in r if k not in GROUP_COLUMNS})
    for metric in metrics:
        if f"{metric}_mean" not in table:
            continue
        values = [by_row.get((str(t), str(m)), {}).get(metric, math.nan)
                  for t, m in zip(table["train_set"], table["mode"])]
        table[f"{metric}_published"] = values
        table[f"{metric}_delta"] = table[f"{metric}_mean"] - table[f"{metric}_published"]
    return table


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def run_rows(eval_rows: Sequence[Mapping[str, Any]], scores: Mapping[str, Mapping[str, Any]],
             *, target: Sequence[str], retention: Sequence[str]) -> pd.DataFrame:
    """One row per training run (and the base model): accuracies, group means, drift."""
    runs: dict[tuple, dict[str, Any]] = {}
    for row in eval_rows:
        key = (row["train_set"], row["mode"], row["seed"])
        run = runs.setdefault(key, {"train_set": row["train_set"], "mode": row["mode"], "seed": row["seed"],
                                    "_drift": []})
        result = scores[row["eval_key"]]
        run[row["benchmark"]] = float(result["accuracy"])
        if row["benchmark"] in target and result.get("drift") is not None:
            run["_drift"].append(float(result["drift"]))
    rows = []
    for run in runs.values():
        run["target"] = _mean([run.get(b, math.nan) for b in target])
        run["retention"] = _mean([run.get(b, math.nan) for b in retention])
        drifts = run.pop("_drift")
        run["drift"] = 0.0 if run["mode"] == "base" else _mean(drifts)
        rows.append(run)
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame, benchmarks: Sequence[str], mode_order: Sequence[str]) -> pd.DataFrame:
    """Mean and sample std over seeds per (train set, mode); std is empty for one seed."""
    metrics = [*benchmarks, "target", "retention", "drift"]
    records = []
    for (train_set, mode), group in runs.groupby(list(GROUP_COLUMNS), sort=False):
        record: dict[str, Any] = {"train_set": train_set, "mode": mode, "n_seeds": len(group)}
        for metric in metrics:
            values = group[metric].astype(float)
            record[f"{metric}_mean"] = values.mean()
            record[f"{metric}_std"] = values.std(ddof=1) if len(group) > 1 else math.nan
        records.append(record)
    table = pd.DataFrame(records)
    order = {mode: i for i, mode in enumerate(["base", *mode_order])}
    table["_order"] = table["mode"].map(order)
    return table.sort_values(["_order", "train_set"], kind="stable").drop(columns="_order").reset_index(drop=True)


def _cell(mean: float, std: float, digits: int) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(table: pd.DataFrame, benchmarks: Sequence[str], *, title: str,
                   labels: Mapping[str, str] | None = None, published: Mapping[str, Any] | None = None) -> str:
    labels = {"target": "target", "retention": "retention", **(labels or {})}
    names = [get_benchmark(b).display for b in benchmarks]
    header = ["train set", "mode", "seeds", *names, labels["target"], labels["retention"], "drift (KL)"]
    lines = [f"# {title}", "", "Accuracy in % (mean ± std over seeds); drift = mean per-token KL(base || model) "
             "on the target benchmarks' gold solutions (lower: closer to the base).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row["train_set"]), str(row["mode"]), str(row["n_seeds"])]
        cells += [_cell(row[f"{m}_mean"], row[f"{m}_std"], 1) for m in [*benchmarks, "target", "retention"]]
        cells.append(_cell(row["drift_mean"], row["drift_std"], 4))
        lines.append("| " + " | ".join(cells) + " |")
    compared = [c.removesuffix("_published") for c in table.columns if c.endswith("_published")]
    if published and compared:
        display = {**{b: get_benchmark(b).display for b in benchmarks}, **labels}
        lines += ["", "## Published numbers beside ours", "", f"Source: {published['source']} "
                  f"(protocol: {published.get('protocol', 'unknown')}).", "",
                  "| train set | mode | " + " | ".join(f"{display.get(m, m)}: ours / published / Δ" for m in compared)
                  + " |", "|" + "---|" * (2 + len(compared))]
        for _, row in table.iterrows():
            if all(math.isnan(row[f"{m}_published"]) for m in compared):
                continue
            cells = [str(row["train_set"]), str(row["mode"])]
            for metric in compared:
                ours, theirs = row[f"{metric}_mean"], row[f"{metric}_published"]
                cells.append("—" if math.isnan(theirs) else
                             f"{ours:.2f} / {theirs:.2f} / {row[f'{metric}_delta']:+.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latex_table(table: pd.DataFrame, benchmarks: Sequence[str]) -> str:
    names = [get_benchmark(b).display.replace("_", r"\_") for b in benchmarks]
    columns = "ll" + "r" * (len(names) + 3)
    lines = [r"\begin{tabular}{" + columns + "}", r"\toprule",
             " & ".join(["Train set", "Method", *names, "Target", "Retention", "Drift"]) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        cells = [str(row["train_set"]).replace("_", r"\_"), str(row["mode"]).upper()]
        for metric in [*benchmarks, "target", "retention"]:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            cells.append("--" if math.isnan(mean) else (f"{mean:.1f}" + ("" if math.isnan(std) else rf"$\pm${std:.1f}")))
        cells.append("--" if math.isnan(row["drift_mean"]) else f"{row['drift_mean']:.3f}")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def bar_chart(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m if t == "-" else f"{m}\n{t}" for t, m in zip(table["train_set"], table["mode"])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for axis, metric, title in zip(axes, ("target", "retention", "drift"),
                                   ("target accuracy (%)", "retention accuracy (%)", "drift from base (KL)")):
        means = table[f"{metric}_mean"].fillna(0)
        stds = table[f"{metric}_std"].fillna(0)
        axis.bar(range(len(table)), means, yerr=stds, capsize=3,
                 color=["#999999" if m == "base" else "#4c72b0" if "kl" not in m and m != "asft" else "#dd8452"
                        for m in table["mode"]])
        axis.set_xticks(range(len(table)), labels, fontsize=8)
        axis.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def aggregate(eval_rows: Sequence[Mapping[str, Any]], eval_dirs: Mapping[str, Path], out_dir: Path, *,
              benchmarks: Sequence[str], target: Sequence[str], retention: Sequence[str],
              mode_order: Sequence[str], title: str, labels: Mapping[str, str] | None = None,
              published: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Write table.csv, table.md, table.tex, runs.csv and table.png into out_dir."""
    scores = {key: json.loads((Path(folder) / "scores.json").read_text()) for key, folder in eval_dirs.items()}
    runs = run_rows(eval_rows, scores, target=target, retention=retention)
    table = add_published(summary_table(runs, benchmarks, mode_order), published)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "runs.csv", runs.to_csv(index=False, float_format="%.4f"))
    _write_atomic(out_dir / "table.csv", table.to_csv(index=False, float_format="%.4f"))
    _write_atomic(out_dir / "table.md", markdown_table(table, benchmarks, title=title, labels=labels,
                                                       published=published))
    _write_atomic(out_dir / "table.tex", latex_table(table, benchmarks))
    chart = out_dir / "table.png.tmp"
    bar_chart(table, chart)
    chart.replace(out_dir / "table.png")
    return table


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
