"""The `rl` stage in the real workflow: the tiny embedded run with DAPO from the base model and from the asft run,
through Snakemake, to the table; an RL setting re-runs only RL and its evaluations."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from tests.test_workflow import TINY, planned_jobs, snakemake

# asft only, one benchmark: the smallest run that still has a trained start (its merge) and a base start
RL_LAYER = """modes: [asft]
eval: {benchmarks: [embedded_mul]}
table: {retention: []}
rl:
  algorithms: [dapo]
  start_from: [base, asft]
  max_steps: 2
  num_generations: 4
  max_completion_length: 24
  global_batch_size: 8
  per_device_batch_size: 8
  max_prompts: 8
  lr: 1.0e-4
"""


@pytest.mark.slow
def test_rl_runs_in_the_workflow_and_its_rows_reach_the_table(tmp_path, tiny_workflow):
    from tests.conftest import copy_workflow

    layer = tmp_path / "rl.yaml"
    layer.write_text(RL_LAYER)
    # from the tiny run's results: the base, asft's training and merge are there; rl and its evaluations run
    workdir = copy_workflow(tiny_workflow, tmp_path / "work")
    # tiny, asft only: one seed, LoRA (asft+dapo starts from the asft run's merge)
    assert planned_jobs(workdir, "--configfile", str(TINY), str(layer))["rl"] == 2
    result = snakemake(workdir, "--configfile", str(TINY), str(layer), "--cores", "2")
    assert "rl dapo from asft seed 0 on mul" in result.stdout + result.stderr
    rows = list(csv.DictReader(open(workdir / "results" / "table.csv")))
    assert [row["mode"] for row in rows] == ["base", "asft", "dapo", "asft+dapo"]  # rl runs after the modes
    manifests = [json.loads(p.read_text()) for p in (workdir / "results" / "rl").glob("*/manifest.json")]
    assert len(manifests) == 2
    for manifest in manifests:
        assert manifest["stats"]["steps"] == 2 and manifest["settings"]["loss_type"] == "dapo"
    starts = sorted(m["parents"].get("start", "base").split("/")[0] for m in manifests)
    assert starts == ["base", "merge"]

    lr = tmp_path / "lr.yaml"
    lr.write_text("rl: {lr: 2.0e-4}\n")
    # the two rl runs again, each evaluated on its benchmark; nothing trained, merged or tokenized again
    assert planned_jobs(workdir, "--configfile", str(TINY), str(layer), str(lr)) == Counter(
        rl=2, generate=2, score=2, aggregate=1, publish=1, all=1)
