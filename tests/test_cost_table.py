"""Training cost (the paper's Table 4, docs/cost.md): what a training run records, the aggregate's cost
table from train manifests (means over seeds, ratios to SFT, the published numbers beside), Table 4 as
published, and its preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from asft.eval.cost_table import cost_markdown, cost_runs, cost_table, write_cost
from asft.eval.published import check_published_table, load_published
from asft.workflow.config import load_config, parse_config
from asft.workflow.plan import build_plan

CONFIG = Path(__file__).resolve().parents[1] / "config"
TEN_K = "train_medmcqa_alpaca_10k"
# Table 4 of ASFT (arXiv 2509.23753 v3) as printed: method -> (hours, GB).
TABLE_4 = {("sft", "full"): (0.524, 38.96), ("dft", "full"): (0.521, 38.90), ("iw-sft", "full"): (8.287, 100.05),
           ("grpo", "full"): (51.24, 483.98), ("dapo", "full"): (21.595, 488.26),
           ("asft", "lora"): (0.594, 40.70), ("asft", "full"): (0.648, 88.02)}


def test_a_tiny_training_records_its_time_memory_and_device(tmp_path, tiny_base, tiny_dataset):
    import torch

    from asft.train.trainer import train_run
    from tests.conftest import RUNTIME, train_settings

    out = tmp_path / "out"
    out.mkdir()
    stats = train_run(train_settings("asft", max_steps=2), RUNTIME, model_dir=tiny_base, dataset_dir=tiny_dataset,
                      out_dir=out, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert stats["train_runtime_s"] > 0 and stats["peak_rss_gb"] > 0
    json.dumps(stats)  # goes into stats.json and the manifest
    if torch.cuda.is_available():
        assert stats["peak_gpu_memory_gb"] > 0 and stats["device"] != "cpu"
    else:
        assert "peak_gpu_memory_gb" not in stats and "peak_gpu_memory_per_device_gb" not in stats
        assert stats["device"] == "cpu" and stats["num_devices"] == 1


def _manifests(tmp_path: Path, runs: dict[tuple[str, str, int], dict]) -> tuple[list[dict], dict[str, Path]]:
    """Hand-made train manifests: (mode, method, seed) -> stats."""
    rows, dirs = [], {}
    for index, ((mode, method, seed), stats) in enumerate(runs.items()):
        key = f"k{index}"
        folder = tmp_path / "train" / key
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"stage": "train", "key": key, "wall_seconds": 99999.0,
                                                          "settings": {"method": method}, "stats": stats}))
        rows.append({"train_set": TEN_K, "mode": mode, "seed": seed, "train_key": key})
        dirs[key] = folder
    return rows, dirs


def _gpu(seconds: float, gb: float) -> dict:
    return {"train_runtime_s": seconds, "peak_gpu_memory_gb": gb, "peak_rss_gb": 5.0, "device": "NVIDIA H100",
            "resumed_from": None}


def test_cost_table_means_over_seeds_ratios_and_published(tmp_path):
    rows, dirs = _manifests(tmp_path, {
        ("sft", "full", 0): _gpu(3600, 40.0), ("sft", "full", 1): _gpu(5400, 42.0),
        ("asft", "full", 0): _gpu(7200, 90.0), ("asft", "full", 1): {**_gpu(9000, 80.0), "resumed_from": "checkpoint-4"},
    })
    published = load_published("paper_table4_cost")
    table = cost_table(cost_runs(rows, dirs), mode_order=["sft", "asft"], published=published)
    assert list(table["mode"]) == ["sft", "asft"] and list(table["runs"]) == [2, 2]
    sft, asft = table.iloc[0], table.iloc[1]
    assert sft["hours"] == pytest.approx(1.25) and asft["hours"] == pytest.approx(2.25)  # means over seeds
    assert sft["memory_gb"] == 42.0 and asft["memory_gb"] == 90.0 and asft["memory_kind"] == "gpu"  # max
    assert asft["hours_vs_sft"] == pytest.approx(1.8) and asft["resumed"] == 1
    assert sft["hours_published"] == 0.524 and asft["memory_gb_published"] == 88.02
    assert asft["hours_published_vs_sft"] == pytest.approx(0.648 / 0.524)
    assert asft["memory_gb_published_vs_sft"] == pytest.approx(88.02 / 38.96)  # the paper's 2.26x
    markdown = cost_markdown(table, published=published)
    assert "## Training cost" in markdown and "peak GPU memory GB" in markdown and "NVIDIA H100" in markdown
    assert "| 2 (1 resumed) |" in markdown and "0.648" in markdown and "Table 4" in markdown
    assert "grpo (full) on" in markdown and "asft (lora) on" in markdown  # published rows not run here


def test_cost_csv_and_rss_on_cpu_through_paper_medicals_cost_field(tmp_path):
    cpu = {"train_runtime_s": 36.0, "peak_rss_gb": 1.5, "device": "cpu"}
    rows, dirs = _manifests(tmp_path, {("sft", "lora", 0): cpu, ("asft", "lora", 0): {**cpu, "peak_rss_gb": 2.0},
                                       ("asft", "lora", 1): {"peak_rss_gb": 2.5, "device": "cpu"}})
    markdown = write_cost(tmp_path, rows, dirs, mode_order=["sft", "asft"], published=load_published("paper_medical"))
    cost = pd.read_csv(tmp_path / "cost.csv")
    assert list(cost["memory_kind"]) == ["rss", "rss"] and list(cost["memory_gb"]) == [1.5, 2.5]
    # a run without train_runtime_s falls back to the job's wall time
    assert cost["hours"].iloc[1] == pytest.approx((36.0 + 99999.0) / 2 / 3600, rel=1e-5)
    assert "peak RSS GB (CPU)" in markdown
    assert cost["hours_published"].iloc[1] == 0.594  # asft with LoRA: Table 4's ASFT-LoRA row
    assert math.isnan(cost["hours_published"].iloc[0])  # no SFT-LoRA row in Table 4
    assert write_cost(tmp_path / "none", [], {}) == "" and (tmp_path / "none" / "cost.csv").is_file()


def test_published_table_4_is_the_papers():
    table = load_published("paper_table4_cost")
    assert table["metrics"] == ["hours", "memory_gb"] and "Table 4" in table["source"]
    rows = {(r["mode"], r["method"]): (r["hours"], r["memory_gb"]) for r in table["rows"]}
    assert rows == TABLE_4 and {r["train_set"] for r in table["rows"]} == {TEN_K}
    assert load_published("paper_medical")["cost"] == "paper_table4_cost"
    assert round(0.648 / 0.524, 2) == 1.24 and round(88.02 / 38.96, 2) == 2.26  # the paper's ratios


@pytest.mark.parametrize("change, message", [
    ({"rows": [{"train_set": TEN_K, "mode": "sft", "hours": -1}]}, "number >= 0"),
    ({"rows": [{"train_set": TEN_K, "mode": "sft", "memory": 1}]}, "not one of the table's metrics"),
    ({"rows": [{"train_set": TEN_K, "mode": "sft", "method": "qlora", "hours": 1}]}, "full or lora"),
    ({"rows": [{"train_set": TEN_K, "mode": "sft", "hours": 1}] * 2}, "a second row"),
])
def test_a_broken_cost_table_is_rejected(change, message):
    table = {"source": "x", "metrics": ["hours", "memory_gb"], **change}
    with pytest.raises(ValueError, match=message):
        check_published_table("t", table)


def test_a_cost_table_is_not_an_accuracy_table():
    raw = {"table": {"published": "paper_table4_cost"}}
    with pytest.raises(ValueError, match="is a cost table"):
        parse_config(raw)


def test_the_table_4_preset_parses_and_plans():
    cfg = load_config(CONFIG / "paper_table4_cost.yaml")
    assert cfg.name == "paper_table4_cost" and cfg.modes == ["sft", "dft", "iw-sft", "asft"]
    assert cfg.table.published == "paper_medical"
    plan = build_plan(cfg)
    counts = {stage: len(nodes) for stage, nodes in plan.nodes.items()}
    # 4 modes x (full, LoRA r 8); the LoRA runs are merged; 9 evaluated models (base + 8) x 3 benchmarks
    assert counts["train"] == 8 and counts["merge"] == 4 and counts["generate"] == 27 and counts["model"] == 1
    methods = {(r["mode"], r["train.method"], r["train.lr"]) for r in plan.train_rows()}
    assert ("asft", "lora", 5e-4) in methods and ("asft", "full", 2e-5) in methods
