"""Tests of the embedded default: tasks, tokenizer, base-model spec and a tiny pre-training run."""

from __future__ import annotations

import importlib
import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from asft.embedded.pretrain import encode_examples, init_model, pretrain
from asft.embedded.spec import EmbeddedBaseSpec
from asft.embedded.tasks import N_TEST, TASKS, Example, all_problems, solve, split
from asft.embedded.tokenizer import build_tokenizer

TRUE = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b}
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
# one step: operands joined by one repeated operator, "=", the result (e.g. "4+3+1=8")
STEP = re.compile(r"^(\d+)(?:([+\-*])(\d+))(?:\2(\d+))?=(\d+)$")


# --------------------------------------------------------------------------- tasks


def _check_steps(task: str, a: int, b: int, ex: Example) -> None:
    a1, a0 = divmod(a, 10)
    b1, b0 = divmod(b, 10)
    *steps, boxed = ex.response.split(";")
    assert boxed == f"\\boxed{{{ex.answer}}}"
    assert ex.answer == str(TRUE[task](a, b))
    parsed = []
    for step in steps:
        m = STEP.match(step)
        assert m, f"not a single-operation step: {step!r} in {ex}"
        x, op, y, z, result = m.groups()
        value = OPS[op](int(x), int(y))
        if z is not None:
            value = OPS[op](value, int(z))
        assert value == int(result), f"wrong step {step!r} in {ex}"
        parsed.append((op, [int(v) for v in (x, y, z) if v is not None], int(result)))
    # The steps follow the documented column rule.
    if task in ("add", "sub"):
        assert len(parsed) == 2
        (op0, args0, r0), (op1, args1, r1) = parsed
        assert op0 == op1 == ex.instruction[2]
        if task == "add":
            assert args0 == [a0, b0]
            assert args1 == ([a1, b1, 1] if r0 >= 10 else [a1, b1])
            assert int(ex.answer) == 10 * r1 + r0 % 10
        else:
            assert args0 == [a0 + (10 if a0 < b0 else 0), b0]
            assert args1 == ([a1, b1, 1] if a0 < b0 else [a1, b1])
            assert int(ex.answer) == 10 * r1 + r0
    else:
        p = a0 * b
        assert parsed[0] == ("*", [a0, b], p)
        assert parsed[1] == ("*", [a1, b], a1 * b)
        if p >= 10:
            assert len(parsed) == 3 and parsed[2] == ("+", [a1 * b, p // 10], a1 * b + p // 10)
        else:
            assert len(parsed) == 2
        assert int(ex.answer) == 10 * parsed[-1][2] + p % 10


@pytest.mark.parametrize("task", TASKS)
def test_chain_of_thought_is_correct_for_every_problem(task):
    problems = all_problems(task)
    assert len(problems) == {"add": 8100, "sub": 4095, "mul": 720}[task]
    assert len(set(problems)) == len(problems)
    for a, b in problems:
        ex = solve(task, a, b)
        assert ex.instruction == f"{a}{SYMBOL[task]}{b}="
        _check_steps(task, a, b, ex)


def test_operand_ranges():
    assert all(10 <= a <= 99 and 10 <= b <= 99 for a, b in all_problems("add"))
    assert all(10 <= b <= a <= 99 for a, b in all_problems("sub"))  # never negative
    assert all(10 <= a <= 99 and 2 <= b <= 9 for a, b in all_problems("mul"))
    with pytest.raises(ValueError):
        solve("sub", 37, 84)
    with pytest.raises(ValueError):
        solve("mul", 12, 10)
    with pytest.raises(ValueError):
        solve("div", 12, 3)


def test_examples_from_the_note():
    assert solve("add", 47, 35).response == "7+5=12;4+3+1=8;\\boxed{82}"
    assert solve("sub", 84, 37).response == "14-7=7;8-3-1=4;\\boxed{47}"
    assert solve("mul", 86, 6).response == "6*6=36;8*6=48;48+3=51;\\boxed{516}"
    assert solve("add", 41, 32).response == "1+2=3;4+3=7;\\boxed{73}"
    assert solve("add", 97, 35).response == "7+5=12;9+3+1=13;\\boxed{132}"
    assert solve("sub", 52, 47).response == "12-7=5;5-4-1=0;\\boxed{5}"
    assert solve("mul", 21, 3).response == "1*3=3;2*3=6;\\boxed{63}"


def test_rows():
    ex = solve("add", 47, 35)
    assert ex.as_train_row() == {"instruction": "47+35=", "response": ex.response}
    assert ex.as_benchmark_row() == {"question": "47+35=", "answer": "82", "solution": ex.response}
    with pytest.raises(AttributeError):
        ex.answer = "0"  # frozen


@pytest.mark.parametrize("task", TASKS)
def test_split(task):
    train, test = split(task, 0)
    assert len(test) == N_TEST == 200
    assert len(train) + len(test) == len(all_problems(task))
    train_q = {e.instruction for e in train}
    test_q = {e.instruction for e in test}
    assert not train_q & test_q
    assert len(train_q) == len(train) and len(test_q) == len(test)
    assert split(task, 0) == (train, test)  # deterministic
    other_train, other_test = split(task, 1)
    assert {e.instruction for e in other_test} != test_q  # seed-dependent
    small_train, small_test = split(task, 0, n_test=10)
    assert len(small_test) == 10 and len(small_train) == len(all_problems(task)) - 10


def test_split_is_stable_across_processes():
    # random.Random with a string seed hashes it with SHA-512: these never depend on the process.
    golden = {
        ("add", 0): ["10+21=", "11+41=", "12+39=", "12+68="],
        ("add", 1): ["10+57=", "10+67=", "10+72=", "10+81="],
        ("sub", 0): ["14-14=", "18-17=", "20-10=", "20-19="],
        ("mul", 0): ["10*8=", "11*4=", "11*6=", "11*7="],
        ("mul", 1): ["10*4=", "10*6=", "10*9=", "11*3="],
    }
    for (task, seed), first in golden.items():
        assert [e.instruction for e in split(task, seed)[1][:4]] == first


# --------------------------------------------------------------------------- tokenizer


def _all_texts() -> list[str]:
    texts = []
    for task in TASKS:
        for a, b in all_problems(task)[::7]:
            ex = solve(task, a, b)
            texts += [ex.instruction, ex.response, ex.instruction + ex.response]
    return texts


def test_tokenizer_vocabulary():
    tok = build_tokenizer()
    assert len(tok) == 260
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "\\boxed{"]) == [257, 258, 259]
    ids = tok("86*6=6*6=36;8*6=48;48+3=51;\\boxed{516}", add_special_tokens=False)["input_ids"]
    assert ids.count(259) == 1 and len(ids) == 32  # one token per character, \boxed{ is one
    assert tok.padding_side == "right"
    assert build_tokenizer(padding_side="left").padding_side == "left"
    with pytest.raises(ValueError):
        build_tokenizer(padding_side="middle")


def test_tokenizer_round_trip_through_save_and_load(tmp_path):
    tok = build_tokenizer(padding_side="left")
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Qwen2Tokenizer"
    assert len(loaded) == 260 and loaded.padding_side == "left"
    assert loaded.eos_token_id == loaded.pad_token_id == tok.eos_token_id
    texts = _all_texts() + ["héllo wörld\n\t{}\\ ∑ 🙂", "<|im_start|>user\n1+2=<|im_end|>"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded.decode(ids) == text  # nothing vanishes, digits/operators/\boxed{ exact
    msgs = [{"role": "user", "content": "47+35="}]
    prompt = "<|im_start|>user\n47+35=<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == prompt
    assert loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == prompt
    loaded.padding_side = "right"
    assert loaded(["1+2=", "10+20="], padding=True)["input_ids"][0][-1] == loaded.pad_token_id


# --------------------------------------------------------------------------- spec and model


def test_spec_defaults_and_round_trip():
    spec = EmbeddedBaseSpec()
    assert spec.task_mix == {"add": 0.46, "sub": 0.46, "mul": 0.08}
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads) == (128, 2, 4, 2)
    assert (spec.steps, spec.batch_size, spec.lr, spec.warmup) == (1000, 64, 3e-3, 100)
    assert spec.betas == (0.9, 0.98) and spec.seed == spec.split_seed == 0
    data = json.loads(json.dumps(spec.model_dump(mode="json")))
    assert EmbeddedBaseSpec.model_validate(data) == spec
    custom = EmbeddedBaseSpec.model_validate({"steps": 10, "task_mix": {"mul": 1, "add": 1}})
    assert list(custom.task_mix.items()) == [("add", 1.0), ("mul", 1.0)] and custom.lr == spec.lr
    with pytest.raises(ValueError):
        EmbeddedBaseSpec.model_validate({"stepz": 10})
    with pytest.raises(ValueError):
        EmbeddedBaseSpec(task_mix={"div": 1.0})
    with pytest.raises(ValueError):
        EmbeddedBaseSpec(num_heads=3)


def test_init_model():
    tok = build_tokenizer()
    model = init_model(EmbeddedBaseSpec(), tok)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 525_952
    again = init_model(EmbeddedBaseSpec(), tok)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    other = init_model(EmbeddedBaseSpec(seed=1), tok)
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_encode_examples_masks_the_prompt():
    tok = build_tokenizer()
    exs = [solve("add", 47, 35), solve("mul", 86, 6)]
    ids, labels, lengths = encode_examples(exs, tok)
    for i, ex in enumerate(exs):
        n_prompt = len(ex.instruction)  # one token per character in the prompt
        n = int(lengths[i])
        assert tok.decode(ids[i, :n]) == ex.instruction + ex.response + tok.eos_token
        assert (labels[i, :n_prompt] == -100).all() and (labels[i, n:] == -100).all()
        assert torch.equal(labels[i, n_prompt:n], ids[i, n_prompt:n])
        assert int(labels[i, n - 1]) == tok.eos_token_id


# --------------------------------------------------------------------------- tiny pre-training

pretrain_mod = importlib.import_module("asft.embedded.pretrain")

TINY = EmbeddedBaseSpec(steps=30, batch_size=16, warmup=5, hidden_size=64, intermediate_size=128)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    seen: list[Example] = []
    original = pretrain_mod.encode_examples

    def spy(examples, tokenizer):
        seen.extend(examples)
        return original(examples, tokenizer)

    pretrain_mod.encode_examples = spy
    try:
        runs = []
        for name in ("a", "b"):
            out = tmp_path_factory.mktemp(f"tiny_{name}")
            runs.append((out, pretrain(TINY, out, progress=False, num_threads=1)))
    finally:
        pretrain_mod.encode_examples = original
    return runs, seen


def test_tiny_pretrain_is_bitwise_deterministic(tiny_runs):
    (out_a, stats_a), (out_b, stats_b) = tiny_runs[0]
    weights_a = load_file(out_a / "model.safetensors")
    weights_b = load_file(out_b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert stats_a["loss_history"] == stats_b["loss_history"]
    assert stats_a["final_loss"] == stats_b["final_loss"]


def test_tiny_pretrain_stats_and_loss_decreases(tiny_runs):
    _out, stats = tiny_runs[0][0]
    assert stats["steps"] == 30
    assert stats["num_train_examples"] == {"add": 7900, "sub": 3895, "mul": 520}
    assert stats["num_parameters"] > 0 and stats["wall_seconds"] > 0
    assert stats["final_loss"] < 0.7 * stats["first_loss"]


def test_tiny_pretrain_never_sees_test_problems(tiny_runs):
    _, seen = tiny_runs
    seen_q = {e.instruction for e in seen}
    for task in TASKS:
        train, test = split(task, TINY.split_seed)
        assert not seen_q & {e.instruction for e in test}
        assert {e.instruction for e in train} <= seen_q


def test_tiny_pretrain_output_loads(tiny_runs):
    out, _stats = tiny_runs[0][0]
    assert json.loads((out / "embedded_base_spec.json").read_text()) == TINY.model_dump(mode="json")
    tok = AutoTokenizer.from_pretrained(out)  # next to a qwen2 config.json (pitfall 1)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert len(tok) == model.config.vocab_size == 260
    text = "86*6=6*6=36;8*6=48;48+3=51;\\boxed{516}"
    assert tok.decode(tok(text)["input_ids"]) == text
    # It generates through the evaluation stack like every model the workflow makes.
    from asft.eval.generation import Sampling, generate_hf

    problems = split("add", 0)[1][:20]
    completions = generate_hf(out, [p.instruction for p in problems], Sampling(max_new_tokens=8), batch_size=8,
                              progress=False)
    assert len(completions) == 20 and all(len(c) == 1 and isinstance(c[0], str) for c in completions)


def test_pretrain_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "x").write_text("x")
    with pytest.raises(FileExistsError):
        pretrain(TINY, tmp_path, progress=False)
