"""Merge, generation, scoring and aggregation on the tiny model and on hand-made scores."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from asft.eval.score import score
from asft.eval.generation import Sampling, cut_at_stop, generate_hf
from asft.eval.table import aggregate
from tests.fake_results import score_folder


def test_hf_generation_batched_equals_unbatched(tiny_base):
    from asft.embedded.tasks import split

    prompts = [ex.instruction for ex in split("add", 0)[1][:12]] + ["12*3=", "99-10="]
    sampling = Sampling(max_new_tokens=16)
    batched = generate_hf(tiny_base, prompts, sampling, batch_size=8, progress=False)
    one_by_one = generate_hf(tiny_base, prompts, sampling, batch_size=1, progress=False)
    assert batched == one_by_one
    assert all(len(c) == 1 for c in batched)


def test_sampling_returns_n_completions_per_prompt(tiny_base):
    out = generate_hf(tiny_base, ["12+34=", "50-7="], Sampling(n=3, temperature=1.0, max_new_tokens=8, seed=1),
                      batch_size=2, progress=False)
    assert [len(c) for c in out] == [3, 3]


def test_cut_at_stop_takes_the_earliest_marker():
    assert cut_at_stop("a\n\nQuestion: b<|im_end|>", ["<|im_end|>", "\n\nQuestion:"]) == "a"
    assert cut_at_stop("no marker", ["</s>"]) == "no marker"


def test_merged_model_logits_equal_the_adapter_model(tmp_path, tiny_base):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from asft.train.merge import merge_adapter

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    merge_adapter(adapter, tiny_base, merged_dir)
    assert list(merged_dir.glob("*.safetensors")) and (merged_dir / "tokenizer_config.json").exists()
    ids = torch.randint(0, 250, (2, 16))
    with torch.no_grad():
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_base)(ids).logits
    assert torch.allclose(merged, reference, atol=1e-5)
    assert not torch.allclose(merged, base, atol=1e-3)  # the adapter really changed the model


def test_score_avg_pass1_passk():
    correct = [[True, False, False, False], [False, False, False, True], [True, True, True, True]]
    result = score(correct)
    assert result["accuracy"] == pytest.approx(100 * 6 / 12)
    assert result["pass@1"] == pytest.approx(100 * 2 / 3)
    assert result["pass@4"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        score([])


def test_aggregate_means_and_sample_stds(tmp_path):
    rows, dirs = [], {}
    values = {  # (mode, seed) -> (target acc, retention acc a, retention acc b, drift)
        ("base", None): (50.0, 100.0, 100.0, None),
        ("sft", 0): (90.0, 60.0, 70.0, 0.2),
        ("sft", 1): (80.0, 50.0, 60.0, 0.4),
        ("asft", 0): (85.0, 90.0, 100.0, 0.05),
        ("asft", 1): (87.0, 94.0, 98.0, 0.07),
    }
    for (mode, seed), (t, a, b, d) in values.items():
        for bench, acc in (("embedded_mul", t), ("embedded_add", a), ("embedded_sub", b)):
            key = f"{mode}-{seed}-{bench}"
            dirs[key] = score_folder(tmp_path, key, acc, d if bench == "embedded_mul" else 0.0)
            rows.append({"train_set": "-" if mode == "base" else "mul", "mode": mode, "seed": seed,
                         "benchmark": bench, "grading": "strict", "score_key": key})
    out = tmp_path / "out"
    table = aggregate(rows, dirs, out, benchmarks=["embedded_mul", "embedded_add", "embedded_sub"],
                      target=["embedded_mul"], retention=["embedded_add", "embedded_sub"], mode_order=["sft", "asft"],
                      title="t")
    assert list(table["mode"]) == ["base", "sft", "asft"]
    sft = table[table["mode"] == "sft"].iloc[0]
    assert sft["n_seeds"] == 2
    assert sft["target_mean"] == pytest.approx(85.0) and sft["target_std"] == pytest.approx(math.sqrt(50))
    assert sft["retention_mean"] == pytest.approx((65 + 55) / 2)
    assert sft["retention_std"] == pytest.approx(math.sqrt(50))
    assert sft["drift_mean"] == pytest.approx(0.3)
    base = table[table["mode"] == "base"].iloc[0]
    assert base["n_seeds"] == 1 and math.isnan(base["target_std"]) and base["drift_mean"] == 0.0
    on_disk = pd.read_csv(out / "table.csv")
    assert on_disk["target_mean"].tolist() == pytest.approx([50.0, 85.0, 86.0])
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 5
    md = (out / "table.md").read_text()
    assert "| mul | asft | 2 | 86.0 ± 1.4 |" in md
    assert r"\toprule" in (out / "table.tex").read_text()
    assert (out / "table.png").stat().st_size > 1000 and not list(out.glob("*.tmp"))


def test_drift_is_kl_base_to_model_on_gold_solutions(tmp_path, tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asft.eval.benchmarks import load_problems
    from asft.eval.drift import drift

    problems = load_problems("embedded_mul", {"split_seed": 0}, limit=10)
    assert drift(tiny_base, tiny_base, problems, template="plain") == pytest.approx(0.0, abs=1e-7)
    other = AutoModelForCausalLM.from_pretrained(tiny_base)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.05 * torch.randn_like(param))
    other_dir = tmp_path / "other"
    other.save_pretrained(other_dir)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(other_dir)
    measured = drift(other_dir, tiny_base, problems, template="plain", batch_size=3)
    # direct: full logits of both models, KL(base || model) at each position predicting a solution token
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    total, count = 0.0, 0
    for problem in problems:
        prompt = tokenizer(problem.question, add_special_tokens=False)["input_ids"]
        answer = tokenizer(problem.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            log_p = torch.log_softmax(other(ids).logits[0, len(prompt) - 1 : -1], -1)
            log_q = torch.log_softmax(base(ids).logits[0, len(prompt) - 1 : -1], -1)
        total += float((log_q.exp() * (log_q - log_p)).sum())
        count += len(answer)
    assert measured == pytest.approx(total / count, rel=1e-4) and measured > 0


def test_vllm_backend_passes_the_protocol_to_vllm(monkeypatch):
    """vLLM needs a GPU; a stand-in module checks what our code asks of it and how it reads the answer."""
    import sys
    import types

    from tests.stand_ins import vllm_stand_in

    calls: dict = {}
    out = types.SimpleNamespace
    respond = lambda p: [out(text=f"{p} \\boxed{{1}}</s>junk"), out(text="x")]  # noqa: E731
    monkeypatch.setitem(sys.modules, "vllm", vllm_stand_in(calls, respond))
    from asft.eval.generation import generate

    sampling = Sampling(n=2, temperature=1.0, top_p=0.95, max_new_tokens=4096, stop=("</s>",), seed=3)
    result = generate(Path("/models/m"), ["a", "b"], sampling, backend="vllm", tensor_parallel=4)
    assert calls["llm"] == {"model": "/models/m", "tensor_parallel_size": 4, "seed": 3, "trust_remote_code": False}
    assert calls["params"] == {"n": 2, "temperature": 1.0, "top_p": 0.95, "max_tokens": 4096, "stop": ["</s>"],
                               "seed": 3}
    assert result == [["a \\boxed{1}", "x"], ["b \\boxed{1}", "x"]]
