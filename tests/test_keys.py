"""Content keys: stable across processes, changed exactly by what changes a stage's result."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asft.workflow.config import load_config, parse_config
from asft.workflow.keys import canonical_json, stage_key
from asft.workflow.plan import build_plan
from tests.test_config import default_raw


def keys_by_stage(raw: dict) -> dict[str, set[str]]:
    plan = build_plan(parse_config(raw))
    return {stage: set(nodes) for stage, nodes in plan.nodes.items()}


def changed(before: dict[str, set[str]], after: dict[str, set[str]]) -> set[str]:
    return {stage for stage in before.keys() | after.keys() if before.get(stage) != after.get(stage)}


def test_canonical_json_ignores_key_order_and_rejects_nan():
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": (1, 2), "b": 1})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_key_depends_on_settings_parents_and_stage():
    base = stage_key("train", {"lr": 1e-4}, {"model": "model/abc"})
    assert base == stage_key("train", {"lr": 1e-4}, {"model": "model/abc"})
    assert base != stage_key("train", {"lr": 2e-4}, {"model": "model/abc"})
    assert base != stage_key("train", {"lr": 1e-4}, {"model": "model/abd"})
    assert base != stage_key("merge", {"lr": 1e-4}, {"model": "model/abc"})
    assert len(base) == 16 and all(c in "0123456789abcdef" for c in base)


def test_keys_are_stable_across_processes():
    code = "from asft.workflow.config import load_config; from asft.workflow.plan import build_plan; " \
           "print(sorted(k for n in build_plan(load_config()).nodes.values() for k in n))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1
    assert runs.pop().strip() == str(sorted(k for n in build_plan(load_config()).nodes.values() for k in n))


def test_eval_only_change_changes_only_eval_keys():
    raw = default_raw()
    before = keys_by_stage(raw)
    raw["eval"]["max_new_tokens"] = 40
    assert changed(before, keys_by_stage(raw)) == {"generate", "score"}  # a score's parent is a generation


def test_grading_change_changes_only_score_keys():
    """Another grading policy re-scores: every generation (the GPU part) keeps its key."""
    raw = default_raw()
    before = keys_by_stage(raw)
    raw["eval"]["grading"] = ["qwen_harness"]
    after = keys_by_stage(raw)
    assert changed(before, after) == {"score"}
    raw["eval"]["grading"] = ["qwen_harness", "strict"]  # both: the strict scores are the ones made before
    both = keys_by_stage(raw)
    assert both["score"] == before["score"] | after["score"] and both["generate"] == before["generate"]


def test_new_seed_adds_only_new_runs():
    raw = default_raw()
    before = keys_by_stage(raw)
    raw["seeds"] = [0, 1, 2]
    after = keys_by_stage(raw)
    assert before["train"] < after["train"] and len(after["train"] - before["train"]) == 4
    assert before["model"] == after["model"] and before["tokenize"] == after["tokenize"]


def test_kl_weight_touches_only_anchored_modes():
    raw = default_raw()
    plan = build_plan(parse_config(raw))
    raw["loss"]["kl_weight"] = 0.1
    plan2 = build_plan(parse_config(raw))
    by_mode = lambda p: {n.labels["mode"]: {m.key for m in p.nodes["train"].values() if m.labels["mode"] == n.labels["mode"]}
                         for n in p.nodes["train"].values()}
    a, b = by_mode(plan), by_mode(plan2)
    assert a["sft"] == b["sft"] and a["dft"] == b["dft"]
    assert a["asft"].isdisjoint(b["asft"]) and a["sft+kl"].isdisjoint(b["sft+kl"])


def test_runtime_only_settings_change_no_key():
    raw = default_raw()
    before = keys_by_stage(raw)
    raw["loss"]["chunk_size"] = 17
    raw["eval"]["batch_size"] = 3
    raw["train"]["save_steps"] = 7
    raw["resources"]["train"]["threads"] = 2
    assert changed(before, keys_by_stage(raw)) == set()


def test_pretrain_change_changes_everything_below():
    raw = default_raw()
    before = keys_by_stage(raw)
    raw["model"]["embedded"]["steps"] = 10
    after = keys_by_stage(raw)
    assert changed(before, after) == {"model", "tokenize", "train", "merge", "generate", "score"}
    assert before["data"] == after["data"]  # the data does not depend on the model


def test_two_configs_sharing_a_prefix_share_artifacts():
    raw = default_raw()
    one = build_plan(parse_config(raw))
    raw["modes"] = ["sft", "asft", "sft-topk"]
    raw["table"] = raw["table"]
    two = build_plan(parse_config(raw))
    shared = set(one.nodes["train"]) & set(two.nodes["train"])
    assert {one.nodes["train"][k].labels["mode"] for k in shared} == {"sft", "asft"}


def test_the_embedded_default_keeps_its_keys():
    """Users' caches stay valid: a change that moves a key of the default run must say so by bumping
    the stage version (and then update these pins on purpose)."""
    import hashlib
    import json

    from asft.workflow.config import load_config
    from asft.workflow.plan import build_plan

    plan = build_plan(load_config())
    keys = {stage: sorted(nodes) for stage, nodes in plan.nodes.items()}
    assert (keys["model"], keys["data"], keys["tokenize"]) == (["8a5222206f26ea92"], ["59b9e97b1c821b08"],
                                                              ["8c4da1f2d8a32a0c"])
    assert {stage: len(k) for stage, k in keys.items()} == {"model": 1, "data": 1, "tokenize": 1, "train": 8,
                                                           "merge": 8, "generate": 27, "score": 27}
    trained = {stage: keys[stage] for stage in ("model", "data", "tokenize", "train", "merge")}
    # unchanged since before evaluation became two stages (generate + score): every training run is reused
    assert hashlib.sha256(json.dumps(trained, sort_keys=True).encode()).hexdigest() == (
        "1be295c6ab88e21afc768c7cafcbcbbbc44591c3a88af1e051344816834cb30c")
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()
    assert digest == "2ea9568d23dd617d856f62265f6f186eae27ceaab1ce3e1762a6cea59f492eed"


def test_stable_api_names_keep_working():
    """Users' scripts import these names; the modules moved into packages and are re-exported."""
    import asft.chunked_loss
    import asft.grading
    import asft.losses
    from asft.eval import grading
    from asft.train import chunked_loss, losses

    assert asft.losses.compute_loss is losses.compute_loss and asft.losses.register_mode is losses.register_mode
    assert asft.chunked_loss.chunked_loss is chunked_loss.chunked_loss
    assert asft.grading.is_correct is grading.is_correct
    assert asft.grading.is_correct(r"so \boxed{4}", "4")


def test_parsing_the_workflow_imports_no_torch():
    """The Snakefile imports the config and the plan at parse time: no torch, pandas or grader there (only
    the grading policies' names and versions),
    so `snakemake -n` and every job's start stay fast."""
    import subprocess
    import sys

    heavy = ["torch", "pandas", "transformers", "datasets", "matplotlib", "sympy", "math_verify", "latex2sympy2_extended",
             "asft.eval.grading.strict", "asft.eval.grading.qwen_harness"]
    probe = ("import sys, asft.workflow.config, asft.workflow.plan, asft.workflow.stages\n"
             "from asft.workflow.config import load_config\nfrom asft.workflow.plan import build_plan\n"
             "build_plan(load_config())\n"
             f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
