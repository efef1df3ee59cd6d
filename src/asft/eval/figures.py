"""The aggregate's figures: the comparison of the modes (table.png/.pdf), the training curves of every
run on shared axes (curves.png/.pdf), and the paper's figures (`paper_figures`, docs/figures.md): the
metrics against a swept value (sweep.png), the training dynamics (dynamics.png) and the modes across
models (models.png), each a placeholder saying why where it does not apply. Each figure says, in itself, what its bars, lines and error bars
are and which benchmarks make each mean; a mode keeps its colour in both.

matplotlib only (the aggregate runs in the light environment: no torch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

BASE_COLOUR = "#8c8c8c"
#: Colours of the modes in the configured order (base grey); the same mode has the same colour in
#: table.png and curves.png.
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#ccb974", "#64b5cd")
LINE_STYLES = ("-", "--", ":", "-.")


def mode_colours(modes: Sequence[str]) -> dict[str, str]:
    """Mode -> colour: base grey, the others in the given order."""
    colours = {"base": BASE_COLOUR}
    for mode in modes:
        if mode not in colours:
            colours[mode] = PALETTE[(len(colours) - 1) % len(PALETTE)]
    return colours


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, title: str, note: str, paths: Sequence[Path]) -> None:
    """Title, the footnote that says what the marks and error bars are, layout, save, close."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.01, note, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    _save(fig, paths)
    plt.close(fig)


def _save(fig, paths: Sequence[Path]) -> None:
    """Each path written as `<name>.tmp` then renamed (the format from the suffix)."""
    for path in paths:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip("."),
                    metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
        tmp.replace(path)


def _finite(value: Any) -> bool:
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def comparison_chart(table: pd.DataFrame, paths: Sequence[Path], *, target_names: Sequence[str],
                     retention_names: Sequence[str], labels: Mapping[str, str] | None = None,
                     mode_order: Sequence[str] = (), title: str = "") -> None:
    """Three panels (target, retention, drift): one bar per (train set, mode), the mean over seeds, with
    the sample std over seeds as error bars (none for a single seed); the number of seeds under each bar."""
    plt = _pyplot()
    labels = {"target": "target", "retention": "retention", **(labels or {})}
    colours = mode_colours([*mode_order, *table["mode"]])
    several_sets = len({t for t in table["train_set"] if t != "-"}) > 1
    ticks = [m if t == "-" or not several_sets else f"{m}\n{t}" for t, m in zip(table["train_set"], table["mode"])]
    ticks = [f"{tick}\n(n={n})" for tick, n in zip(ticks, table["n_seeds"])]
    panels = (
        ("target", f"{labels['target']} accuracy (%)", f"mean of {', '.join(target_names) or '—'}", 1),
        ("retention", f"{labels['retention']} accuracy (%)", f"mean of {', '.join(retention_names) or '—'}", 1),
        ("drift", "drift from the base (KL)", f"KL(base ‖ model) on {', '.join(target_names) or 'target'} gold", 3),
    )
    width = max(11.0, 1.05 * len(table) * 3 + 1.5)
    fig, axes = plt.subplots(1, 3, figsize=(width, 4.6))
    x = list(range(len(table)))
    for axis, (metric, name, made_of, digits) in zip(axes, panels):
        means = [float(v) if _finite(v) else 0.0 for v in table[f"{metric}_mean"]]
        stds = [float(v) if _finite(v) else math.nan for v in table[f"{metric}_std"]]
        axis.bar(x, means, color=[colours.get(m, BASE_COLOUR) for m in table["mode"]], zorder=2)
        with_std = [i for i in x if _finite(stds[i])]
        if with_std:
            axis.errorbar([x[i] for i in with_std], [means[i] for i in with_std], yerr=[stds[i] for i in with_std],
                          fmt="none", ecolor="black", elinewidth=1, capsize=4, zorder=3)
        top = max([m + (s if _finite(s) else 0) for m, s in zip(means, stds)] or [0.0])
        for i, mean in enumerate(means):
            axis.text(i, mean + (stds[i] if _finite(stds[i]) else 0) + 0.02 * (top or 1), f"{mean:.{digits}f}",
                      ha="center", va="bottom", fontsize=7)
        axis.set_ylim(0, (top or 1) * 1.15)
        axis.set_xticks(x, ticks, fontsize=8)
        axis.set_title(f"{name}\n{made_of}", fontsize=9)
        axis.grid(axis="y", alpha=0.3, zorder=0)
    _finish(fig, title, "Bars: mean over seeds (n under each bar). Error bars: ±1 sample std over seeds "
             "(none where n=1). Drift: mean per-token KL(base ‖ model), lower is closer to the base.", paths)


def read_training_run(folder: Path) -> tuple[list[dict[str, Any]], bool | None]:
    """A training run's logged steps (the last entry of a step wins: a resumed run logs some twice) and
    whether its loss has a KL term (from its manifest's settings; None when not recorded)."""
    folder = Path(folder)
    by_step: dict[int, dict[str, Any]] = {}
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                if "loss" in entry and "step" in entry:
                    by_step[int(entry["step"])] = entry
    uses_kl = None
    manifest = folder / "manifest.json"
    if manifest.exists():
        settings = json.loads(manifest.read_text()).get("settings") or {}
        if "kl_direction" in settings or "kl_weight" in settings:
            uses_kl = settings.get("kl_direction") is not None and bool(settings.get("kl_weight"))
    return [by_step[s] for s in sorted(by_step)], uses_kl


def curves_chart(runs: Sequence[Mapping[str, Any]], paths: Sequence[Path], *, mode_order: Sequence[str] = (),
                 title: str = "") -> None:
    """The training curves of every mode on shared axes: the back-propagated loss, the plain token
    cross-entropy and (for modes with a KL term) the KL to the reference, against the optimizer step.

    `runs`: one mapping per training run with `train_set`, `mode`, `seed`, `entries` (logged steps) and
    `uses_kl`. Per (train set, mode): each seed a thin line, the mean over seeds (at the steps every
    seed logged) a bold one."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        if run["entries"]:
            groups.setdefault((str(run["train_set"]), str(run["mode"])), []).append(run)
    order = {mode: i for i, mode in enumerate(mode_order)}
    keys = sorted(groups, key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
    colours = mode_colours([*mode_order, *(k[1] for k in keys)])
    train_sets = list(dict.fromkeys(k[0] for k in keys))
    with_kl = [k for k in keys if any(_uses_kl(run) for run in groups[k])]
    panels = [("loss", "training loss (back-propagated; log scale)", keys),
              ("ce", "token cross-entropy (the same quantity for every mode)", keys)]
    if with_kl:
        panels.append(("kl", "KL to the reference (modes with a KL term)", with_kl))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for axis, (metric, name, shown) in zip(axes[0], panels):
        for key in shown:
            colour, style = colours.get(key[1], BASE_COLOUR), LINE_STYLES[train_sets.index(key[0]) % len(LINE_STYLES)]
            seeds = groups[key]
            per_step: dict[int, list[float]] = {}
            for run in seeds:
                points = [(e["step"], float(e[metric])) for e in run["entries"] if _finite(e.get(metric))]
                if len(seeds) > 1 and points:
                    axis.plot(*zip(*points), color=colour, linestyle=style, linewidth=0.8, alpha=0.35)
                for step, value in points:
                    per_step.setdefault(step, []).append(value)
            steps = [s for s in sorted(per_step) if len(per_step[s]) == len(seeds)]
            label = key[1] if len(train_sets) == 1 else f"{key[1]} ({key[0]})"
            if steps:
                axis.plot(steps, [sum(per_step[s]) / len(per_step[s]) for s in steps], color=colour,
                          linestyle=style, linewidth=2, label=f"{label}, {len(seeds)} seed{'s' * (len(seeds) > 1)}")
        if metric == "loss" and any(line.get_ydata().size for line in axis.get_lines()):
            if all(v > 0 for line in axis.get_lines() for v in line.get_ydata()):
                axis.set_yscale("log")
        axis.set_xlabel("optimizer step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(name, fontsize=9)
        axis.grid(alpha=0.3)
        if axis.get_lines():
            axis.legend(fontsize=7)
        else:
            axis.text(0.5, 0.5, "no logged steps", ha="center", va="center", transform=axis.transAxes)
    _finish(fig, title, "Bold: mean over seeds at each logged step; thin: single seeds. DFT and ASFT weight each "
             "token's CE by its detached probability, so their loss is smaller than CE.", paths)


def _uses_kl(run: Mapping[str, Any]) -> bool:
    if run.get("uses_kl") is not None:
        return bool(run["uses_kl"])
    return any(_finite(e.get("kl")) and float(e["kl"]) != 0.0 for e in run["entries"])


# --- the paper's figures: sweep.png (Figures 2, 4, 5), dynamics.png (Figure 1), models.png (Figure 3) ----

#: metrics.jsonl keys of a training run's evaluation points (asft.eval.dynamics, which needs torch)
EVAL_PREFIX = "eval/"
KL_FROM_BASE = "eval/kl_from_base"
#: The swept setting that makes models.png (one group of bars per model)
MODEL_SETTING = "model.id"
#: Benchmarks get a panel of their own in sweep.png when there are at most this many
MAX_BENCHMARK_PANELS = 4
FIGURES = ("sweep", "dynamics", "models")


def _display(benchmark: str) -> str:
    try:
        from asft.eval.benchmarks import get_benchmark

        return get_benchmark(benchmark).display
    except Exception:  # noqa: BLE001 (a benchmark this checkout does not know: its name)
        return benchmark


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)


def _short(name: str) -> str:
    return "model" if name == MODEL_SETTING else name.rsplit(".", 1)[-1]


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def numeric_swept(table: pd.DataFrame, swept: Sequence[str]) -> list[str]:
    """The swept settings whose values are numbers (at least two of them): sweep.png's x axes."""
    numeric = []
    for name in swept:
        if name == MODEL_SETTING or name not in table:
            continue
        values = [v for v in table[name] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if values and all(_number(v) for v in values) and len(set(map(float, values))) > 1:
            numeric.append(name)
    return numeric


def _present_values(row: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    out = {}
    for name in names:
        value = row.get(name)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[name] = value
    return out


def _several_sets(table: pd.DataFrame) -> bool:
    return len({t for t in table["train_set"] if t != "-"}) > 1


def _label(row: Mapping[str, Any], values: Mapping[str, Any], several_sets: bool) -> str:
    parts = [str(row["mode"]), *(f"{_short(k)}={_text(v)}" for k, v in values.items())]
    if several_sets and row["train_set"] != "-":
        parts.append(str(row["train_set"]))
    return ", ".join(parts)


def sweep_series(table: pd.DataFrame, swept: Sequence[str], metric: str = "target"
                 ) -> dict[str, list[tuple[float, float, float]]]:
    """sweep.png's lines of one metric: series -> [(swept value, mean over seeds, sample std over seeds)],
    by value (std NaN for one seed). A row's x is the first numeric swept setting it has a value for;
    a series is a mode with the row's other swept values (and its train set when there are several),
    named `mode, name=value` (with ` vs <setting>` when the series do not share one x setting)."""
    numeric = numeric_swept(table, swept)
    several = _several_sets(table)
    series: dict[str, list[tuple[float, float, float]]] = {}
    x_of: dict[str, str] = {}
    for _, row in table.iterrows():
        values = _present_values(row, swept)
        x_name = next((n for n in numeric if n in values), None)
        if x_name is None:
            continue
        x = float(values.pop(x_name))
        name = _label(row, values, several)
        x_of[name] = x_name
        series.setdefault(name, []).append((x, float(row[f"{metric}_mean"]), float(row[f"{metric}_std"])))
    if len(set(x_of.values())) > 1:
        series = {f"{name} vs {_short(x_of[name])}": points for name, points in series.items()}
    return {name: sorted(points) for name, points in series.items()}


def sweep_baselines(table: pd.DataFrame, swept: Sequence[str], metric: str = "target"
                    ) -> dict[str, tuple[float, float]]:
    """The rows that do not depend on a numeric swept setting (the base, sft and dft in a `loss.kl_weight`
    sweep: `-` in its column): label -> (mean, std), sweep.png's dashed lines."""
    numeric = numeric_swept(table, swept)
    several = _several_sets(table)
    baselines = {}
    for _, row in table.iterrows():
        values = _present_values(row, swept)
        if any(n in values for n in numeric):
            continue
        baselines[_label(row, values, several)] = (float(row[f"{metric}_mean"]), float(row[f"{metric}_std"]))
    return baselines


def _metric_panels(table: pd.DataFrame, benchmarks: Sequence[str], target: Sequence[str],
                   retention: Sequence[str], labels: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """(metric, panel title naming its benchmarks): the target mean, the retention mean, and each benchmark
    when there are few (not one that alone makes a mean: that panel is the same)."""
    labels = {"target": "target", "retention": "retention", **(labels or {})}
    panels = [("target", f"{labels['target']} accuracy (%)\nmean of {', '.join(map(_display, target)) or '—'}")]
    if retention and any(_finite(v) for v in table.get("retention_mean", [])):
        panels.append(("retention", f"{labels['retention']} accuracy (%)\nmean of "
                                    f"{', '.join(map(_display, retention))}"))
    if len(benchmarks) <= MAX_BENCHMARK_PANELS:
        alone = {*(target if len(target) == 1 else ()), *(retention if len(retention) == 1 else ())}
        panels += [(b, f"{_display(b)} accuracy (%)") for b in benchmarks if b not in alone and f"{b}_mean" in table]
    return panels


def _colour_of(name: str, colours: Mapping[str, str]) -> str:
    return colours.get(name.split(",")[0].split(" vs ")[0], BASE_COLOUR)


def sweep_chart(table: pd.DataFrame, paths: Sequence[Path], *, swept: Sequence[str], benchmarks: Sequence[str],
                target: Sequence[str], retention: Sequence[str], labels: Mapping[str, str] | None = None,
                mode_order: Sequence[str] = (), title: str = "") -> None:
    """The metrics against the swept value (Figures 2, 4, 5): one line per series (sweep_series), error
    bars ±1 sample std over seeds, dashed lines for the rows without a swept value (sweep_baselines);
    log x axis when the values span more than a decade."""
    plt = _pyplot()
    numeric = numeric_swept(table, swept)
    panels = _metric_panels(table, benchmarks, target, retention, labels)
    colours = mode_colours([*mode_order, *table["mode"]])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.6), squeeze=False)
    for axis, (metric, name) in zip(axes[0], panels):
        series = sweep_series(table, swept, metric)
        xs = [x for points in series.values() for x, _, _ in points]
        for index, (label, points) in enumerate(series.items()):
            x, mean, std = zip(*points)
            yerr = [s if _finite(s) else 0.0 for s in std] if any(_finite(s) for s in std) else None
            axis.errorbar(x, mean, yerr=yerr, color=_colour_of(label, colours), marker="o", markersize=4,
                          linestyle=LINE_STYLES[index % 2 * 2], capsize=3, linewidth=1.6, label=label)
        for index, (label, (mean, std)) in enumerate(sweep_baselines(table, swept, metric).items()):
            if _finite(mean):
                axis.axhline(mean, color=_colour_of(label, colours), linestyle="--", linewidth=1.1, alpha=0.9,
                             label=f"{label} (not swept)" + (f" ±{std:.1f}" if _finite(std) else ""))
        if xs and min(xs) > 0 and max(xs) / min(xs) > 10:
            axis.set_xscale("log")
        axis.set_xlabel(" / ".join(numeric))
        axis.set_title(name, fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _finish(fig, title, "Lines: mean over seeds at each swept value; error bars: ±1 sample std over seeds (none "
             "for one seed). Dashed: runs that do not depend on the swept setting (legend: ± their std).", paths)


def read_eval_points(folder: Path | None) -> list[dict[str, Any]]:
    """A training run's evaluation points (`train.eval_every`: entries with `eval/...` keys), by step;
    a step logged twice (a resumed run) keeps its last values."""
    by_step: dict[int, dict[str, Any]] = {}
    metrics = Path(folder) / "metrics.jsonl" if folder is not None else None
    if metrics is not None and metrics.exists():
        for line in metrics.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                if "step" in entry and any(str(k).startswith(EVAL_PREFIX) for k in entry):
                    by_step.setdefault(int(entry["step"]), {}).update(entry)
    return [by_step[s] for s in sorted(by_step)]


def dynamics_metrics(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The logged metrics: each benchmark's accuracy (in the order first logged), then the KL from the base."""
    names = dict.fromkeys(k for run in runs for e in run["points"] for k in e
                          if k.startswith(EVAL_PREFIX) and k.endswith("/accuracy"))
    has_kl = any(KL_FROM_BASE in e for run in runs for e in run["points"])
    return [*names, *([KL_FROM_BASE] if has_kl else [])]


def dynamics_series(runs: Sequence[Mapping[str, Any]], metric: str, *, mode_order: Sequence[str] = ()
                    ) -> dict[str, list[tuple[int, float, float, float]]]:
    """dynamics.png's lines of one metric: series (the mode, with the run's point when several) ->
    [(step, mean over seeds, lowest seed, highest seed)] at the steps every seed of it logged.
    `runs`: {train_set (the point's name), mode, seed, points (read_eval_points)}."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        if run["points"]:
            groups.setdefault((str(run["train_set"]), str(run["mode"])), []).append(run)
    order = {mode: i for i, mode in enumerate(mode_order)}
    several = len({k[0] for k in groups}) > 1
    series = {}
    for key in sorted(groups, key=lambda k: (k[0], order.get(k[1], len(order)), k[1])):
        per_step: dict[int, list[float]] = {}
        for run in groups[key]:
            for entry in run["points"]:
                if _finite(entry.get(metric)):
                    per_step.setdefault(int(entry["step"]), []).append(float(entry[metric]))
        points = [(s, sum(v) / len(v), min(v), max(v)) for s, v in sorted(per_step.items())
                  if len(v) == len(groups[key])]
        if points:
            series[f"{key[1]} ({key[0]})" if several else key[1]] = points
    return series


def dynamics_chart(runs: Sequence[Mapping[str, Any]], paths: Sequence[Path], *, mode_order: Sequence[str] = (),
                   title: str = "") -> None:
    """Figure 1: accuracy per benchmark and KL from the base against the optimizer step, one line per mode
    (mean over seeds), the seeds' range as a band."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    metrics = dynamics_metrics(runs)
    colours = mode_colours([*mode_order, *(str(r["mode"]) for r in runs)])
    n_seeds = {}
    for run in runs:
        if run["points"]:
            n_seeds.setdefault(str(run["mode"]), set()).add(run.get("seed"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for label, points in dynamics_series(runs, metric, mode_order=mode_order).items():
            steps, mean, low, high = zip(*points)
            colour = colours.get(label.split(" (")[0], BASE_COLOUR)
            seeds = len(n_seeds.get(label.split(" (")[0], ()))
            axis.plot(steps, mean, color=colour, marker="o", markersize=3, linewidth=1.8,
                      label=f"{label}, {seeds} seed{'s' * (seeds > 1)}")
            if seeds > 1:
                axis.fill_between(steps, low, high, color=colour, alpha=0.18, linewidth=0)
        if metric == KL_FROM_BASE:
            axis.set_title("KL from the base (mean per-token KL(base ‖ model))", fontsize=9)
        else:
            axis.set_title(f"{_display(metric[len(EVAL_PREFIX):-len('/accuracy')])} accuracy (%)", fontsize=9)
        axis.set_xlabel("optimizer step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _finish(fig, title, "Lines: mean over seeds at each evaluation point (train.eval_every); bands: the lowest to "
             "the highest seed. Measured during training on each benchmark's first train.eval_limit problems.", paths)


def models_series(table: pd.DataFrame, swept: Sequence[str], metric: str = "target"
                  ) -> dict[str, dict[str, tuple[float, float]]]:
    """models.png's bars of one metric: model -> {bar (the mode, with the row's other swept values):
    (mean over seeds, sample std over seeds)}; models in natural order (…-0.5B before …-1.5B before …-7B)."""
    from asft.eval.table import _natural_key

    several = _several_sets(table)
    others = [n for n in swept if n != MODEL_SETTING and not _one_per_model(table, n)]
    groups: dict[str, dict[str, tuple[float, float]]] = {}
    for _, row in table.iterrows():
        model = _present_values(row, [MODEL_SETTING]).get(MODEL_SETTING)
        if model is None:
            continue
        bar = _label(row, _present_values(row, others), several)
        groups.setdefault(str(model), {})[bar] = (float(row[f"{metric}_mean"]), float(row[f"{metric}_std"]))
    return {m: groups[m] for m in sorted(groups, key=_natural_key)}


def _one_per_model(table: pd.DataFrame, name: str) -> bool:
    """Whether a swept setting takes one value per model (zipped with model.id, e.g. a learning rate per
    size): then it does not split a model's bars."""
    seen: dict[str, set] = {}
    for _, row in table.iterrows():
        values = _present_values(row, [MODEL_SETTING, name])
        if MODEL_SETTING in values and name in values:
            seen.setdefault(str(values[MODEL_SETTING]), set()).add(values[name])
    return all(len(v) <= 1 for v in seen.values())


def models_chart(table: pd.DataFrame, paths: Sequence[Path], *, swept: Sequence[str], benchmarks: Sequence[str],
                 target: Sequence[str], retention: Sequence[str], labels: Mapping[str, str] | None = None,
                 mode_order: Sequence[str] = (), title: str = "") -> None:
    """Figure 3: grouped bars, one group per model (`model.id` swept), one bar per mode, error bars ±1
    sample std over seeds."""
    plt = _pyplot()
    panels = _metric_panels(table, benchmarks, target, retention, labels)[:2]
    colours = mode_colours([*mode_order, *table["mode"]])
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 1.2 * len(set(table["mode"])) * 2.2) * len(panels),
                                                      4.8), squeeze=False)
    for axis, (metric, name) in zip(axes[0], panels):
        groups = models_series(table, swept, metric)
        bars = list(dict.fromkeys(b for group in groups.values() for b in group))
        width = 0.8 / max(len(bars), 1)
        for index, bar in enumerate(bars):
            xs = [i + (index - (len(bars) - 1) / 2) * width for i, g in enumerate(groups) if bar in groups[g]]
            means = [groups[g][bar][0] for g in groups if bar in groups[g]]
            stds = [groups[g][bar][1] for g in groups if bar in groups[g]]
            axis.bar(xs, [m if _finite(m) else 0.0 for m in means], width=width * 0.95,
                     color=_colour_of(bar, colours), label=bar, zorder=2)
            if any(_finite(s) for s in stds):
                axis.errorbar(xs, means, yerr=[s if _finite(s) else 0.0 for s in stds], fmt="none", ecolor="black",
                              elinewidth=1, capsize=3, zorder=3)
        axis.set_xticks(range(len(groups)), [g.rsplit("/", 1)[-1] for g in groups], fontsize=8)
        axis.set_title(name, fontsize=9)
        axis.grid(axis="y", alpha=0.3, zorder=0)
        axis.legend(fontsize=7)
    _finish(fig, title, "Bars: mean over seeds per model (model.id) and mode; error bars: ±1 sample std over "
             "seeds (none for one seed).", paths)


def placeholder_chart(paths: Sequence[Path], message: str, title: str = "") -> None:
    """A small figure saying why a figure does not apply (the aggregate writes every figure always)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(6, 2.2))
    fig.text(0.5, 0.62, title, ha="center", va="center", fontsize=10)
    fig.text(0.5, 0.38, message, ha="center", va="center", fontsize=9, color="#57606a", wrap=True)
    _save(fig, paths)
    plt.close(fig)


def paper_figures(table: pd.DataFrame, runs: Sequence[Mapping[str, Any]], out_dir: Path, *,
                  swept: Sequence[str], benchmarks: Sequence[str], target: Sequence[str], retention: Sequence[str],
                  labels: Mapping[str, str] | None = None, mode_order: Sequence[str] = (),
                  title: str = "") -> dict[str, bool]:
    """sweep, dynamics and models (.png and .pdf) into out_dir, each a placeholder saying why where it does
    not apply. `table`: the main summary table; `runs`: the training runs ({train_set, mode, seed, folder}).
    Returns which figures apply."""
    out_dir = Path(out_dir)
    paths = {name: [out_dir / f"{name}.png", out_dir / f"{name}.pdf"] for name in FIGURES}
    common = {"swept": swept, "benchmarks": benchmarks, "target": target, "retention": retention, "labels": labels,
              "mode_order": mode_order}
    applies = {"sweep": bool(numeric_swept(table, swept)), "models": MODEL_SETTING in swept}
    if applies["sweep"]:
        sweep_chart(table, paths["sweep"], title=f"Sweep: {title}", **common)
    else:
        placeholder_chart(paths["sweep"], "no sweep over numeric values in this configuration (config `sweep:`)",
                          title)
    if applies["models"]:
        models_chart(table, paths["models"], title=f"Models: {title}", **common)
    else:
        placeholder_chart(paths["models"], "model.id is not swept in this configuration", title)
    with_points = [{**run, "points": read_eval_points(run.get("folder"))} for run in runs]
    applies["dynamics"] = any(run["points"] for run in with_points)
    if applies["dynamics"]:
        dynamics_chart(with_points, paths["dynamics"], mode_order=mode_order, title=f"Training dynamics: {title}")
    else:
        placeholder_chart(paths["dynamics"], "no evaluation points during training in this configuration "
                          "(train.eval_every)", title)
    return applies
