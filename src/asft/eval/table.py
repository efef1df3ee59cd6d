"""The `aggregate` stage: the results table (csv, markdown, HTML, LaTeX), per-run rows, and the figures
(the comparison of the modes and every run's training curves, asft.eval.figures).

Per run (train set, mode, seed): the accuracy on each benchmark, the mean over the target
benchmarks (the new task), the mean over the retention benchmarks (what the base knew), and the
drift from the base on the target benchmarks. Per (train set, mode): mean and sample std over
seeds of each of these, and the number of seeds.

With a table of published numbers (config/published.yaml, `table.published`): the published value
and ours minus published per benchmark, and for the average when the published one averages the
same benchmarks as ours; where the source printed an average that is not the mean of its own cells,
that mean is shown beside the printed value.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from asft.eval.benchmarks import get_benchmark
from asft.eval.published import AVERAGE_KEY, DIFFERS_FLAG, averages_are_comparable, published_cell_mean

GROUP_COLUMNS = ("train_set", "mode")
#: Labels of the plan's rows that are not swept settings (asft.workflow.plan: eval_rows, train_rows).
ROW_LABELS = frozenset({"train_set", "mode", "seed", "benchmark", "grading", "score_key", "train_key", "policies",
                        "model", "entries", "uses_kl"})


def swept_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The swept settings the rows are labelled with (config `sweep`: `loss.kl_weight`, ...), in the order
    of the sweep; none without a sweep."""
    return list(dict.fromkeys(name for row in rows for name in row if name not in ROW_LABELS))


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _value_key(value: Any) -> tuple:
    """Sort key of a swept value: missing last, numbers by value, the rest as text."""
    if not _present(value):
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def swept_text(value: Any) -> str:
    """A swept value in a table cell: 0.05, 5e-06, forward; '-' where the row does not depend on it."""
    if not _present(value):
        return "-"
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def add_published(table: pd.DataFrame, published: Mapping[str, Any] | None, *,
                  target: Sequence[str]) -> pd.DataFrame:
    """Published numbers beside ours, matched by (train set, mode).

    Per benchmark: `<b>_published` and `<b>_delta` (ours minus published). For the average, only when the
    published one is over the same benchmarks as ours (`target`), so the delta compares like with like:
    `target_published` (as printed), `target_delta`, `target_published_recomputed` (the mean of the
    published cells), `target_delta_recomputed` (ours minus that) and `target_published_differs` (the
    printed average is not that mean: the source's own slip, flagged in published.yaml).
    """
    if not published:
        return table
    table = table.copy()
    by_row = {(str(r["train_set"]), str(r["mode"])): r for r in published["rows"]}
    matched = [by_row.get((str(t), str(m)), {}) for t, m in zip(table["train_set"], table["mode"])]
    for bench in _published_benchmarks(table, published):
        table[f"{bench}_published"] = [float(r.get(bench, math.nan)) for r in matched]
        table[f"{bench}_delta"] = table[f"{bench}_mean"] - table[f"{bench}_published"]
    if averages_are_comparable(published, target) and "target_mean" in table:
        average_of = published["average_of"]
        table["target_published"] = [float(r.get(AVERAGE_KEY, math.nan)) for r in matched]
        table["target_delta"] = table["target_mean"] - table["target_published"]
        table["target_published_recomputed"] = [published_cell_mean(r, average_of) for r in matched]
        table["target_delta_recomputed"] = table["target_mean"] - table["target_published_recomputed"]
        table["target_published_differs"] = [bool(r.get(DIFFERS_FLAG, False)) for r in matched]
    return table


def _published_benchmarks(table: pd.DataFrame, published: Mapping[str, Any]) -> list[str]:
    """The benchmarks with both our mean and a published number, in the table's column order."""
    in_published = {k for r in published["rows"] for k in r} - {*GROUP_COLUMNS, AVERAGE_KEY, DIFFERS_FLAG}
    ours = [c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")]
    return [b for b in ours if b in in_published]


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def run_rows(eval_rows: Sequence[Mapping[str, Any]], scores: Mapping[str, Mapping[str, Any]],
             *, target: Sequence[str], retention: Sequence[str], swept: Sequence[str] = ()) -> pd.DataFrame:
    """One row per training run (and the base model): accuracies, group means, drift (the rows of one
    grading policy). `swept`: the swept settings (a run of each point is its own row, with their values)."""
    runs: dict[tuple, dict[str, Any]] = {}
    for row in eval_rows:
        point = {name: row.get(name) for name in swept}
        key = (row["train_set"], row["mode"], row["seed"], *(label_key(v) for v in point.values()))
        run = runs.setdefault(key, {"train_set": row["train_set"], "mode": row["mode"], **point, "seed": row["seed"],
                                    "_drift": []})
        result = scores[row["score_key"]]
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


def label_key(value: Any) -> Any:
    """A swept value as a grouping key (missing values group together)."""
    return None if not _present(value) else value


def ordered_runs(runs: pd.DataFrame, benchmarks: Sequence[str], mode_order: Sequence[str] = (),
                 swept: Sequence[str] = ()) -> pd.DataFrame:
    """The per-run rows in a fixed column order (train set, mode, the swept settings, seed, grading, the
    benchmarks in the configured order, target, retention, drift), seeds as integers (the base model's:
    empty), and rows in the table's order (the base, then per train set the modes in the configured order,
    by swept values, by seed)."""
    first = [c for c in ("train_set", "mode", *swept, "seed", "grading") if c in runs]
    metrics = [*benchmarks, "target", "retention", "drift"]
    runs = runs.reindex(columns=[*first, *metrics, *[c for c in runs.columns if c not in {*first, *metrics}]])
    seeds = [None if s is None or (isinstance(s, float) and math.isnan(s)) else int(s) for s in runs["seed"]]
    runs["seed"] = pd.array(seeds, dtype="Int64")
    order = {mode: i for i, mode in enumerate(["base", *mode_order])}
    points = [tuple(_value_key(v) for v in values) for values in zip(*(runs[c] for c in swept))] if swept else [()] * len(runs)
    sort_key = [(mode != "base", _natural_key(str(train_set)), order.get(mode, len(order)), str(mode), point,
                 -1 if seed is None else seed)
                for train_set, mode, point, seed in zip(runs["train_set"], runs["mode"], points, seeds)]
    return runs.iloc[sorted(range(len(runs)), key=sort_key.__getitem__)].reset_index(drop=True)


def summary_table(runs: pd.DataFrame, benchmarks: Sequence[str], mode_order: Sequence[str],
                  swept: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and sample std over seeds per (train set, mode, swept values); std is empty for one seed."""
    metrics = [*benchmarks, "target", "retention", "drift"]
    records = []
    for keys, group in runs.groupby([*GROUP_COLUMNS, *swept], sort=False, dropna=False):
        train_set, mode, *values = keys
        record: dict[str, Any] = {"train_set": train_set, "mode": mode,
                                  **{name: label_key(v) for name, v in zip(swept, values)}, "n_seeds": len(group)}
        for metric in metrics:
            values = group[metric].astype(float)
            record[f"{metric}_mean"] = values.mean()
            record[f"{metric}_std"] = values.std(ddof=1) if len(group) > 1 else math.nan
        records.append(record)
    table = pd.DataFrame(records)
    order = {mode: i for i, mode in enumerate(["base", *mode_order])}
    # As the paper's Table 1: the base first, then per train set (10k, 30k, 100k: by size, not as text),
    # the modes in the configured order.
    points = ([tuple(_value_key(v) for v in values) for values in zip(*(table[c] for c in swept))] if swept
              else [()] * len(table))
    sort_key = [(mode != "base", _natural_key(str(train_set)), order.get(mode, len(order)), point)
                for train_set, mode, point in zip(table["train_set"], table["mode"], points)]
    return table.iloc[sorted(range(len(table)), key=sort_key.__getitem__)].reset_index(drop=True)


def _natural_key(text: str) -> tuple:
    """Sort key that compares runs of digits as numbers: numina_cot_30k before numina_cot_100k."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _cell(mean: float, std: float, digits: int) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(table: pd.DataFrame, benchmarks: Sequence[str], *, title: str,
                   labels: Mapping[str, str] | None = None, published: Mapping[str, Any] | None = None,
                   target: Sequence[str] = (), grading: Mapping[str, str] | None = None,
                   swept: Sequence[str] = ()) -> str:
    """The table of the first grading policy (with the published numbers), then one per other policy.
    `grading`: policy -> how its numbers were graded, in words (from the scores)."""
    labels = {"target": "target", "retention": "retention", **(labels or {})}
    policies = list(dict.fromkeys(table["grading"])) if "grading" in table else [None]
    lines = [f"# {title}", "", "Accuracy in % (mean ± std over seeds); drift = mean per-token KL(base || model) "
             "on the target benchmarks' gold solutions (lower: closer to the base)."]
    for index, policy in enumerate(policies):
        rows = table if policy is None else table[table["grading"] == policy]
        if index:
            lines += ["", f"## The same runs graded with `{policy}`"]
        if policy is not None:
            lines += ["", f"Graded with {(grading or {}).get(policy, f'`{policy}`')}."]
        lines += ["", *_markdown_rows(rows, benchmarks, labels, swept)]
        if published and index == 0:
            lines += published_section(rows, published, target_label=labels["target"], target=target)
    return "\n".join(lines) + "\n"


def _markdown_rows(table: pd.DataFrame, benchmarks: Sequence[str], labels: Mapping[str, str],
                   swept: Sequence[str] = ()) -> list[str]:
    names = [get_benchmark(b).display for b in benchmarks]
    header = ["train set", "mode", *swept, "seeds", *names, labels["target"], labels["retention"], "drift (KL)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row["train_set"]), str(row["mode"]), *(swept_text(row[name]) for name in swept),
                 str(row["n_seeds"])]
        cells += [_cell(row[f"{m}_mean"], row[f"{m}_std"], 1) for m in [*benchmarks, "target", "retention"]]
        cells.append(_cell(row["drift_mean"], row["drift_std"], 4))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


#: Marks a published average that the source printed differently from the mean of its cells.
DIFFERS_MARK = "†"


def published_section(table: pd.DataFrame, published: Mapping[str, Any], *, target_label: str,
                      target: Sequence[str]) -> list[str]:
    """Markdown lines: ours / published / Δ per benchmark and for the average, with footnotes.

    A printed average that is not the mean of its printed cells is shown as printed, marked †, and a
    footnote gives the mean of the cells and ours minus that mean, so neither number is hidden.
    """
    compared = [c.removesuffix("_published") for c in table.columns if c.endswith("_published")]
    if not compared:
        return []
    display = {**{m: get_benchmark(m).display for m in compared if m != "target"}, "target": target_label}
    lines = ["", "## Published numbers beside ours", "", f"Source: {published['source']} "
             f"(protocol: {published.get('protocol', 'unknown')}).", ""]
    average_of = published.get("average_of")
    if "target_published" in table:
        lines += [f"{target_label}: ours is the mean of our {_display_list(target)}; published is the average the "
                  "source printed over the same benchmarks. Δ = ours − published.", ""]
    elif average_of:
        lines += [f"The published average (of {_display_list(average_of)}) is not compared: this table's "
                  f"{target_label} is the mean of {_display_list(target) or 'other benchmarks'}.", ""]
    lines += ["| train set | mode | " + " | ".join(f"{display[m]}: ours / published / Δ" for m in compared) + " |",
              "|" + "---|" * (2 + len(compared))]
    footnotes = []
    for _, row in table.iterrows():
        if all(math.isnan(row[f"{m}_published"]) for m in compared):
            continue
        cells = [str(row["train_set"]), str(row["mode"])]
        for metric in compared:
            theirs = row[f"{metric}_published"]
            marked = metric == "target" and bool(row.get("target_published_differs", False))
            cells.append("—" if math.isnan(theirs) else f"{_number(row[f'{metric}_mean'])} / {theirs:.2f}"
                         f"{DIFFERS_MARK if marked else ''} / {_number(row[f'{metric}_delta'], signed=True)}")
            if marked:
                footnotes.append(f"- {row['train_set']} {row['mode']}: printed {theirs:.2f}, mean of the "
                                 f"{len(average_of)} published cells {row['target_published_recomputed']:.2f}; "
                                 f"ours − that mean: {_number(row['target_delta_recomputed'], signed=True)}")
        lines.append("| " + " | ".join(cells) + " |")
    if footnotes:
        lines += ["", f"{DIFFERS_MARK} The source's printed {target_label} is not the mean of its own printed cells "
                  "(its slip, kept as printed; Δ is against the printed value). The mean of the cells, and ours "
                  "against it:", "", *footnotes]
    return lines


def _display_list(benchmarks: Sequence[str]) -> str:
    return ", ".join(get_benchmark(b).display for b in benchmarks)


def _number(value: float, *, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def latex_table(table: pd.DataFrame, benchmarks: Sequence[str], swept: Sequence[str] = ()) -> str:
    names = [get_benchmark(b).display.replace("_", r"\_") for b in benchmarks]
    columns = "ll" + "l" * len(swept) + "r" * (len(names) + 3)
    lines = [r"\begin{tabular}{" + columns + "}", r"\toprule",
             " & ".join(["Train set", "Method", *(s.replace("_", r"\_") for s in swept), *names, "Target", "Retention",
                         "Drift"]) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        cells = [str(row["train_set"]).replace("_", r"\_"), str(row["mode"]).upper(),
                 *(swept_text(row[name]).replace("_", r"\_") for name in swept)]
        for metric in [*benchmarks, "target", "retention"]:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            cells.append("--" if math.isnan(mean) else (f"{mean:.1f}" + ("" if math.isnan(std) else rf"$\pm${std:.1f}")))
        cells.append("--" if math.isnan(row["drift_mean"]) else f"{row['drift_mean']:.3f}")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def aggregate(eval_rows: Sequence[Mapping[str, Any]], eval_dirs: Mapping[str, Path], out_dir: Path, *,
              benchmarks: Sequence[str], target: Sequence[str], retention: Sequence[str],
              mode_order: Sequence[str], title: str, labels: Mapping[str, str] | None = None,
              published: Mapping[str, Any] | None = None, train_rows: Sequence[Mapping[str, Any]] = (),
              train_dirs: Mapping[str, Path] | None = None, swept: Sequence[str] | None = None) -> pd.DataFrame:
    """Write table.csv, table.md, table.html, table.tex, runs.csv, table.png/.pdf, curves.png/.pdf and
    sweep, dynamics and models .png/.pdf (asft.eval.figures.paper_figures: placeholders where they do not apply).

    Each row of `eval_rows` names its grading policy (`grading`): the first policy's rows make the main
    table (compared with the published numbers; the LaTeX table and the chart); each other policy's
    follow it in table.csv, runs.csv, table.md and table.html, its `grading` column saying which is which.
    `train_rows` (labels and `train_key`) and `train_dirs` (train key -> folder): the training runs whose
    metrics.jsonl make curves.png (without them, the figure says there are no logged steps).
    `swept`: the swept settings (config `sweep`), columns after mode, one row per (train set, mode, their
    values); None: the rows' labels that are not the usual ones (asft.workflow.plan labels them)."""
    swept = swept_columns([*eval_rows, *train_rows]) if swept is None else list(swept)
    scores = {key: json.loads((Path(folder) / "scores.json").read_text()) for key, folder in eval_dirs.items()}
    policies = list(dict.fromkeys(row["grading"] for row in eval_rows))
    all_runs, tables = [], []
    for policy in policies:
        rows = [row for row in eval_rows if row["grading"] == policy]
        runs = run_rows(rows, scores, target=target, retention=retention, swept=swept)
        runs.insert(3 + len(swept), "grading", policy)
        runs = ordered_runs(runs, benchmarks, mode_order, swept)
        table = summary_table(runs, benchmarks, mode_order, swept)
        table.insert(2 + len(swept), "grading", policy)
        all_runs.append(runs)
        tables.append(add_published(table, published, target=target) if not tables else table)
    main = tables[0]
    runs, table = pd.concat(all_runs, ignore_index=True), pd.concat(tables, ignore_index=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "runs.csv", _swept_as_text(runs, swept).to_csv(index=False, float_format="%.4f"))
    _write_atomic(out_dir / "table.csv", _swept_as_text(table, swept).to_csv(index=False, float_format="%.4f"))
    markdown = markdown_table(table, benchmarks, title=title, labels=labels, published=published, target=target,
                              grading=grading_notes(eval_rows, scores), swept=swept)
    from asft.eval.cost_table import write_cost  # cost.csv and the "Training cost" section (docs/cost.md)

    markdown += write_cost(out_dir, train_rows, train_dirs, swept=swept, mode_order=mode_order, published=published)
    _write_atomic(out_dir / "table.md", markdown)
    _write_atomic(out_dir / "table.html", html_page(markdown))
    _write_atomic(out_dir / "table.tex", latex_table(main, benchmarks, swept))

    from asft.eval.figures import comparison_chart, curves_chart, paper_figures, read_training_run

    policy_note = f" (graded with {policies[0]})" if len(policies) > 1 else ""
    comparison_chart(_with_point(main, swept), [out_dir / "table.png", out_dir / "table.pdf"],
                     target_names=[get_benchmark(b).display for b in target],
                     retention_names=[get_benchmark(b).display for b in retention], labels=labels,
                     mode_order=mode_order, title=title + policy_note)
    curves = []
    for row in train_rows:
        folder = (train_dirs or {}).get(row["train_key"])
        entries, uses_kl = read_training_run(folder) if folder is not None else ([], None)
        curves.append({**row, "train_set": _point_name(row, swept), "entries": entries, "uses_kl": uses_kl,
                       "folder": folder})
    curves_chart(curves, [out_dir / "curves.png", out_dir / "curves.pdf"], mode_order=mode_order,
                 title=f"Training curves: {title}")
    paper_figures(main, curves, out_dir, swept=swept, benchmarks=benchmarks, target=target, retention=retention,
                  labels=labels, mode_order=mode_order, title=title + policy_note)  # sweep, dynamics, models
    return table


def _swept_as_text(frame: pd.DataFrame, swept: Sequence[str]) -> pd.DataFrame:
    """The swept columns as written (a learning rate of 5e-06 is not rounded to the metrics' 4 decimals;
    empty where the row does not depend on it)."""
    if not swept:
        return frame
    frame = frame.copy()
    for name in swept:
        frame[name] = ["" if not _present(v) else f"{v:.10g}" if isinstance(v, float) else str(v) for v in frame[name]]
    return frame


def _point_name(row: Mapping[str, Any], swept: Sequence[str], sep: str = " ") -> str:
    """The train set with the row's swept values (the figures group bars and curves by train set and mode)."""
    values = [f"{name.rsplit('.', 1)[-1]}={swept_text(row.get(name))}" for name in swept if _present(row.get(name))]
    return sep.join([str(row["train_set"]), *values])


def _with_point(table: pd.DataFrame, swept: Sequence[str]) -> pd.DataFrame:
    if not swept:
        return table
    table = table.copy()
    table["train_set"] = [_point_name(row, swept, "\n") for _, row in table.iterrows()]
    return table


def grading_notes(eval_rows: Sequence[Mapping[str, Any]], scores: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Per policy, in words, what graded its numbers: the policy and its version, and the letter rule for
    multiple-choice benchmarks (as each scores.json recorded it)."""
    notes: dict[str, str] = {}
    for policy in dict.fromkeys(row["grading"] for row in eval_rows):
        how = set()
        for row in eval_rows:
            if row["grading"] == policy:
                grading = scores[row["score_key"]].get("grading") or {}
                if grading.get("method") == "choose_letter":
                    how.add("the option letter with the highest next-token log-probability (multiple choice)")
                elif grading.get("method") == "judge":
                    how.add(f"AlpacaEval 2's length-controlled win rate (%) against {grading.get('reference')}'s "
                            f"outputs, judged by {grading.get('model')} with alpaca-eval's `{grading.get('annotator')}`")
                else:
                    version = grading.get("policy_version")
                    how.add(f"the grading policy `{grading.get('policy', policy)}`"
                            + (f" (version {version}, asft.eval.grading)" if version else " (asft.eval.grading)"))
        notes[policy] = "; ".join(sorted(how))
    return notes


# --- table.html: table.md rendered (the same sections and cells, nothing re-derived) -----------------

#: Styles scoped to the table's own element, so the page can be embedded (the report's front page) without
#: touching the page around it; the `:has` rule lets the report's narrow text column widen to the table.
HTML_STYLE = """
#asft-table { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 14px;
  color: #1f2328; line-height: 1.45; }
#asft-table h1 { font-size: 1.5em; margin: 0.4em 0; }
#asft-table h2 { font-size: 1.2em; margin: 1.2em 0 0.4em; }
#asft-table p, #asft-table ul { margin: 0.4em 0; max-width: 70em; }
#asft-table table { border-collapse: collapse; margin: 0.6em 0 1em; font-variant-numeric: tabular-nums; }
#asft-table th, #asft-table td { border: 1px solid #d0d7de; padding: 4px 9px; white-space: nowrap; }
#asft-table th { background: #f0f3f6; text-align: center; }
#asft-table td.number { text-align: right; }
#asft-table tbody tr:nth-child(even) { background: #f8f9fa; }
#asft-table tr.base td { color: #57606a; }
#asft-table code { background: #eff1f3; padding: 0 3px; border-radius: 3px; font-size: 0.92em; font-weight: normal; }
#asft-table code::before, #asft-table code::after { content: none; }
.max-w-lg:has(#asft-table) { max-width: none; }
"""

_NUMBER = re.compile(r"^[−+-]?\d")


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_html(markdown: str) -> str:
    """The markdown that `markdown_table` writes (headings, paragraphs, pipe tables, bullet lists) as HTML."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            header, body = _cells(block[0]), [_cells(b) for b in block[2:]]
            out.append("<table>")
            out.append("<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr></thead>")
            out.append("<tbody>")
            for cells in body:
                base = "mode" in header and cells[header.index("mode")] == "base"
                out.append(("<tr class=\"base\">" if base else "<tr>") + "".join(
                    f"<td class=\"number\">{_inline(c)}</td>" if _NUMBER.match(c) or c == "—" else f"<td>{_inline(c)}</td>"
                    for c in cells) + "</tr>")
            out.append("</tbody></table>")
        elif line.startswith("- "):
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "- ")):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def html_page(markdown: str) -> str:
    """A standalone page of table.md: its content inside `<div id="asft-table">` with its own styles."""
    title = next((line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("# ")), "Results")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n</head>\n<body>\n<div id=\"asft-table\">\n"
            f"<style>{HTML_STYLE}</style>\n{markdown_html(markdown)}\n</div>\n</body>\n</html>\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
