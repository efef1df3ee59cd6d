"""Training dynamics (train.eval_every, the paper's Figure 1): evaluation points through the real trainer,
equal to what the evaluation stages give for the same model; keys unchanged while it is off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asft.eval.dynamics import KL_KEY, accuracy_key, due
from asft.train.trainer import train_run
from asft.workflow.config import ConfigError, parse_config
from asft.workflow.plan import build_plan, dynamics_settings, generate_settings, score_settings
from tests.conftest import RUNTIME, train_settings
from tests.test_config import default_raw

BENCHMARKS = ["embedded_mul", "embedded_mul_choice"]


def dynamics_config(**train):
    raw = default_raw()
    raw["train"].update({"eval_every": 2, "eval_benchmarks": BENCHMARKS, "eval_limit": 8, **train})
    raw["eval"]["limit"] = 8
    return parse_config(raw)


def entries(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def points(out: Path) -> dict[int, dict]:
    return {e["step"]: e for e in entries(out) if KL_KEY in e or accuracy_key("embedded_mul") in e}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_base, tiny_dataset):
    cfg = dynamics_config()
    tmp = tmp_path_factory.mktemp("dynamics")
    out = tmp / "out"
    out.mkdir()
    settings = train_settings("asft", max_steps=6, dynamics=dynamics_settings(cfg))
    stats = train_run(settings, RUNTIME, model_dir=tiny_base, dataset_dir=tiny_dataset, out_dir=out,
                      checkpoint_dir=tmp / "ckpt", progress=False)
    return cfg, out, stats


def test_eval_points_at_the_first_every_nth_and_last_step(lora_run):
    _, out, stats = lora_run
    assert stats["steps"] == 6
    found = points(out)
    assert sorted(found) == [0, 2, 4, 6]
    for point in found.values():
        for bench in BENCHMARKS:
            assert 0 <= point[accuracy_key(bench)] <= 100
        assert "loss" not in point
    assert found[0][KL_KEY] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at 0: the model is the base
    assert all(found[step][KL_KEY] > 0 for step in (2, 4, 6))
    assert len([e for e in entries(out) if "loss" in e]) == 6  # the loss entries are all still there
    assert (out / "dynamics.png").stat().st_size > 0


def test_the_last_point_equals_the_eval_stages_on_the_final_model(lora_run, tiny_base, tmp_path):
    from asft.eval.generate import run_generate
    from asft.eval.score import run_score
    from asft.eval.settings import GenerateRuntime
    from asft.train.merge import merge_adapter

    cfg, out, _ = lora_run
    merged = tmp_path / "merged"
    merge_adapter(out / "model", tiny_base, merged)
    last = points(out)[6]
    for bench in BENCHMARKS:
        generation = generate_settings(cfg, bench)
        if bench.endswith("_choice"):  # multiple choice: by the chosen letter, as with protocol paper_medical
            generation = generation.model_copy(update={"template": "choice", "scoring": "choice_logprobs",
                                                       "max_new_tokens": 1})
        samples = tmp_path / bench / "samples"
        scores = tmp_path / bench / "scores"
        samples.mkdir(parents=True)
        scores.mkdir()
        generated = run_generate(generation, GenerateRuntime(batch_size=8), model_dir=merged, out_dir=samples,
                                 base_dir=tiny_base, progress=False)
        scored = run_score(score_settings(generation, "strict"), samples_dir=samples, out_dir=scores)
        assert last[accuracy_key(bench)] == pytest.approx(scored["accuracy"], abs=1e-6), bench
        if bench == "embedded_mul":  # the eval stage's drift of the merged model: the same KL from the base
            assert last[KL_KEY] == pytest.approx(generated["drift"], rel=1e-3, abs=1e-6)


def test_due_steps():
    assert [s for s in range(11) if due(s, 4, 10)] == [0, 4, 8, 10]


def test_keys_unchanged_while_eval_every_is_unset_and_changed_when_set():
    raw = default_raw()
    before = build_plan(parse_config(raw)).keys("train")
    raw["train"]["eval_benchmarks"] = ["embedded_mul"]  # no effect without eval_every
    raw["train"]["eval_limit"] = 16
    assert build_plan(parse_config(raw)).keys("train") == before
    raw["train"]["eval_every"] = 10
    plan = build_plan(parse_config(raw))
    assert not set(plan.keys("train")) & set(before)
    default = build_plan(parse_config(default_raw()))
    assert all(plan.keys(stage) == default.keys(stage) for stage in ("model", "data", "tokenize"))
    node = plan.node("train", plan.keys("train")[0])
    assert node.settings.dynamics.every == 10 and node.settings.dynamics.limit == 16
    raw["train"]["eval_limit"] = 32  # what is measured is in the key
    assert not set(build_plan(parse_config(raw)).keys("train")) & set(plan.keys("train"))


def test_a_train_node_with_dynamics_reads_back(tmp_path):
    from asft.workflow.plan import read_node, write_node_files

    plan = build_plan(dynamics_config())
    write_node_files(plan, tmp_path)
    key = plan.keys("train")[0]
    assert read_node("train", key, tmp_path).settings == plan.node("train", key).settings


def test_a_resumed_run_neither_repeats_nor_loses_a_point(tmp_path, tiny_base, tiny_dataset):
    """A run resumed from checkpoint-4 (here: an attempt that stopped there) measures steps 5-6 anew; a stale
    point that a killed attempt logged past the checkpoint is replaced, and each point is there once."""
    dynamics = dynamics_settings(dynamics_config(eval_benchmarks=["embedded_mul_choice"]))
    runtime = RUNTIME.model_copy(update={"save_steps": 4})
    first, again = tmp_path / "first", tmp_path / "again"
    first.mkdir()
    again.mkdir()
    train_run(train_settings("sft", max_steps=4, dynamics=dynamics), runtime, model_dir=tiny_base,
              dataset_dir=tiny_dataset, out_dir=first, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert (tmp_path / "ckpt" / "checkpoint-4").is_dir()
    with open(tmp_path / "ckpt" / "metrics.jsonl", "a") as handle:  # what a killed attempt left past step 4
        handle.write(json.dumps({"step": 6, KL_KEY: 99.0, accuracy_key("embedded_mul_choice"): 0.0}) + "\n")
    stats = train_run(train_settings("sft", max_steps=6, dynamics=dynamics), runtime, model_dir=tiny_base,
                      dataset_dir=tiny_dataset, out_dir=again, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert stats["resumed_from"] == "checkpoint-4"
    assert [e["step"] for e in entries(again) if KL_KEY in e] == [0, 2, 4, 6]
    assert points(again)[4] == points(first)[4]
    assert 0 < points(again)[6][KL_KEY] < 99


def test_default_benchmarks_are_the_tables():
    raw = default_raw()
    raw["train"]["eval_every"] = 10
    cfg = parse_config(raw)
    dynamics = dynamics_settings(cfg)
    assert [p.benchmark.name for p in dynamics.benchmarks] == ["embedded_mul", "embedded_add", "embedded_sub"]
    assert all(p.scoring == "generate" and p.policy.name == "strict" for p in dynamics.benchmarks)
    assert dynamics.limit == 64


def test_a_bad_benchmark_name_is_a_config_error():
    raw = default_raw()
    raw["train"].update({"eval_every": 2, "eval_benchmarks": ["embedded_mull"]})
    with pytest.raises(ConfigError, match=r"train\.eval_benchmarks: unknown benchmark 'embedded_mull'"):
        parse_config(raw)


def test_deepspeed_is_refused():
    raw = default_raw()
    raw["train"].update({"eval_every": 2, "deepspeed": "config/deepspeed/zero3.json", "method": "full"})
    with pytest.raises(ConfigError, match=r"train\.eval_every: not with train\.deepspeed"):
        parse_config(raw)


def test_full_fine_tuning_without_a_reference_loads_the_base(tmp_path, tiny_base, tiny_dataset):
    cfg = dynamics_config(eval_benchmarks=["embedded_mul_choice"])
    settings = train_settings("sft", method="full", lora=None, max_steps=3, lr=1e-3,
                              dynamics=dynamics_settings(cfg))
    out = tmp_path / "out"
    out.mkdir()
    train_run(settings, RUNTIME, model_dir=tiny_base, dataset_dir=tiny_dataset, out_dir=out,
              checkpoint_dir=tmp_path / "ckpt", progress=False)
    found = points(out)
    assert sorted(found) == [0, 2, 3]
    assert found[0][KL_KEY] == pytest.approx(0.0, abs=1e-6) and found[3][KL_KEY] > 0
