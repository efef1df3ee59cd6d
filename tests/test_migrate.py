"""`asft migrate`: evaluations made by the one-stage `eval` of earlier versions become generations under
the keys the plan now gives them, so upgrading regenerates nothing (only scoring and the table run)."""

from __future__ import annotations

import json
from pathlib import Path

from asft.eval.score import run_score
from asft.ops.migrate import _old_key, run_migrate
from asft.workflow.artifacts import MANIFEST, file_hashes, write_manifest
from asft.workflow.config import load_config
from asft.workflow.integrity import artifact_report
from asft.workflow.plan import build_plan, score_settings

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def old_eval(results: Path, node, rows: list[dict], scores: dict) -> Path:
    """An eval folder exactly as the one-stage eval wrote it (samples with verdicts, scores, manifest)."""
    record = {"stage": "eval", "version": 1, "settings": node.settings.key_payload(), "parents": dict(node.parents),
              "labels": dict(node.labels), "runtime": {"batch_size": 256, "tensor_parallel": 1}}
    folder = results / "eval" / _old_key(record)
    folder.mkdir(parents=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "scores.json").write_text(json.dumps(scores))
    (folder / "stats.json").write_text(json.dumps(scores))
    write_manifest(folder, {**record, "key": folder.name}, 0.0)
    return folder


def test_an_old_eval_becomes_the_generation_the_plan_expects_and_scores_the_same(tmp_path, capsys):
    plan = build_plan(load_config(TINY))
    node = next(n for n in plan.nodes["generate"].values() if n.labels["mode"] == "sft")
    rows = [{"prompt": "p1", "sample": 0, "completion": r"so \boxed{12}", "extracted": "12", "gold": "12", "correct": True},
            {"prompt": "p2", "sample": 0, "completion": r"\boxed{7}", "extracted": "7", "gold": "8", "correct": False}]
    scores = {"benchmark": node.settings.benchmark.name, "accuracy": 50.0, "pass@1": 50.0,
              "n_problems": 2, "n_samples": 1, "generation_seconds": 1.5, "tokens_per_second": 10.0, "drift": 0.25,
              "wall_seconds": 2.0}
    results = tmp_path / "results"
    old = old_eval(results, node, rows, scores)
    before = file_hashes(old)

    assert run_migrate(results) == 0
    assert "1 adopted" in capsys.readouterr().out
    new = results / "generate" / node.key  # the key the plan gives it: Snakemake will not generate it again
    manifest, problems = artifact_report(new, "generate")
    assert problems == [] and manifest["migrated_from"] == f"eval/{old.name}"
    samples = [json.loads(line) for line in (new / "samples.jsonl").read_text().splitlines()]
    assert [(s["problem"], s["sample"], s["completion"]) for s in samples] == [(0, 0, r"so \boxed{12}"),
                                                                               (1, 0, r"\boxed{7}")]
    assert not {"correct", "extracted"} & set(samples[0])  # verdicts are the score stage's
    generation = json.loads((new / "generation.json").read_text())
    assert generation["drift"] == 0.25 and generation["scoring"] == "generate" and "accuracy" not in generation
    assert file_hashes(old) == before  # the old folder is left as it was

    out = tmp_path / "score"
    out.mkdir()
    rescored = run_score(score_settings(node.settings, "strict"), samples_dir=new, out_dir=out)
    assert rescored["accuracy"] == 50.0 and rescored["drift"] == 0.25 and rescored["grading"]["policy"] == "strict"

    assert run_migrate(results) == 0 and "1 present" in capsys.readouterr().out  # twice: nothing new


def test_a_damaged_old_eval_is_not_adopted(tmp_path, capsys):
    plan = build_plan(load_config(TINY))
    node = next(iter(plan.nodes["generate"].values()))
    results = tmp_path / "results"
    old = old_eval(results, node, [{"prompt": "p", "sample": 0, "completion": "1", "gold": "1"}], {"accuracy": 100})
    (old / "samples.jsonl").write_text('{"prompt": "p", "sample": 0, "completion": "2", "gold": "1"}\n')
    assert run_migrate(results) == 1
    assert "files differ from its manifest" in capsys.readouterr().out
    assert not (results / "generate").exists() or not any((results / "generate").glob(f"*/{MANIFEST}"))
