"""Sweeps (config `sweep`, `sweep_zip`; asft.workflow.sweeps): expansion, shared nodes, labels, errors,
the table's swept columns, and the paper's sweep presets (Figures 2 and 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from asft.workflow.config import ConfigError, layered_raw, load_config, parse_config
from asft.workflow.plan import build_plan
from asft.workflow.sweeps import sweep_points
from tests.fake_results import score_folder

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


def _config(sweep=None, sweep_zip=None, **changes):
    raw = layered_raw([])
    raw.update(changes)
    if sweep is not None:
        raw["sweep"] = sweep
    if sweep_zip is not None:
        raw["sweep_zip"] = sweep_zip
    return parse_config(raw)


def _counts(plan):
    return {stage: len(nodes) for stage, nodes in plan.nodes.items()}


# --- expansion -----------------------------------------------------------------------------------------------


def test_grid_and_zip_expand_to_the_product_of_the_grid_and_the_zipped_rows():
    grid = sweep_points(_config({"loss.kl_weight": [0.01, 0.05, 0.1], "loss.kl_direction": ["forward", "reverse"]}))
    assert len(grid) == 6
    assert [p.values for p in grid[:2]] == [{"loss.kl_weight": 0.01, "loss.kl_direction": "forward"},
                                             {"loss.kl_weight": 0.01, "loss.kl_direction": "reverse"}]
    assert [(p.config.loss.kl_weight, p.config.loss.kl_direction) for p in grid[:2]] == [
        (0.01, "ref_policy"), (0.01, "policy_ref")]  # each point is a whole, validated config (aliases resolved)
    zipped = sweep_points(_config(sweep_zip={"train.lr": [1e-3, 2e-3, 4e-3], "train.global_batch_size": [32, 64, 128]},
                                  train={"per_device_batch_size": 32}))
    assert [(p.config.train.lr, p.config.train.global_batch_size) for p in zipped] == [
        (1e-3, 32), (2e-3, 64), (4e-3, 128)]
    both = sweep_points(_config({"loss.kl_weight": [0.01, 0.1]},
                                sweep_zip={"train.lr": [1e-3, 2e-3, 4e-3], "train.max_steps": [10, 20, 30]}))
    assert len(both) == 6 and both[-1].values == {"loss.kl_weight": 0.1, "train.lr": 4e-3, "train.max_steps": 30}
    assert sweep_points(_config()) == sweep_points(_config())[:1] and not sweep_points(_config())[0].values


def test_any_setting_can_be_swept_train_set_fields_model_and_mode_hyperparameters():
    points = sweep_points(_config({"train_sets.mul.size": [100, 200], "model.embedded.steps": [10],
                                   "loss.hparams.asft-sft.alpha": [0.5, 5]}, modes=["asft-sft"]))
    assert len(points) == 4
    assert {(p.config.train_sets[0].size, p.config.loss.hparams["asft-sft"]["alpha"]) for p in points} == {
        (100, 0.5), (100, 5), (200, 0.5), (200, 5)}
    assert all(p.config.model.embedded.steps == 10 for p in points)
    by_index = sweep_points(_config({"train_sets.0.size": [100]}))
    assert by_index[0].config.train_sets[0].size == 100


# --- one plan: shared prefixes, labels -----------------------------------------------------------------------


def test_points_share_the_base_model_the_data_and_the_tokenisation():
    plan = build_plan(_config({"loss.kl_weight": [0.01, 0.05, 0.1]}, modes=["sft", "asft"], seeds=[0]))
    # sft does not use kl_weight: its run is one node for all three points; asft has one run per point
    assert _counts(plan) == {"model": 1, "data": 1, "tokenize": 1, "train": 4, "merge": 4,
                             "generate": 3 + 4 * 3, "score": 3 + 4 * 3}
    rows = plan.train_rows()
    assert sorted((r["mode"], r.get("loss.kl_weight")) for r in rows) == [
        ("asft", 0.01), ("asft", 0.05), ("asft", 0.1), ("sft", None)]
    # a node several points reach keeps only the swept values they agree on; the others keep theirs
    (model,) = plan.nodes["model"].values()
    assert "loss.kl_weight" not in model.labels and model.labels["model"] == "embedded"
    evals = plan.eval_rows()
    assert {r.get("loss.kl_weight") for r in evals if r["mode"] == "asft"} == {0.01, 0.05, 0.1}
    assert all("loss.kl_weight" not in r for r in evals if r["mode"] in ("sft", "base"))
    asft = next(n for n in plan.nodes["train"].values() if n.labels.get("loss.kl_weight") == 0.05)
    assert plan.describe("train", asft.key) == "train asft seed 0 on mul (loss.kl_weight=0.05)"


def test_a_swept_eval_setting_shares_every_training_run():
    base = build_plan(_config())
    plan = build_plan(_config({"eval.max_new_tokens": [16, 32]}))
    for stage in ("model", "data", "tokenize", "train", "merge"):
        assert plan.keys(stage) == base.keys(stage), stage
    assert all("eval.max_new_tokens" not in n.labels for n in plan.nodes["train"].values())
    assert len(plan.nodes["generate"]) == 2 * len(base.nodes["generate"])
    assert {r["eval.max_new_tokens"] for r in plan.eval_rows()} == {16, 32}


def test_train_keys_differ_only_where_the_swept_value_enters_them():
    base = build_plan(_config())
    plan = build_plan(_config({"train.lr": [4e-3, 1e-3]}))  # 4e-3 is the default's: those runs are the base's
    assert set(base.keys("train")) < set(plan.keys("train")) and len(plan.keys("train")) == 2 * len(base.keys("train"))
    assert plan.keys("model") == base.keys("model") and plan.keys("tokenize") == base.keys("tokenize")
    for key in base.keys("train"):
        assert plan.node("train", key).labels["train.lr"] == 4e-3


def test_without_a_sweep_the_plan_is_unchanged_and_a_one_value_sweep_of_the_default_equals_it():
    base = build_plan(load_config())
    assert base.swept == () and all("." not in name for n in base.iter_nodes() for name in n.labels)
    one = build_plan(_config({"loss.kl_weight": [0.05]}))
    assert {s: one.keys(s) for s in one.nodes} == {s: base.keys(s) for s in base.nodes}
    for node in base.iter_nodes():  # the same settings (a point is the dumped config, validated again)
        assert one.node(node.stage, node.key).settings == node.settings


def test_the_table_key_covers_the_sweep():
    first = build_plan(_config({"loss.kl_weight": [0.01, 0.1]}))
    second = build_plan(_config({"loss.kl_weight": [0.01, 0.5]}))
    assert first.table_key() != second.table_key()
    assert first.table_key() == build_plan(_config({"loss.kl_weight": [0.01, 0.1]})).table_key()
    assert first.table_key() != build_plan(_config()).table_key()


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sweep", "sweep_zip", "message"), [
    ({"loss.kl_weigth": [0.1]}, None, r"sweep: unknown setting 'loss.kl_weigth' \(did you mean 'loss.kl_weight'\?\)"),
    ({"trian.lr": [0.1]}, None, r"sweep: unknown setting 'trian.lr' \(did you mean 'train.lr'\?\)"),
    ({"train.lr.peak": [0.1]}, None, r"'train.lr' is a single setting"),
    (None, {"train_sets.mull.size": [10]}, r"sweep_zip: 'train_sets.mull.size' names no train set 'mull' "
                                           r"\(did you mean 'mul'\?\)"),
    ({"loss.hparams.asft-sfft.alpha": [1]}, None, r"unknown mode 'asft-sfft' \(did you mean 'asft-sft'\?\)"),
    ({"loss.kl_weight": []}, None, r"sweep: the list of 'loss.kl_weight' is empty"),
    ({"loss.kl_weight": 0.05}, None, r"sweep: 'loss.kl_weight' must be a list of values, got 0.05"),
    ({"loss.kl_weight": [0.05, 0.05]}, None, r"lists a value twice"),
    ("loss.kl_weight", None, r"sweep: expected a mapping"),
    (None, {"train.lr": [1e-3, 2e-3], "loss.kl_weight": [0.1]}, r"sweep_zip: .*same length.*train.lr: 2, "
                                                              r"loss.kl_weight: 1"),
    ({"loss.kl_weight": [0.1]}, {"loss.kl_weight": [0.2]}, r"in both sweep and sweep_zip"),
    ({"modes": [["sft"]]}, None, r"'modes' cannot be swept"),
    ({"loss": [{"kl_weight": 0.1}], "loss.kl_weight": [0.2]}, None, r"overlap"),
])
def test_bad_sweeps_are_clear_errors(sweep, sweep_zip, message):
    with pytest.raises(ConfigError, match=message):
        _config(sweep, sweep_zip)


def test_a_bad_value_names_the_point_and_the_setting():
    with pytest.raises(ConfigError, match=r"sweep: point 2 of 3 \(loss.kl_weight=-1\): loss.kl_weight: Input should "
                                          r"be greater than or equal to 0"):
        _config({"loss.kl_weight": [0.1, -1, 0.5]})
    with pytest.raises(ConfigError, match=r"point 1 of 2 \(loss.kl_direction=sideways\): loss.kl_direction"):
        _config({"loss.kl_direction": ["sideways", "forward"]})
    with pytest.raises(ConfigError, match=r"point 2 of 2 \(train.global_batch_size=48\): train.global_batch_size: 48 "
                                          r"is not a multiple"):
        _config(sweep_zip={"train.global_batch_size": [32, 48]})
    with pytest.raises(ConfigError, match=r"loss.hparams.asft-sft.nope: unknown hyper-parameter"):
        _config({"loss.hparams.asft-sft.nope": [1.0]}, modes=["asft-sft"])


# --- the table -----------------------------------------------------------------------------------------------


def test_the_aggregate_of_a_two_point_sweep_has_a_row_per_mode_and_point(tmp_path):
    from asft.eval.table import aggregate

    plan = build_plan(_config({"loss.kl_weight": [0.01, 0.1]}, modes=["sft", "asft"]))
    rows, dirs = plan.eval_rows(), {}
    for row in rows:
        if row["score_key"] not in dirs:
            weight = row.get("loss.kl_weight") or 0.0
            accuracy = {"base": 40.0, "sft": 80.0, "asft": 70.0 + 100 * weight}[row["mode"]] + (row["seed"] or 0)
            dirs[row["score_key"]] = score_folder(tmp_path, row["score_key"], accuracy, 0.1)
    out = tmp_path / "out"
    table = aggregate(rows, dirs, out, benchmarks=["embedded_mul", "embedded_add", "embedded_sub"],
                      target=["embedded_mul"], retention=["embedded_add", "embedded_sub"],
                      mode_order=["sft", "asft"], title="sweep", train_rows=plan.train_rows())
    assert list(table.columns[:5]) == ["train_set", "mode", "loss.kl_weight", "grading", "n_seeds"]
    summary = [(m, None if pd.isna(w) else w, n, t) for m, w, n, t in
               zip(table["mode"], table["loss.kl_weight"], table["n_seeds"], table["target_mean"])]
    assert summary == [("base", None, 1, 40.0), ("sft", None, 2, 80.5), ("asft", 0.01, 2, 71.5),
                       ("asft", 0.1, 2, 80.5)]
    csv = pd.read_csv(out / "table.csv")
    assert list(csv.columns[:3]) == ["train_set", "mode", "loss.kl_weight"] and len(csv) == 4
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns[:5]) == ["train_set", "mode", "loss.kl_weight", "seed", "grading"] and len(runs) == 7
    assert "mul,asft,0.01,0,strict," in (out / "runs.csv").read_text()  # as written, not the metrics' 0.0100
    markdown = (out / "table.md").read_text()
    assert "| train set | mode | loss.kl_weight | seeds |" in markdown
    assert "| mul | asft | 0.01 | 2 | 71.5 ± 0.7 |" in markdown and "| mul | sft | - | 2 |" in markdown
    assert "<th>loss.kl_weight</th>" in (out / "table.html").read_text()
    assert "loss.kl\\_weight" in (out / "table.tex").read_text()


def test_a_table_without_a_sweep_has_no_swept_columns(tmp_path):
    from asft.eval.table import swept_columns

    plan = build_plan(load_config())
    assert swept_columns(plan.eval_rows()) == [] and swept_columns(plan.train_rows()) == []


# --- presets -------------------------------------------------------------------------------------------------


def test_figure_2_preset_is_one_base_one_tokenisation_and_twelve_runs():
    cfg = load_config(CONFIG / "paper_fig2_kl_direction.yaml")
    plan = build_plan(cfg)
    assert len(sweep_points(cfg)) == 12 and cfg.modes == ["asft"]
    assert _counts(plan) == {"model": 1, "data": 1, "tokenize": 1, "train": 12, "generate": 3 + 12 * 3,
                             "score": 3 + 12 * 3}
    points = {(n.labels["loss.kl_direction"], n.labels["loss.kl_weight"]) for n in plan.nodes["train"].values()}
    assert points == {(d, w) for d in ("forward", "reverse") for w in (0.001, 0.005, 0.01, 0.05, 0.1, 0.5)}
    # the forward point at the paper's lambda is Table 1's ASFT run: the same key, so the same cached run
    table1 = build_plan(load_config(CONFIG / "paper_medical.yaml"))
    asft = next(k for k, n in table1.nodes["train"].items() if n.labels["mode"] == "asft")
    assert plan.node("train", asft).labels["loss.kl_weight"] == 0.05
    assert plan.keys("tokenize") == table1.keys("tokenize") and plan.keys("model") == table1.keys("model")


def test_figure_4_preset_shares_every_run_its_weight_does_not_enter():
    plan = build_plan(load_config(CONFIG / "paper_fig4_anchor.yaml"))
    assert _counts(plan) == {"model": 1, "data": 1, "tokenize": 1, "train": 14, "generate": 3 + 14 * 3,
                             "score": 3 + 14 * 3}
    weights = [0.01, 0.05, 0.1, 0.5, 1, 5, 10]
    by_mode = {}
    for node in plan.nodes["train"].values():
        swept = {k: v for k, v in node.labels.items() if "." in k}
        by_mode.setdefault(node.labels["mode"], []).append(swept)
    assert sorted(by_mode["asft"], key=str) == sorted(({"loss.kl_weight": w} for w in weights), key=str)
    assert sorted(by_mode["asft-sft"], key=str) == sorted(({"loss.hparams.asft-sft.alpha": w} for w in weights),
                                                          key=str)


@pytest.mark.parametrize(("preset", "train", "generate", "models"), [("paper_fig2_kl_direction", 12, 39, 1),
                                                                     ("paper_fig4_anchor", 14, 45, 1),
                                                                     ("paper_fig1_dynamics", 4, 15, 1),
                                                                     ("paper_fig3_model_size", 6, 24, 2),
                                                                     ("paper_fig5_lr", 6, 21, 1),
                                                                     ("paper_fig5_batch", 4, 15, 1)])
def test_sweep_presets_dry_run_offline(tmp_path, preset, train, generate, models):
    """Every figure's preset plans offline; a sweep shares the base model and its tokenisation (one per model)."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "-n",
         "results/table.csv", "--configfile", str(CONFIG / f"{preset}.yaml")],
        capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert (counts["train"], counts["generate"], counts["score"]) == (train, generate, generate)
    assert counts["tokenize"] == counts["download_model"] == models


def test_asft_plan_prints_the_sweep(tmp_path):
    preset = tmp_path / "sweep.yaml"
    preset.write_text("sweep:\n  loss.kl_direction: [forward, reverse]\n  loss.kl_weight: [0.01, 0.1]\n"
                      "sweep_zip:\n  train.lr: [1.0e-3, 2.0e-3]\n  train.max_steps: [10, 20]\n")
    out = subprocess.run([sys.executable, "-m", "asft.ops.cli", "plan", "--configfile", str(preset),
                          "--results", str(tmp_path / "results")], capture_output=True, text=True, check=True).stdout
    assert "sweep: 8 points (2 x 2 grid, 2 zipped)" in out and "  loss.kl_direction: forward, reverse" in out
    assert "  train.lr: 0.001, 0.002 (zipped)" in out
    train = next(line for line in out.splitlines() if line.startswith("train "))
    # sft and dft use neither KL setting: 2 lr points x 2 seeds each; sft+kl and asft: 8 points x 2 seeds each
    assert train.split()[1] == str(2 * 2 * 2 + 2 * 8 * 2) and "GPU-hours" in out


def test_the_runs_index_gives_each_sweep_point_its_own_folder():
    from asft.workflow.run_index import run_folder

    row = {"train_set": "mul", "mode": "asft", "seed": 0, "benchmark": "embedded_mul", "grading": "strict",
           "score_key": "0" * 16}
    points = {run_folder({**row, "loss.kl_weight": w, "loss.kl_direction": d}) for w in (0.01, 0.05)
              for d in ("ref_policy", "policy_ref")}
    assert len(points) == 4 and Path("mul/asft/seed0/loss.kl_direction=ref_policy,loss.kl_weight=0.05") in points
    assert run_folder(row) == Path("mul/asft/seed0") and run_folder({**row, "mode": "base"}) == Path("base")
    assert run_folder({**row, "loss.kl_weight": "-"}) == Path("mul/asft/seed0")  # a row the setting does not touch
