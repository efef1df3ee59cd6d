"""The aggregate's figures: the comparison of the modes (table.png/.pdf) and the training curves of every
run on shared axes (curves.png/.pdf). Each figure says, in itself, what its bars, lines and error bars
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
    fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.01, "Bars: mean over seeds (n under each bar). Error bars: ±1 sample std over seeds "
             "(none where n=1). Drift: mean per-token KL(base ‖ model), lower is closer to the base.",
             ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    _save(fig, paths)
    plt.close(fig)


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
    fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.01, "Bold: mean over seeds at each logged step; thin: single seeds. DFT and ASFT weight each "
             "token's CE by its detached probability, so their loss is smaller than CE.", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    _save(fig, paths)
    plt.close(fig)


def _uses_kl(run: Mapping[str, Any]) -> bool:
    if run.get("uses_kl") is not None:
        return bool(run["uses_kl"])
    return any(_finite(e.get("kl")) and float(e["kl"]) != 0.0 for e in run["entries"])
