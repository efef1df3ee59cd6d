"""The stage table is the one list of stages: rules, runners, keys, node files and resources agree with it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from asft.workflow.config import load_config
from asft.workflow.keys import STAGE_VERSIONS
from asft.workflow.plan import build_plan, read_node, write_node_files
from asft.workflow.stages import STAGES, get_stage, stage_of_rule

ROOT = Path(__file__).resolve().parents[1]
RULES = "\n".join(path.read_text() for path in sorted((ROOT / "rules").glob("*.smk")))


def rule_block(rule: str) -> str:
    match = re.search(rf"^rule {re.escape(rule)}:\n(.*?)(?=^rule |\Z)", RULES, flags=re.S | re.M)
    assert match, f"no rule '{rule}' in rules/*.smk"
    return match.group(1)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_each_stage_has_its_rule_outputs_resources_and_runner(stage):
    block = rule_block(stage.rule)
    outputs = re.findall(rf'"results/{stage.name}/{{key}}/([^"]+)"', block)
    assert sorted(outputs) == sorted(stage.outputs)
    assert f"RES.{stage.resources}.mem_mb" in block and f"logs/{stage.name}/{{key}}.log" in block
    assert callable(stage.load_runner())
    assert stage_of_rule(stage.rule) is stage and get_stage(stage.name) is stage


def test_keys_take_the_versions_of_the_table():
    assert STAGE_VERSIONS == {stage.name: stage.version for stage in STAGES}


def test_an_unknown_stage_or_rule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown stage 'trian' \\(did you mean 'train'\\?\\)"):
        get_stage("trian")
    with pytest.raises(ValueError, match="rule 'aggregate' makes no stage artifact"):
        stage_of_rule("aggregate")


@pytest.mark.parametrize("preset", [None, "paper_math.yaml", "paper_math_lora.yaml", "paper_medical.yaml"])
def test_every_node_reads_back_from_its_file_as_the_same_typed_settings(tmp_path, preset):
    plan = build_plan(load_config(*([ROOT / "config" / preset] if preset else [])))
    nodes = tmp_path / "nodes"
    assert write_node_files(plan, nodes) == sum(1 for _ in plan.iter_nodes())
    assert write_node_files(plan, nodes) == 0  # unchanged files are left alone
    for node in plan.iter_nodes():
        again = read_node(node.stage, node.key, nodes)
        assert again.settings == node.settings and type(again.settings) is type(node.settings)
        assert again.runtime == node.runtime and dict(again.parents) == dict(node.parents)


def test_a_node_file_that_no_longer_hashes_to_its_key_stops_the_job(tmp_path):
    plan = build_plan(load_config())
    write_node_files(plan, tmp_path)
    key = plan.keys("train")[0]
    path = tmp_path / "train" / f"{key}.json"
    data = json.loads(path.read_text())
    data["settings"]["lr"] = 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"its settings hash to [0-9a-f]{{16}}, not {key}"):
        read_node("train", key, tmp_path)
    with pytest.raises(FileNotFoundError, match="run the same snakemake command again"):
        read_node("train", "0" * 16, tmp_path)
