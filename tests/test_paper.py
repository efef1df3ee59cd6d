"""The paper presets and protocol: job counts offline, exact prompts, scoring, normalisation,
benchmark integrity, and published numbers beside ours."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asft.workflow.config import layered_raw, load_config
from asft.workflow.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


def stage_counts(*files: str) -> dict[str, int]:
    plan = build_plan(load_config(*[CONFIG / f for f in files]))
    return {stage: len(nodes) for stage, nodes in plan.nodes.items()}


def test_paper_math_job_counts():
    # 3 train sizes x 4 modes x 1 seed; (12 runs + base) x 6 benchmarks; full fine-tuning: no merge
    assert stage_counts("paper_math.yaml") == {"model": 1, "data": 3, "tokenize": 3, "train": 12, "generate": 78,
                                               "score": 78}
    assert stage_counts("paper_math_lora.yaml") == {"model": 1, "data": 3, "tokenize": 3, "train": 12, "merge": 12,
                                                    "generate": 78, "score": 78}
    assert stage_counts("fork_quick.yaml")["generate"] == 5  # (4 runs + base) x MATH-500


def test_extends_equals_layering_by_hand():
    one_file = layered_raw([CONFIG / "paper_math.yaml"])
    by_hand = layered_raw([CONFIG / "paper.yaml", CONFIG / "paper_math.yaml"])
    assert one_file == by_hand
    cfg = load_config(CONFIG / "paper_math.yaml")
    assert cfg.model.id == "Qwen/Qwen2.5-7B" and cfg.train.method == "full" and cfg.train.lr == 5e-5
    assert cfg.train.global_batch_size == 256 and cfg.tokenize.max_length == 2048 and cfg.loss.kl_weight == 0.05
    assert cfg.loss.normalize == "upstream" and cfg.tokenize.template == "alpaca"
    assert load_config(CONFIG / "paper_math_lora.yaml").train.lora.r == 32


def test_extends_cycle_is_a_clear_error(tmp_path):
    from asft.workflow.config import ConfigError

    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_paper_math_dry_run_offline(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "-n",
         "--configfile", str(CONFIG / "paper_math.yaml")],
        capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train                12" in result.stdout and "generate             78" in result.stdout and "score                78" in result.stdout


def test_paper_protocol_renders_the_exact_prompt_and_sampling():
    from asft.eval.benchmarks import load_problems
    from asft.train.templates import eval_prompt

    node = next(n for n in build_plan(load_config(CONFIG / "paper_math.yaml")).nodes["generate"].values()
                if n.settings.benchmark.name == "math_oai")
    settings = node.settings.key_payload()
    assert (settings["template"], settings["n_samples"], settings["temperature"], settings["top_p"],
            settings["max_new_tokens"]) == ("alpaca", 16, 1.0, 1.0, 4096)
    assert settings["protocol"] == {"name": "paper", "version": 1}
    problem = load_problems("math_oai")[0]
    expected = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                "the request.\n\n### Instruction:\nConvert the point $(0,3)$ in rectangular coordinates to polar "
                "coordinates.  Enter your answer in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 "
                "\\pi.$\n\n### Response:\n")
    assert eval_prompt(settings["template"], problem.question) == expected
    fork = next(iter(build_plan(load_config(CONFIG / "fork_quick.yaml")).nodes["generate"].values())).settings
    assert (fork.template, fork.n_samples, fork.temperature) == ("cot", 1, 0.0)
    assert eval_prompt("cot", "What is 1+1?") == "Question: What is 1+1?\nAnswer:"


def test_avg_at_16_pass1_and_math_avg(tmp_path):
    from asft.eval.score import score
    from asft.eval.table import aggregate

    per_bench = {"math_oai": 10, "minerva_math": 4, "olympiadbench": 2, "aime24": 0}  # correct samples of 16
    rows, dirs = [], {}
    for bench, correct in per_bench.items():
        verdicts = [[i < correct for i in range(16)], [False] * 16]  # two problems
        folder = tmp_path / bench
        folder.mkdir()
        result = score(verdicts)
        assert result["accuracy"] == pytest.approx(100 * correct / 32)
        assert result["pass@1"] == pytest.approx(50.0 if correct else 0.0)
        assert result["pass@16"] == pytest.approx(50.0 if correct else 0.0)
        (folder / "scores.json").write_text(json.dumps(result))
        dirs[bench] = folder
        rows.append({"train_set": "numina_cot_10k", "mode": "asft", "seed": 42, "benchmark": bench,
                     "grading": "strict", "score_key": bench})
    table = aggregate(rows, dirs, tmp_path / "out", benchmarks=list(per_bench), target=list(per_bench),
                      retention=[], mode_order=["asft"], title="t", labels={"target": "Math avg"})
    expected_math_avg = sum(100 * c / 32 for c in per_bench.values()) / 4
    assert table.iloc[0]["target_mean"] == pytest.approx(expected_math_avg)
    assert "Math avg" in (tmp_path / "out" / "table.md").read_text()


def test_both_loss_normalisations_on_two_micro_batches():
    from asft.train.losses import compute_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, :4] = -100  # micro-batch 1: 1 response token predicted... (positions 4, 5 -> 1 target)
    labels[1, :1] = -100  # micro-batch 2: 5 response tokens -> 4 targets after the shift
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                           reduction="none").view(2, 5)
    mask = labels[:, 1:] != -100
    sums, counts = (ce * mask).sum(1), mask.sum(1)
    micro = [compute_loss(logits[i : i + 1], labels[i : i + 1], "sft").loss for i in range(2)]
    # microbatch_mean: each micro-batch's own mean, then the Trainer's 1/grad_accum
    assert (sum(micro) / 2).item() == pytest.approx(((sums / counts).mean()).item(), rel=1e-6)
    # global_tokens (TRL/Unsloth): every token of the accumulated batch weighs the same
    total = int(counts.sum())
    glob = sum(compute_loss(logits[i : i + 1], labels[i : i + 1], "sft", num_items=total).loss for i in range(2))
    assert glob.item() == pytest.approx((sums.sum() / total).item(), rel=1e-6)
    assert not math.isclose(glob.item(), (sum(micro) / 2).item(), rel_tol=1e-3)  # they really differ here


def test_a_benchmark_file_with_a_changed_byte_is_rejected(tmp_path, monkeypatch):
    import asft.eval.benchmarks as benchmarks

    copy = tmp_path / "math_oai" / "test.jsonl"
    copy.parent.mkdir()
    data = bytearray((ROOT / "data" / "benchmarks" / "math_oai" / "test.jsonl").read_bytes())
    data[100] = ord("X") if data[100] != ord("X") else ord("Y")
    copy.write_bytes(bytes(data))
    original = benchmarks.get_benchmark("math_oai")
    monkeypatch.setitem(benchmarks._REGISTRY, "math_oai",
                        benchmarks._file_benchmark("math_oai", "MATH-500", original.sha256,
                                                   lambda r: r.get("answer"), "solution", path=copy))
    with pytest.raises(ValueError, match=r"math_oai/test.jsonl was changed: sha256 [0-9a-f]{64}, expected a2392729"):
        benchmarks.load_problems("math_oai")


def test_every_shipped_benchmark_matches_its_recorded_hash():
    from asft.eval.benchmarks import available_benchmarks, get_benchmark, load_problems

    shipped = [name for name in available_benchmarks() if get_benchmark(name).path is not None]
    assert {"math_oai", "gsm8k", "minerva_math", "olympiadbench", "aime24", "amc23", "alpaca_eval",
            "humaneval", "humaneval_plus", "mbpp", "mbpp_plus"} <= set(shipped)
    for name in shipped:
        assert load_problems(name), name


def test_published_column_and_delta(tmp_path):
    from asft.eval.published import load_published
    from asft.eval.table import aggregate

    rows, dirs = [], {}
    for mode, acc in (("base", 30.0), ("asft", 61.0)):
        folder = tmp_path / mode
        folder.mkdir()
        (folder / "scores.json").write_text(json.dumps({"accuracy": acc}))
        dirs[mode] = folder
        rows.append({"train_set": "-" if mode == "base" else "numina_cot_100k", "mode": mode, "seed": 42,
                     "benchmark": "math_oai", "grading": "strict", "score_key": mode})
    table = aggregate(rows, dirs, tmp_path / "out", benchmarks=["math_oai"], target=["math_oai"], retention=[],
                      mode_order=["asft"], title="t", published=load_published("paper_math"))
    asft = table[table["mode"] == "asft"].iloc[0]
    assert asft["math_oai_published"] == pytest.approx(59.99)
    assert asft["math_oai_delta"] == pytest.approx(61.0 - 59.99)
    base = table[table["mode"] == "base"].iloc[0]
    assert base["math_oai_delta"] == pytest.approx(30.0 - 28.79)
    md = (tmp_path / "out" / "table.md").read_text()
    assert "61.00 / 59.99 / +1.01" in md and "Table 1" in md


def test_unknown_published_table_is_a_config_error():
    from asft.workflow.config import ConfigError, parse_config

    raw = layered_raw([CONFIG / "paper_math.yaml"])
    raw["table"]["published"] = "nope"
    with pytest.raises(ConfigError, match="table.published: no table 'nope'"):
        parse_config(raw)


def test_plan_prints_the_cost_estimate():
    from asft.ops.cli import main

    out = subprocess.run([sys.executable, "-m", "asft.ops.cli", "plan", "--configfile", str(CONFIG / "paper_math.yaml"),
                          "--results", "/nonexistent"], capture_output=True, text=True, check=True).stdout
    assert "model parameters: 7.62 B" in out and "GPU-hours" in out
    train = next(line for line in out.splitlines() if line.startswith("train"))
    assert train.split()[1] == "12" and float(train.split()[-1]) > 1
    assert main(["plan", "--results", "/nonexistent"]) == 0


def test_plan_offline_without_the_hub_benchmarks_says_what_it_cannot_estimate(tmp_path):
    """paper_medical's benchmarks come from the hub: offline and uncached, the plan still prints, naming them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "asft.ops.cli", "plan", "--configfile",
                             str(CONFIG / "paper_table2_rl.yaml"), "--results", str(tmp_path / "results")],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    out = result.stdout
    assert "(some estimates are unknown)" in out
    assert "unknown: medqa: its rows could not be read" in out and "rl: not estimated" in out
    train = next(line for line in out.splitlines() if line.startswith("train"))
    assert train.split()[1] == "4" and float(train.split()[-1]) > 0  # training is still estimated


def test_paper_medical_preset_and_choice_benchmarks_from_local_copies(tmp_path):
    from asft.eval.benchmarks import load_problems
    from asft.workflow.config import parse_config
    from asft.eval.grading import is_correct

    medqa = tmp_path / "medqa.jsonl"
    medqa.write_text(json.dumps({"question": "Which organ makes insulin?", "answer_idx": "B",
                                 "options": {"A": "Liver", "B": "Pancreas", "C": "Kidney", "D": "Spleen"}}) + "\n")
    medmcqa = tmp_path / "medmcqa.jsonl"
    medmcqa.write_text(json.dumps({"question": "Vitamin C deficiency?", "opa": "Rickets", "opb": "Beriberi",
                                   "opc": "Scurvy", "opd": "Pellagra", "cop": 2}) + "\n")
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text(json.dumps({"question": "Bones in the adult body?", "choices": ["106", "206", "306", "406"],
                                "answer": 1}) + "\n")
    raw = layered_raw([CONFIG / "paper_medical.yaml"])
    raw["eval"]["benchmark_files"] = {"medqa": str(medqa), "medmcqa": str(medmcqa), "mmlu_medical": str(mmlu)}
    plan = build_plan(parse_config(raw))
    assert {stage: len(nodes) for stage, nodes in plan.nodes.items()} == {
        "model": 1, "data": 1, "tokenize": 1, "train": 4, "generate": 15, "score": 15}  # sft, dft, asft, sft+kl (Table 1's rows)
    contexts = {n.settings.benchmark.name: n.settings.context.model_dump(exclude_none=True)
                for n in plan.nodes["generate"].values()}
    problems = {name: load_problems(name, ctx) for name, ctx in contexts.items()}
    assert problems["medqa"][0].question.endswith("A. Liver\nB. Pancreas\nC. Kidney\nD. Spleen")
    assert [problems[n][0].gold for n in ("medqa", "medmcqa", "mmlu_medical")] == ["B", "C", "B"]
    assert is_correct("The answer is B", "B") and is_correct("\\boxed{C}", "C") and not is_correct("A. Liver", "B")
    medqa.write_text(medqa.read_text().replace("Spleen", "Heart"))
    changed = build_plan(parse_config(raw))
    assert set(changed.nodes["generate"]) != set(plan.nodes["generate"])  # the local copy's bytes are in the key
