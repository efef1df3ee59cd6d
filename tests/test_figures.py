"""The paper's figures made by the aggregate (asft.eval.figures.paper_figures): sweep.png (Figures 2, 4, 5),
dynamics.png (Figure 1) and models.png (Figure 3), from hand-made scores and training logs; placeholders
where a figure does not apply. The plotted data are checked through the pure functions that return them."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from asft.eval.figures import (
    dynamics_series,
    models_series,
    numeric_swept,
    read_eval_points,
    sweep_baselines,
    sweep_series,
)
from asft.eval.table import aggregate

BENCHMARKS = ["embedded_mul", "embedded_add"]
FIGURE_FILES = [f"{name}.{ext}" for name in ("sweep", "dynamics", "models") for ext in ("png", "pdf")]
PLACEHOLDER = (720, 264)  # 6 x 2.2 inches at 120 dpi


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _build(tmp_path: Path, runs: dict[tuple, tuple[float, float]], *, train: dict[tuple, list[dict]] | None = None,
           modes=("sft", "asft")):
    """runs: (mode, seed, labels as a tuple of (name, value)) -> (target acc, retention acc); train: the same
    keys -> metrics.jsonl entries of that run."""
    rows, dirs, train_rows, train_dirs = [], {}, [], {}
    for index, ((mode, seed, labels), (target, retention)) in enumerate(runs.items()):
        for bench, acc in (("embedded_mul", target), ("embedded_add", retention)):
            key = f"s{index}-{bench}"
            folder = tmp_path / "scores" / key
            folder.mkdir(parents=True)
            (folder / "scores.json").write_text(json.dumps({"accuracy": acc, "drift": 0.0 if mode == "base" else 0.1}))
            dirs[key] = folder
            rows.append({"train_set": "-" if mode == "base" else "mul", "mode": mode, "seed": seed, **dict(labels),
                         "benchmark": bench, "grading": "strict", "score_key": key})
        if mode != "base":
            key = f"t{index}"
            folder = tmp_path / "train" / key
            folder.mkdir(parents=True)
            entries = [{"step": 1, "loss": 1.0, "ce": 1.0}, *(train or {}).get((mode, seed, labels), [])]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
            train_rows.append({"train_set": "mul", "mode": mode, "seed": seed, **dict(labels), "train_key": key})
            train_dirs[key] = folder
    out = tmp_path / "out"
    table = aggregate(rows, dirs, out, benchmarks=BENCHMARKS, target=["embedded_mul"], retention=["embedded_add"],
                      mode_order=list(modes), title="hand-made", train_rows=train_rows, train_dirs=train_dirs)
    return out, table


def _assert_figures(out: Path, placeholders: set[str]) -> None:
    for name in ("sweep", "dynamics", "models"):
        size = _png_size(out / f"{name}.png")
        if name in placeholders:
            assert size == PLACEHOLDER, name
        else:
            assert size[0] > 1000 and size[1] > 400 and (out / f"{name}.png").stat().st_size > 20_000, name
        pdf = (out / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and len(pdf) > 1_000
    assert not list(out.glob("*.tmp"))


def _kl_sweep() -> dict[tuple, tuple[float, float]]:
    """Figure 2 in small: asft at 2 directions x 3 weights, 2 seeds; sft and the base without those labels."""
    runs = {("base", None, ()): (50.0, 80.0), ("sft", 0, ()): (70.0, 40.0), ("sft", 1, ()): (72.0, 44.0)}
    for direction in ("forward", "reverse"):
        for weight in (0.01, 0.1, 1.0):
            for seed in (0, 1):
                target = 60 + 10 * math.log10(weight) + (5 if direction == "forward" else 0) + 2 * seed
                labels = (("loss.kl_direction", direction), ("loss.kl_weight", weight))
                runs[("asft", seed, labels)] = (target, 70.0 + seed)
    return runs


def test_a_2x3_sweep_gives_one_line_per_direction_and_dashed_baselines(tmp_path):
    out, table = _build(tmp_path, _kl_sweep())
    swept = ["loss.kl_direction", "loss.kl_weight"]
    main = table[table["grading"] == "strict"]
    assert numeric_swept(main, swept) == ["loss.kl_weight"]
    series = sweep_series(main, swept, "target")
    assert list(series) == ["asft, kl_direction=forward", "asft, kl_direction=reverse"]
    std = math.sqrt(2)  # seeds 2 apart: sample std sqrt(2)
    for name, offset in (("asft, kl_direction=forward", 5), ("asft, kl_direction=reverse", 0)):
        assert [x for x, _, _ in series[name]] == [0.01, 0.1, 1.0]
        assert [m for _, m, _ in series[name]] == pytest.approx([41 + offset, 51 + offset, 61 + offset])
        assert [s for _, _, s in series[name]] == pytest.approx([std] * 3)
    baselines = sweep_baselines(main, swept, "target")
    assert list(baselines) == ["base", "sft"]
    assert baselines["base"][0] == 50.0 and math.isnan(baselines["base"][1])
    assert baselines["sft"] == pytest.approx((71.0, std))
    retention = sweep_series(main, swept, "retention")
    assert [m for _, m, _ in retention["asft, kl_direction=reverse"]] == pytest.approx([70.5] * 3)
    _assert_figures(out, {"dynamics", "models"})


def test_two_settings_swept_on_different_modes_each_get_their_x(tmp_path):
    """Figure 4: asft's lambda and asft-sft's alpha (each mode has `-` in the other's column)."""
    runs = {("base", None, ()): (50.0, 80.0)}
    for value in (0.01, 1.0, 10.0):
        runs[("asft", 0, (("loss.kl_weight", value),))] = (60 + value, 70.0)
        runs[("asft-sft", 0, (("loss.hparams.asft-sft.alpha", value),))] = (55 + value, 65.0)
    out, table = _build(tmp_path, runs, modes=("asft", "asft-sft"))
    series = sweep_series(table, ["loss.kl_weight", "loss.hparams.asft-sft.alpha"])
    assert series == {"asft vs kl_weight": [(0.01, pytest.approx(60.01), pytest.approx(math.nan, nan_ok=True)),
                                            (1.0, 61.0, pytest.approx(math.nan, nan_ok=True)),
                                            (10.0, 70.0, pytest.approx(math.nan, nan_ok=True))],
                      "asft-sft vs alpha": [(0.01, pytest.approx(55.01), pytest.approx(math.nan, nan_ok=True)),
                                            (1.0, 56.0, pytest.approx(math.nan, nan_ok=True)),
                                            (10.0, 65.0, pytest.approx(math.nan, nan_ok=True))]}
    assert list(sweep_baselines(table, ["loss.kl_weight", "loss.hparams.asft-sft.alpha"])) == ["base"]
    _assert_figures(out, {"dynamics", "models"})


def _eval_point(step: int, mul: float, add: float, kl: float) -> dict:
    return {"step": step, "eval/embedded_mul/accuracy": mul, "eval/embedded_add/accuracy": add,
            "eval/kl_from_base": kl, "eval/seconds": 0.1}


def test_dynamics_mean_and_band_over_two_seeds(tmp_path):
    runs, train = {("base", None, ()): (50.0, 80.0)}, {}
    for mode, slope in (("sft", 10.0), ("asft", 5.0)):
        for seed in (0, 1):
            runs[(mode, seed, ())] = (70.0, 60.0)
            points = [_eval_point(s, 40 + slope * s + seed * 2, 80 - s, 0.01 * s * (1 + seed)) for s in (0, 2, 4)]
            if seed == 1:  # a resumed run logs step 4 again: the last one counts; step 6 only seed 1 has
                points += [_eval_point(4, 0.0, 0.0, 0.0), _eval_point(6, 1.0, 1.0, 1.0)]
                points[-2] = _eval_point(4, 40 + slope * 4 + 2, 76, 0.08)
            train[(mode, seed, ())] = points
    out, _ = _build(tmp_path, runs, train=train)
    assert [p["step"] for p in read_eval_points(tmp_path / "train" / "t2")] == [0, 2, 4, 6]
    assert read_eval_points(tmp_path / "train" / "t2")[2]["eval/kl_from_base"] == 0.08
    loaded = [{"train_set": "mul", "mode": mode, "seed": seed, "points": read_eval_points(tmp_path / "train" / f"t{i}")}
              for i, (mode, seed) in enumerate([("sft", 0), ("sft", 1), ("asft", 0), ("asft", 1)], start=1)]
    accuracy = dynamics_series(loaded, "eval/embedded_mul/accuracy", mode_order=["sft", "asft"])
    assert list(accuracy) == ["sft", "asft"]
    assert accuracy["sft"] == [(0, 41.0, 40.0, 42.0), (2, 61.0, 60.0, 62.0), (4, 81.0, 80.0, 82.0)]
    assert accuracy["asft"] == [(0, 41.0, 40.0, 42.0), (2, 51.0, 50.0, 52.0), (4, 61.0, 60.0, 62.0)]
    kl = dynamics_series(loaded, "eval/kl_from_base")
    assert kl["asft"][2] == pytest.approx((4, 0.06, 0.04, 0.08))
    _assert_figures(out, {"sweep", "models"})


def test_models_sweep_groups_bars_by_model(tmp_path):
    runs = {}
    for model, shift in (("org/m-7B", 10.0), ("org/m-0.5B", 0.0)):
        labels = (("model.id", model),)
        runs[("base", None, labels)] = (30 + shift, 80.0)
        for seed in (0, 1):
            runs[("sft", seed, labels)] = (50 + shift + seed, 50.0)
            runs[("asft", seed, labels)] = (55 + shift + seed, 75.0)
    out, table = _build(tmp_path, runs)
    groups = models_series(table, ["model.id"], "target")
    assert list(groups) == ["org/m-0.5B", "org/m-7B"]
    assert list(groups["org/m-7B"]) == ["base", "sft", "asft"]
    assert groups["org/m-7B"]["asft"] == pytest.approx((65.5, math.sqrt(0.5)))
    assert groups["org/m-0.5B"]["base"][0] == 30.0 and math.isnan(groups["org/m-0.5B"]["base"][1])
    assert numeric_swept(table, ["model.id"]) == []
    _assert_figures(out, {"sweep", "dynamics"})


def test_models_zipped_with_a_learning_rate_keep_one_bar_per_mode(tmp_path):
    """Figure 3 with `sweep_zip` (a learning rate per size): the rate does not split a model's bars, and
    sweep.png shows the modes against it."""
    runs = {}
    for model, lr in (("org/m-7B", 1e-5), ("org/m-0.5B", 1e-4)):
        runs[("base", None, (("model.id", model),))] = (30.0, 80.0)
        for mode in ("sft", "asft"):
            runs[(mode, 0, (("model.id", model), ("train.lr", lr)))] = (50.0, 60.0)
    out, table = _build(tmp_path, runs)
    groups = models_series(table, ["model.id", "train.lr"])
    assert {model: list(bars) for model, bars in groups.items()} == {"org/m-0.5B": ["base", "sft", "asft"],
                                                                      "org/m-7B": ["base", "sft", "asft"]}
    assert list(sweep_series(table, ["model.id", "train.lr"])) == [
        "sft, model=org/m-0.5B", "sft, model=org/m-7B", "asft, model=org/m-0.5B", "asft, model=org/m-7B"]
    _assert_figures(out, {"dynamics"})


def test_without_sweep_or_eval_points_todays_outputs_and_placeholders(tmp_path):
    runs = {("base", None, ()): (50.0, 80.0), ("sft", 0, ()): (70.0, 40.0), ("asft", 0, ()): (68.0, 75.0)}
    out, table = _build(tmp_path, runs)
    for name in ("table.csv", "table.md", "table.html", "table.tex", "runs.csv", "table.png", "table.pdf",
                 "curves.png", "curves.pdf", *FIGURE_FILES):
        assert (out / name).stat().st_size > 0, name
    assert sweep_series(table, []) == {} and models_series(table, []) == {}
    _assert_figures(out, {"sweep", "dynamics", "models"})
