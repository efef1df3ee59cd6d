"""AlpacaEval 2: the shipped data, the outputs in alpaca-eval's format, the judge path offline against a
stand-in judge server (requests, retries, the judgement cache, the win rates computed by alpaca-eval),
the keys, the preset's dry run, and the whole workflow on the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asft.eval.judge.reference import REFERENCE_FILE, REFERENCE_SHA256, load_reference
from tests.judge_standin import JudgeStandIn, calibration_cache

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
PRESET = CONFIG / "upstream_alpacaeval.yaml"


def merged(base: dict, extra: dict) -> dict:
    return {**base, **{k: merged(base.get(k) or {}, v) if isinstance(v, dict) else v for k, v in extra.items()}}


def config(*files: Path, overrides: dict | None = None):
    """A config from files (the embedded default first), with overrides merged in as another layer would be."""
    from asft.workflow.config import layered_raw, parse_config

    return parse_config(merged(layered_raw(list(files)), overrides or {}))


@pytest.fixture()
def offline_calibration(tmp_path, monkeypatch):
    """alpaca-eval's length-control calibration file (a synthetic stand-in) in an offline HF cache."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub"
    calibration_cache(cache)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    return cache


def judge_settings(**eval_overrides):
    from asft.workflow.plan import judge_settings as from_config

    cfg = config(overrides={"eval": {"benchmarks": ["alpaca_eval"], **eval_overrides},
                                                        "table": {"target": ["alpaca_eval"], "retention": []}})
    return from_config(cfg)


def write_generation(folder: Path, outputs: list[str], generator: str = "sft-seed0") -> list[dict]:
    """A generate artifact of an AlpacaEval run, as the generate stage writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    refs = load_reference()
    rows = [{"instruction": ref.instruction, "output": out, "generator": generator, "dataset": ref.dataset}
            for ref, out in zip(refs, outputs)]
    (folder / "model_outputs.json").write_text(json.dumps(rows))
    (folder / "generation.json").write_text(json.dumps({"benchmark": "alpaca_eval", "n_problems": len(rows)}))
    return rows


# --- the shipped data ----------------------------------------------------------------------------

def test_benchmark_ships_the_805_instructions_and_reference_checked_by_sha256(tmp_path):
    from asft.core.files import sha256_file
    from asft.eval.benchmarks import get_benchmark, load_problems

    bench = get_benchmark("alpaca_eval")
    assert bench.judged and bench.display == "AlpacaEval 2" and bench.sha256 == REFERENCE_SHA256
    assert sha256_file(REFERENCE_FILE) == REFERENCE_SHA256
    assert REFERENCE_SHA256 in (REFERENCE_FILE.parent / "PROVENANCE.md").read_text()
    problems, refs = load_problems("alpaca_eval"), load_reference()
    assert len(problems) == len(refs) == 805 and len({r.instruction for r in refs}) == 805
    assert problems[0].question.startswith("What are the names of some famous actors")
    assert {r.generator for r in refs} == {"gpt4_1106_preview"} and problems[0].gold == refs[0].output
    assert {r.dataset for r in refs} == {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}
    changed = tmp_path / "copy.json"
    changed.write_bytes(REFERENCE_FILE.read_bytes().replace(b"Broadway", b"Broadwau", 1))
    with pytest.raises(ValueError, match="was changed: sha256"):
        load_reference(changed)


def test_generation_writes_outputs_in_alpaca_eval_format(tmp_path):
    from asft.eval.judge.outputs import read_model_outputs, run_name, write_model_outputs

    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as handle:
        for problem in range(3):
            for sample in range(2):
                handle.write(json.dumps({"problem": problem, "sample": sample, "prompt": "p",
                                         "completion": f"answer {problem}.{sample}", "gold": "g"}) + "\n")
    info = write_model_outputs(samples, tmp_path, "asft-seed42-magpie10k")
    rows = json.loads((tmp_path / "model_outputs.json").read_text())
    refs = load_reference()
    assert rows == [{"instruction": refs[i].instruction, "output": f"answer {i}.0",
                     "generator": "asft-seed42-magpie10k", "dataset": refs[i].dataset} for i in range(3)]
    assert info["n"] == 3 and read_model_outputs(tmp_path / "model_outputs.json") == rows
    assert run_name({"mode": "asft", "seed": 42, "train_set": "magpie10k"}) == "asft-seed42-magpie10k"
    assert run_name({"mode": "base", "seed": None, "train_set": "-"}) == "base"
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "x", "output": 3}]))
    with pytest.raises(ValueError, match="bad.json: row 0 lacks a text field"):
        read_model_outputs(tmp_path / "bad.json")


# --- the judge, offline --------------------------------------------------------------------------

def test_judge_path_requests_retries_cache_and_win_rates(tmp_path, offline_calibration, monkeypatch):
    from asft.eval.judge.score import judge_key
    from asft.eval.score import run_score
    from asft.eval.settings import JudgeRuntime, ScoreRuntime, ScoreSettings

    refs = load_reference()[:6]
    # longer than the reference on instructions 0, 2, 4 (the stand-in prefers the longer output, p = 0.8)
    outputs = [ref.output + " And more." if i % 2 == 0 else ref.output[:40] for i, ref in enumerate(refs)]
    write_generation(tmp_path / "gen", outputs)
    settings = ScoreSettings(method="judge", judge=judge_settings(limit=6, judge={"base_url": "http://x/v1"}))
    monkeypatch.setenv("ASFT_TEST_JUDGE_KEY", "sk-test-secret")
    with JudgeStandIn(fail_first=[500, 429]) as judge:
        runtime = ScoreRuntime(judge=JudgeRuntime(base_url=judge.base_url, api_key_env="ASFT_TEST_JUDGE_KEY",
                                                  cache_dir=str(tmp_path / "judge_cache"), max_retries=3))
        (tmp_path / "s1").mkdir()
        first = run_score(settings, samples_dir=tmp_path / "gen", out_dir=tmp_path / "s1", runtime=runtime)
        assert (judge.requests, judge.failed) == (6, 2)  # every pair asked once; both injected errors retried
        assert set(judge.models) == {"gpt-4-1106-preview"} and set(judge.auth) == {"Bearer sk-test-secret"}

        # the win rates are alpaca-eval's, from the stand-in's real verdicts
        assert first["win_rate"] == pytest.approx(100 * (3 * 0.8 + 3 * 0.2) / 6)
        assert first["n_total"] == 6 and first["accuracy"] == first["length_controlled_winrate"]
        assert 0 < first["accuracy"] < 100 and first["lc_standard_error"] >= 0 and first["standard_error"] > 0
        assert first["avg_length"] == int(sum(map(len, outputs)) / 6)
        assert first["grading"]["method"] == "judge" and first["judge"]["new_verdicts"] == 6
        assert first["lc_calibration"]["sha256"]
        graded = [json.loads(line) for line in (tmp_path / "s1" / "graded.jsonl").read_text().splitlines()]
        assert [g["correct"] for g in graded] == [True, False, True, False, True, False]
        cache = tmp_path / "judge_cache" / judge_key(settings.judge) / "annotations.json"
        assert len(json.loads(cache.read_text())) == 6
        for written in (cache, tmp_path / "s1" / "scores.json", tmp_path / "s1" / "graded.jsonl"):
            assert "sk-test-secret" not in written.read_text()

        # a re-score asks nothing: every verdict comes from the cache
        (tmp_path / "s2").mkdir()
        again = run_score(settings, samples_dir=tmp_path / "gen", out_dir=tmp_path / "s2", runtime=runtime)
        assert judge.requests == 6 and again["judge"]["cached_verdicts"] == 6
        assert again["accuracy"] == first["accuracy"] and again["win_rate"] == first["win_rate"]

        # one changed output: exactly one new request
        outputs[1] = refs[1].output + " A longer answer now."
        write_generation(tmp_path / "gen2", outputs)
        (tmp_path / "s3").mkdir()
        third = run_score(settings, samples_dir=tmp_path / "gen2", out_dir=tmp_path / "s3", runtime=runtime)
        assert judge.requests == 7 and third["judge"]["new_verdicts"] == 1
        assert third["win_rate"] == pytest.approx(100 * (4 * 0.8 + 2 * 0.2) / 6)


def test_a_judge_that_keeps_failing_fails_the_job_and_the_next_run_asks_again(tmp_path, offline_calibration):
    import openai

    from asft.eval.score import run_score
    from asft.eval.settings import JudgeRuntime, ScoreRuntime, ScoreSettings

    refs = load_reference()[:3]
    write_generation(tmp_path / "gen", [ref.output[:30] for ref in refs])
    settings = ScoreSettings(method="judge", judge=judge_settings(judge={"base_url": "http://x/v1"}))
    with JudgeStandIn(fail_first=[500] * 20) as judge:
        runtime = ScoreRuntime(judge=JudgeRuntime(base_url=judge.base_url, cache_dir=str(tmp_path / "cache"),
                                                  max_retries=1, concurrency=1))
        (tmp_path / "s1").mkdir()
        with pytest.raises(openai.InternalServerError):
            run_score(settings, samples_dir=tmp_path / "gen", out_dir=tmp_path / "s1", runtime=runtime)
        assert judge.requests == 0 and not (tmp_path / "s1" / "scores.json").exists()
        judge.fail_first.clear()
        (tmp_path / "s2").mkdir()
        scores = run_score(settings, samples_dir=tmp_path / "gen", out_dir=tmp_path / "s2", runtime=runtime)
        assert judge.requests == 3 and scores["n_total"] == 3 and scores["judge"]["new_verdicts"] == 3


def test_openai_api_without_its_key_fails_before_any_request(monkeypatch):
    from asft.eval.judge.annotator import LOCAL_KEY, JudgeConfigError, api_key

    monkeypatch.delenv("ASFT_UNSET_KEY", raising=False)
    with pytest.raises(JudgeConfigError, match="eval.judge.api_key_env: the environment variable ASFT_UNSET_KEY"):
        api_key("ASFT_UNSET_KEY", None)
    assert api_key("ASFT_UNSET_KEY", "http://127.0.0.1:8000/v1") == LOCAL_KEY


def test_outputs_must_follow_the_evaluation_set(tmp_path):
    from asft.eval.judge.score import references_for

    rows = write_generation(tmp_path, ["a", "b"])
    rows[1] = {**rows[1], "instruction": "something else"}
    with pytest.raises(ValueError, match="row 1's instruction is not AlpacaEval's instruction 1"):
        references_for(rows, judge_settings())


# --- keys and config -----------------------------------------------------------------------------

def test_what_changes_a_verdict_is_in_the_key_and_the_endpoint_is_not():
    from asft.workflow.plan import build_plan

    def keys(**judge):
        cfg = config(PRESET, overrides={"eval": {"judge": judge}})
        plan = build_plan(cfg)
        return plan.keys("generate"), plan.keys("score"), plan

    generate, score, plan = keys()
    node = plan.node("score", score[0])
    assert node.settings.method == "judge" and node.settings.judge.model == "gpt-4o-2024-08-06"
    assert node.settings.judge.annotator == "weighted_alpaca_eval_gpt4_turbo"
    assert node.runtime.judge.api_key_env == "OPENAI_API_KEY" and node.runtime.judge.base_url is None
    assert keys(base_url="http://judge:8000/v1", concurrency=32, max_retries=1, timeout_s=5, api_key_env="K",
                cache_dir="elsewhere")[:2] == (generate, score)
    other_model = keys(model="gpt-4-1106-preview")
    assert other_model[0] == generate and set(other_model[1]).isdisjoint(score)
    served = keys(serve="meta-llama/Meta-Llama-3-70B-Instruct", model=None)
    assert served[2].node("score", served[1][0]).settings.judge.model == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert served[2].node("score", served[1][0]).runtime.judge.serve


def test_judge_config_errors_name_the_field():
    from asft.workflow.config import ConfigError

    with pytest.raises(ConfigError, match="eval.judge.annotator.*did you mean 'weighted_alpaca_eval_gpt4_turbo'"):
        config(PRESET, overrides={"eval": {"judge": {"annotator": "weighted_alpaca_eval_gpt4_trubo"}}})
    with pytest.raises(ConfigError, match="serve .* or base_url"):
        config(PRESET, overrides={"eval": {"judge": {"serve": "m", "base_url": "http://x/v1", "model": None}}})


# --- the preset ----------------------------------------------------------------------------------

def test_upstream_alpacaeval_preset_job_counts_and_generation():
    from asft.workflow.config import load_config
    from asft.workflow.plan import build_plan

    cfg = load_config(PRESET)
    plan = build_plan(cfg)
    # 1 train set x 3 modes x 1 seed, full fine-tuning (no merge); (3 runs + base) x AlpacaEval
    assert {stage: len(nodes) for stage, nodes in plan.nodes.items()} == {
        "model": 1, "data": 1, "tokenize": 1, "train": 3, "generate": 4, "score": 4}
    data = next(iter(plan.nodes["data"].values())).settings
    assert (data.repo, data.filename) == ("chichi56/ASFT", "magpie10k.jsonl")
    assert data.sha256 == "59cc795c1f45dcb3f67b9d10682df484433ca50a4d3a9a361f17848b0d5f0953"
    generation = next(iter(plan.nodes["generate"].values())).settings
    assert (generation.template, generation.n_samples, generation.temperature, generation.max_new_tokens) == (
        "alpaca", 1, 0.0, 4096)
    assert cfg.model.id == "Qwen/Qwen2.5-7B" and cfg.train.lr == 5e-5 and cfg.train.method == "full"


def test_upstream_alpacaeval_preset_dry_run_offline(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "-n",
         "results/table.csv", "--configfile", str(PRESET)],
        capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("train                 3", "generate              4", "score                 4"):
        assert line in result.stdout, result.stdout[-2000:]


# --- the whole workflow on the embedded model ----------------------------------------------------

@pytest.mark.slow
def test_workflow_judges_the_embedded_model_and_rescoring_asks_nothing(tmp_path, tiny_workflow):
    from tests.conftest import copy_workflow
    from tests.snakemake_runs import TINY, output

    hub = tmp_path / "hub"
    calibration_cache(hub)
    # from the tiny run's results: the base and sft's training and merge are there; generation and judging run
    work = copy_workflow(tiny_workflow, tmp_path / "work")
    with JudgeStandIn(fail_first=[503]) as judge:
        layer = tmp_path / "alpaca.yaml"
        layer.write_text(json.dumps({
            "modes": ["sft"], "table": {"target": ["alpaca_eval"], "retention": []},
            "eval": {"benchmarks": ["alpaca_eval"], "limit": 4, "max_new_tokens": 12, "drift": False,
                     "template": "alpaca", "judge": {"base_url": judge.base_url, "max_retries": 2}},
        }))
        env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
        run = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
             "--cores", "2", "results/table.csv", "--configfile", str(TINY), str(layer)],
            capture_output=True, text=True, timeout=900, env=env)
        assert run.returncode == 0, output(run)[-4000:]
        generations = [json.loads(g.read_text()) for g in (work / "results" / "generate").glob("*/model_outputs.json")]
        assert {rows[0]["generator"] for rows in generations} == {"base", "sft-seed0-mul"}
        # one request per distinct (instruction, output) pair of base and sft: a pair both models gave is asked once
        pairs = {(row["instruction"], row["output"]) for rows in generations for row in rows}
        assert len(pairs) >= 4 and judge.requests == len(pairs) and judge.failed == 1  # the injected 503 retried
        judged = {p.parent: json.loads(p.read_text()) for p in (work / "results" / "score").glob("*/scores.json")}
        judged = {folder: s for folder, s in judged.items() if "length_controlled_winrate" in s}  # not the tiny run's
        scores = list(judged.values())
        assert len(scores) == 2
        assert all(s["n_total"] == 4 and s["accuracy"] == s["length_controlled_winrate"] for s in scores)
        assert "AlpacaEval 2" in (work / "results" / "table.md").read_text()
        # the score artifacts deleted and made again: every verdict from the cache
        for folder in judged:
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        again = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
             "--cores", "2", "results/table.csv", "--configfile", str(TINY), str(layer)],
            capture_output=True, text=True, timeout=600, env=env)
        assert again.returncode == 0, output(again)[-4000:]
        assert judge.requests == len(pairs)
