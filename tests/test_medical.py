"""The medical evaluation as upstream scores it (eval/medeval/vllm_medical_test.py) and models whose
tokenizer has no pad token (Llama-2; upstream train_v2.py adds '[PAD]' with mean-initialised rows).

Unit tests of the letter rule, the prompt, the next-token scoring and the pad-token fix, then one
end-to-end run of a CPU-sized analogue (tests/configs/medical_tiny.yaml): a local copy of the tiny
embedded model without a pad token, fine-tuned with sft and asft, scored by choice_logprobs on
multiple-choice arithmetic.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.stand_ins import vllm_stand_in
from asft.eval.settings import BenchmarkRef, EvalContext, GenerateRuntime, GenerateSettings, ScoreSettings
from asft.train.settings import LocalModel
from asft.eval.score import choose_letter

ROOT = Path(__file__).resolve().parents[1]
MEDICAL_TINY = ROOT / "tests" / "configs" / "medical_tiny.yaml"


def save_without_pad_token(source: Path, out: Path, *, bos: bool = False) -> Path:
    """A copy of a model folder whose tokenizer has no pad token (as Llama-2's); optionally with a BOS
    token that the tokenizer adds to every prompt (as Llama's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token = None
    if bos:
        tokenizer.add_special_tokens({"bos_token": "<|im_start|>"})
        tokenizer.add_bos_token = True
    model = AutoModelForCausalLM.from_pretrained(source)
    model.config.pad_token_id = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def nopad_base(tmp_path_factory, tiny_base) -> Path:
    return save_without_pad_token(tiny_base, tmp_path_factory.mktemp("nopad"))


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# --- the letter rule ------------------------------------------------------------------------------

def test_letter_is_the_best_letter_among_the_top_tokens():
    top = [("The", -0.1), (" B", -0.5), ("A", -0.9), ("\n", -1.0), ("C", -2.0)]
    choice = choose_letter(top, "The")
    assert (choice.letter, choice.source) == ("B", "logprobs")
    assert choice.letter_logprobs == {"B": -0.5, "A": -0.9, "C": -2.0}


def test_tokens_decoding_to_the_same_letter_count_with_their_best_logprob():
    # 'A', ' A' and 'a' are three tokens of one letter: the best of them (-0.6) is A's, and beats B's -0.7
    top = [(" B", -0.7), ("a", -0.6), (" A", -1.2), ("A", -3.0), ("E", -0.1)]
    choice = choose_letter(top, " B")
    assert choice.letter == "A" and choice.letter_logprobs == {"B": -0.7, "A": -0.6}  # E is not an option


def test_without_a_letter_in_the_top_tokens_the_text_decides_then_A():
    assert choose_letter([("The", -0.1), ("\n", -1.0)], " the answer").letter == "A"  # 'ANSWER' holds an A
    text = choose_letter([("x", -0.1)], "cd")
    assert (text.letter, text.source, text.letter_logprobs) == ("C", "text", {})  # letter order: C before D
    default = choose_letter([("1", -0.1), ("2", -0.2)], "42")
    assert (default.letter, default.source) == ("A", "default")
    assert choose_letter([], "").letter == "A"


def test_only_the_options_letters_count():
    assert choose_letter([("E", -0.1), ("B", -3.0)], "E", letters=("A", "B", "C", "D", "E")).letter == "E"
    assert choose_letter([("E", -0.1), ("B", -3.0)], "E").letter == "B"


# --- upstream's prompt, byte for byte ---------------------------------------------------------------

def upstream_prompt(question: str, options: list[str]) -> str:
    """eval/medeval/vllm_medical_test.py, as written there."""
    prompt = f"Question: {question}\n\nOptions:\n"
    for i, option in enumerate(options):
        prompt += f"{chr(65 + i)}. {option}\n"
    prompt += "\nAnswer:"
    return prompt


MEDQA_ROW = {"question": "A 23-year-old woman presents with fever.  Which drug is best?",
             "answer": "Nitrofurantoin", "options": {"A": "Ampicillin", "B": "Ceftriaxone ", "C": "Doxycycline",
                                                     "D": "Nitrofurantoin"},
             "meta_info": "step2&3", "answer_idx": "D"}
MMLU_ROW = {"question": "What is the embryological origin of the hyoid bone?", "subject": "anatomy",
            "choices": ["The first pharyngeal arch", "The first and second pharyngeal arches",
                        "The second pharyngeal arch", "The second and third pharyngeal arches"], "answer": 3}
MEDMCQA_ROWS = [
    {"question": "Which vitamin is supplied from only animal source:", "opa": "Vitamin C", "opb": "Vitamin B7",
     "opc": "Vitamin B12", "opd": "Vitamin D", "cop": 2, "subject_name": "Biochemistry"},
    {"question": "Unlabelled row", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": -1},
]


@pytest.fixture()
def medical_copies(tmp_path) -> dict[str, dict]:
    """Local copies in the three upstream formats, as eval.benchmark_files points at them."""
    contexts = {}
    for name, rows in (("medqa", [MEDQA_ROW]), ("mmlu_medical", [MMLU_ROW]), ("medmcqa", MEDMCQA_ROWS)):
        path = tmp_path / f"{name}_test.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        contexts[name] = {"local_file": str(path)}
    return contexts


def test_choice_prompt_is_upstreams_byte_for_byte_on_each_format(medical_copies):
    from asft.eval.benchmarks import load_problems
    from asft.train.templates import problem_prompt

    medqa, = load_problems("medqa", medical_copies["medqa"])
    mmlu, = load_problems("mmlu_medical", medical_copies["mmlu_medical"])
    medmcqa, unlabelled = load_problems("medmcqa", medical_copies["medmcqa"])
    expected = {
        "medqa": upstream_prompt(MEDQA_ROW["question"], list(MEDQA_ROW["options"].values())),
        "mmlu": upstream_prompt(MMLU_ROW["question"], MMLU_ROW["choices"]),
        "medmcqa": upstream_prompt(MEDMCQA_ROWS[0]["question"], [MEDMCQA_ROWS[0][k] for k in ("opa", "opb", "opc",
                                                                                                 "opd")]),
    }
    got = {"medqa": problem_prompt("choice", medqa), "mmlu": problem_prompt("choice", mmlu),
           "medmcqa": problem_prompt("choice", medmcqa)}
    assert {k: v.encode() for k, v in got.items()} == {k: v.encode() for k, v in expected.items()}
    assert got["medqa"] == ("Question: A 23-year-old woman presents with fever.  Which drug is best?\n\nOptions:\n"
                            "A. Ampicillin\nB. Ceftriaxone \nC. Doxycycline\nD. Nitrofurantoin\n\nAnswer:")
    # gold letters: answer_idx, chr(65 + answer), chr(65 + cop) with cop -1 -> 'A'
    assert [p.choices.gold for p in (medqa, mmlu, medmcqa, unlabelled)] == ["D", "D", "C", "A"]
    assert medqa.gold == "D" and unlabelled.gold == "A"


def test_medqa_options_keep_file_order_in_the_choice_prompt(tmp_path):
    from asft.eval.benchmarks import load_problems
    from asft.train.templates import problem_prompt

    row = {"question": "Q?", "options": {"B": "second", "A": "first", "C": "c", "D": "d"}, "answer_idx": "A"}
    path = tmp_path / "medqa.jsonl"
    path.write_text(json.dumps(row) + "\n")
    problem, = load_problems("medqa", {"local_file": str(path)})
    assert problem_prompt("choice", problem) == upstream_prompt("Q?", ["second", "first", "c", "d"])
    assert problem.question == "Q?\nA. first\nB. second\nC. c\nD. d"  # the free-text rendering is unchanged


def test_choice_template_needs_options_and_eval_prompt_points_to_problem_prompt():
    from asft.eval.benchmarks import Problem
    from asft.train.templates import eval_prompt, problem_prompt

    with pytest.raises(ValueError, match="needs a multiple-choice benchmark"):
        problem_prompt("choice", Problem("1+1=", "2"))
    with pytest.raises(ValueError, match="problem_prompt"):
        eval_prompt("choice", "1+1=")


def test_known_upstream_test_files_are_recognised_by_sha256():
    from asft.eval.benchmarks import KNOWN_COPIES, file_provenance
    from asft.eval.generate import _source_file

    medqa_sha = "c3b905ccfa66152dc25afbcb2c10e86c0bdb208824f0658fcdb2c040f60a2beb"
    assert file_provenance("medqa", medqa_sha).startswith("upstream test_data")
    assert "but it is the 'medqa' file" in file_provenance("medmcqa", medqa_sha.upper())
    assert file_provenance("medqa", "0" * 64) is None
    assert {c.benchmark for c in KNOWN_COPIES.values()} == {"medqa", "mmlu_medical", "medmcqa"}
    copy = GenerateSettings(benchmark=BenchmarkRef(name="medqa", version=1),
                        context=EvalContext(local_file="/data/medqa_test.jsonl", local_sha256=medqa_sha))
    source = _source_file(copy, "medqa")
    assert source["provenance"] == "upstream test_data: zhuchichi56/ASFT eval/medeval/test_data/medqa_test.jsonl"
    assert _source_file(GenerateSettings(benchmark=BenchmarkRef(name="medqa", version=1)), "medqa") is None


# --- the embedded multiple-choice benchmarks ---------------------------------------------------------

def test_embedded_choice_benchmarks_have_four_numeric_options_one_correct():
    from asft.eval.benchmarks import get_benchmark, load_problems

    for task in ("add", "sub", "mul"):
        assert get_benchmark(f"embedded_{task}_choice").multiple_choice
        problems = load_problems(f"embedded_{task}_choice", {"split_seed": 0})
        plain = load_problems(f"embedded_{task}", {"split_seed": 0})
        assert len(problems) == 200 and [p.choices.stem for p in problems] == [p.question for p in plain]
        for problem, reference in zip(problems, plain):
            options = problem.choices.options
            assert len(set(options)) == 4 and all(o.isdigit() for o in options)
            assert options["ABCD".index(problem.choices.gold)] == reference.gold
            assert problem.gold == problem.choices.gold
        golds = {p.choices.gold for p in problems}
        assert golds == {"A", "B", "C", "D"}  # the right answer is not always in one place
    again = load_problems("embedded_mul_choice", {"split_seed": 0}, limit=5)
    assert again == load_problems("embedded_mul_choice", {"split_seed": 0})[:5]  # deterministic, limit-independent
    other = load_problems("embedded_mul_choice", {"split_seed": 1})
    assert [p.choices for p in other] != [p.choices for p in load_problems("embedded_mul_choice", {"split_seed": 0})]


# --- config and keys -------------------------------------------------------------------------------

def test_choice_template_or_scoring_on_a_benchmark_without_options_is_a_config_error():
    from asft.workflow.config import ConfigError, layered_raw, parse_config

    for eval_section, field in (({"template": "choice"}, "eval.template: 'choice'"),
                                ({"scoring": "choice_logprobs"}, "eval.scoring: 'choice_logprobs'"),
                                ({"protocol": "paper_medical"}, "eval.protocol: 'paper_medical'")):
        raw = layered_raw([])
        raw["eval"].update(eval_section)
        with pytest.raises(ConfigError) as error:
            parse_config(raw)
        assert field in str(error.value) and "benchmark 'embedded_mul' has no options" in str(error.value)
    raw = layered_raw([])
    raw["eval"].update(scoring="choice_logprobs", benchmarks=["embedded_mul_choice"], n_samples=4)
    raw["table"] = {"target": ["embedded_mul_choice"], "retention": []}
    with pytest.raises(ConfigError, match="eval.n_samples: scoring 'choice_logprobs'"):
        parse_config(raw)


def test_paper_medical_protocol_fixes_the_eval_fields_and_scoring_enters_keys_only_when_not_generate():
    from asft.workflow.config import layered_raw, parse_config
    from asft.workflow.plan import build_plan

    default = build_plan(parse_config(layered_raw([])))
    assert all("scoring" not in node.settings.key_payload() for node in default.nodes["generate"].values())
    raw = layered_raw([MEDICAL_TINY])
    raw["model"]["local_path"] = "/models/nopad"
    raw["eval"].update(template="alpaca", n_samples=16, temperature=1.0)  # the protocol overrides them
    plan = build_plan(parse_config(raw))
    settings = next(iter(plan.nodes["generate"].values())).settings.key_payload()
    assert (settings["template"], settings["scoring"], settings["n_samples"], settings["temperature"],
            settings["max_new_tokens"]) == ("choice", "choice_logprobs", 1, 0.0, 1)
    assert settings["protocol"] == {"name": "paper_medical", "version": 1}
    custom = layered_raw([MEDICAL_TINY])
    custom["model"]["local_path"] = "/models/nopad"
    custom["eval"].update(protocol="custom", template="choice", scoring="choice_logprobs", max_new_tokens=1)
    custom_settings = next(iter(build_plan(parse_config(custom)).nodes["generate"].values())).settings
    assert custom_settings.scoring == "choice_logprobs" and custom_settings.protocol is None


def test_paper_medical_preset_uses_the_upstream_protocol():
    from asft.workflow.config import load_config
    from asft.workflow.plan import build_plan

    cfg = load_config(ROOT / "config" / "paper_medical.yaml")
    assert cfg.eval.protocol == "paper_medical"
    node = next(iter(build_plan(cfg).nodes["generate"].values()))
    assert node.settings.scoring == "choice_logprobs" and node.settings.template == "choice"


# --- next-token scoring: hf forward pass and vLLM ------------------------------------------------------

def test_last_token_logits_is_the_same_with_left_right_or_no_padding(tiny_base):
    from transformers import AutoModelForCausalLM

    from asft.eval.generation import last_token_logits, pad_left

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    prompts = [[49, 50, 43, 51, 52, 61], [55, 42, 56, 61], [57, 57, 45, 49, 48, 61, 33, 35]]
    alone = torch.cat([last_token_logits(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long))
                       for p in prompts])
    with torch.no_grad():
        direct = torch.stack([model(torch.tensor([p])).logits[0, -1] for p in prompts])
    assert torch.allclose(alone, direct, atol=1e-5)
    ids, mask = pad_left(prompts, pad_id=0)
    assert torch.allclose(last_token_logits(model, ids, mask), alone, atol=1e-5)
    width = ids.shape[1]
    right_ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    right_mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    assert torch.allclose(last_token_logits(model, right_ids, right_mask), alone, atol=1e-5)


def test_hf_next_token_top_is_batch_independent_and_tokenizes_with_special_tokens(tmp_path, tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asft.eval.generation import next_token_top_hf
    from asft.train.models import build_model

    with_bos = tmp_path / "bos_model"
    build_model(LocalModel(path=str(save_without_pad_token(tiny_base, tmp_path / "bos", bos=True))), with_bos,
                progress=False)
    prompts = ["Question: 12+3=\n\nOptions:\nA. 15\nB. 16\nC. 5\nD. 25\n\nAnswer:", "Question: 7*8=\n\nAnswer:",
               "47+35="]
    batched = next_token_top_hf(with_bos, prompts, batch_size=3, progress=False)
    alone = [next_token_top_hf(with_bos, [p], batch_size=1, progress=False)[0] for p in prompts]
    for a, b in zip(batched, alone):
        assert [t for t, _, _ in a.top] == [t for t, _, _ in b.top] and a.completion == b.completion
        assert [v for _, _, v in a.top] == pytest.approx([v for _, _, v in b.top], abs=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(with_bos)
    model = AutoModelForCausalLM.from_pretrained(with_bos).eval()
    ids = tokenizer(prompts[0], add_special_tokens=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id  # the prompt starts with BOS, as vLLM tokenizes it
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1).topk(10)
    assert [t for t, _, _ in batched[0].top] == expected.indices.tolist()
    assert [v for _, _, v in batched[0].top] == pytest.approx(expected.values.tolist(), abs=1e-5)
    assert batched[0].top[0][1] == tokenizer.decode([int(expected.indices[0])])
    assert batched[0].completion == tokenizer.decode([int(expected.indices[0])], skip_special_tokens=True)


def first_token_answer(top_ids: list[int], logprobs: list[float], text: str):
    """A vLLM answer of one token: `text`, with the given first-token top list (ids and log-probabilities)."""
    entry = {t: types.SimpleNamespace(logprob=v, rank=i + 1, decoded_token=None)
             for i, (t, v) in enumerate(zip(top_ids, logprobs))}
    return lambda prompt: [types.SimpleNamespace(text=text, logprobs=[entry], token_ids=[top_ids[0]])]


def test_vllm_choice_scoring_asks_for_one_token_and_ten_logprobs(monkeypatch, tmp_path, tiny_base):
    from asft.eval.generate import run_generate
    from asft.eval.score import run_score

    def run_eval(settings, runtime, *, model_dir, out_dir, progress):
        """generate, then score the samples in the same folder (as the two stages do in two)."""
        run_generate(settings, runtime, model_dir=model_dir, out_dir=out_dir, progress=progress)
        rows = (out_dir / "samples.jsonl").read_text().splitlines()
        assert all({"top_tokens", "letters"} <= set(json.loads(row)) for row in rows)  # what scoring reads
        scores = run_score(ScoreSettings(method="choose_letter"), samples_dir=out_dir, out_dir=out_dir)
        (out_dir / "samples.jsonl").write_text((out_dir / "graded.jsonl").read_text())
        return scores

    calls: dict = {}
    # byte-level ids of the tiny tokenizer: 32 ' ', 65 'A', 66 'B', 98 'b', 120 'x'
    answer = first_token_answer([120, 66, 98, 65, 32], [-0.2, -1.5, -1.1, -2.0, -3.0], "x")
    monkeypatch.setitem(sys.modules, "vllm", vllm_stand_in(calls, answer))
    settings = GenerateSettings(benchmark=BenchmarkRef(name="embedded_mul_choice", version=1),
                            context=EvalContext(split_seed=0), limit=3, backend="vllm", template="choice",
                            scoring="choice_logprobs", n_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=1,
                            seed=5, drift=False)
    scores = run_eval(settings, GenerateRuntime(tensor_parallel=2), model_dir=tiny_base, out_dir=tmp_path,
                      progress=False)
    assert calls["params"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 1, "logprobs": 10}
    assert calls["llm"] == {"model": str(tiny_base), "tensor_parallel_size": 2, "seed": 5, "trust_remote_code": False}
    assert calls["prompts"][0].startswith("Question: ") and calls["prompts"][0].endswith("\n\nAnswer:")
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        # 'b' (-1.1) and 'B' (-1.5) are one letter with -1.1, better than A's -2.0; 'x' and ' ' are no letters
        assert row["letter_logprobs"] == {"B": -1.1, "A": -2.0} and row["predicted"] == "B"
        assert row["predicted_from"] == "logprobs" and row["correct"] == (row["gold"] == "B")
    assert scores["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in rows) / 3)
    assert scores["n_samples"] == 1 and scores["scoring"] == "choice_logprobs"
    assert scores["predicted_from"] == {"logprobs": 3, "text": 0, "default": 0}

    monkeypatch.setitem(sys.modules, "vllm", vllm_stand_in(calls, first_token_answer([120, 32], [-0.1, -0.2], " c.")))
    run_eval(settings, GenerateRuntime(), model_dir=tiny_base, out_dir=tmp_path, progress=False)
    fallback = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])
    assert (fallback["predicted"], fallback["predicted_from"], fallback["letter_logprobs"]) == ("C", "text", {})


# --- the pad token: the model stage adds it, the other stages say clearly when it is missing ---------

def test_model_stage_adds_pad_with_mean_rows_and_never_writes_the_source(tmp_path, nopad_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asft.train.models import build_model

    assert AutoTokenizer.from_pretrained(nopad_base).pad_token_id is None
    before = folder_hashes(nopad_base)
    out = tmp_path / "model"
    out.mkdir()
    stats = build_model(LocalModel(path=str(nopad_base)), out, progress=False)
    assert folder_hashes(nopad_base) == before  # files were hard-linked: rewritten by rename only
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.pad_token, tokenizer.pad_token_id, len(tokenizer)) == ("[PAD]", 260, 261)
    assert stats["tokenizer_fixes"]["pad_token"] == {"policy": "add", "token": "[PAD]", "id": 260}
    assert stats["tokenizer_fixes"]["embedding_rows"] == [260, 261] and stats["vocab_size"] == 261
    old = AutoModelForCausalLM.from_pretrained(nopad_base)
    new = AutoModelForCausalLM.from_pretrained(out)
    assert new.config.vocab_size == 261 and json.loads((out / "config.json").read_text())["vocab_size"] == 261
    old_rows = old.get_input_embeddings().weight
    new_rows = new.get_input_embeddings().weight
    assert torch.equal(new_rows[:260], old_rows)
    assert torch.allclose(new_rows[260], old_rows.mean(0), atol=1e-7)
    assert new.get_output_embeddings().weight.shape == (261, old_rows.shape[1])
    assert not list(out.glob(".*"))  # no temporary folder left behind
    ids = torch.tensor([[49, 50, 43, 51]])
    with torch.no_grad():
        assert torch.allclose(new(ids).logits[..., :260], old(ids).logits, atol=1e-5)  # old tokens unchanged


def test_untied_model_gets_mean_rows_in_both_embeddings_and_eos_policy_resizes_nothing(tmp_path, tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from asft.train.models import fix_tokenizer

    untied = tmp_path / "untied"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
    model.save_pretrained(untied)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(untied)
    # an older format's special-token file, which would override the fixes when loading if it stayed
    (untied / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "unk_token": None}))
    done = fix_tokenizer(untied, special_tokens={"unk_token": "<|endoftext|>"}, missing_pad_token="add")
    assert done["special_tokens"] == {"unk_token": {"before": None, "after": "<|endoftext|>"}}
    resized = AutoModelForCausalLM.from_pretrained(untied)
    for old, new in ((model.get_input_embeddings().weight, resized.get_input_embeddings().weight),
                     (model.get_output_embeddings().weight, resized.get_output_embeddings().weight)):
        assert torch.equal(new[:260], old) and torch.allclose(new[260], old.mean(0), atol=1e-7)
    reloaded = AutoTokenizer.from_pretrained(untied)
    assert (reloaded.unk_token, reloaded.pad_token) == ("<|endoftext|>", "[PAD]")
    assert not (untied / "special_tokens_map.json").exists()

    eos_copy = save_without_pad_token(tiny_base, tmp_path / "eos")
    done = fix_tokenizer(eos_copy, special_tokens={}, missing_pad_token="eos")
    assert done == {"pad_token": {"policy": "eos", "token": "<|endoftext|>", "id": 256}}
    assert AutoModelForCausalLM.from_pretrained(eos_copy).config.vocab_size == 260
    # a tokenizer that pads already (the embedded default) is left alone
    before = folder_hashes(tiny_base)
    assert fix_tokenizer(tiny_base, special_tokens={}, missing_pad_token="add") == {}
    assert folder_hashes(tiny_base) == before


def test_stages_that_pad_say_clearly_when_the_pad_token_is_missing(nopad_base):
    from asft.eval.benchmarks import load_problems
    from asft.eval.drift import drift
    from asft.eval.generation import Sampling, generate_hf, next_token_top_hf
    from asft.train.models import MissingPadTokenError
    from asft.train.data import pad_collator

    with pytest.raises(MissingPadTokenError, match="model.missing_pad_token"):
        pad_collator(None)
    with pytest.raises(MissingPadTokenError, match="no pad token"):
        generate_hf(nopad_base, ["1+1="], Sampling(), progress=False)
    with pytest.raises(MissingPadTokenError, match="no pad token"):
        next_token_top_hf(nopad_base, ["1+1="], progress=False)
    with pytest.raises(MissingPadTokenError, match="drift"):
        drift(nopad_base, nopad_base, load_problems("embedded_mul", {"split_seed": 0}, limit=2), template="plain")


def test_lora_on_the_resized_model_trains_merges_and_keeps_the_pad_row(tmp_path, nopad_base, tiny_dataset):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asft.train.merge import merge_adapter
    from asft.train.models import build_model
    from asft.train.trainer import train_run
    from tests.conftest import RUNTIME, train_settings

    base = tmp_path / "base"
    base.mkdir()
    build_model(LocalModel(path=str(nopad_base)), base, progress=False)
    # the tokenized set was made with the pad-less tokenizer: '[PAD]' only appends an id, the others are the same
    stats = train_run(train_settings("asft", max_steps=2), RUNTIME, model_dir=base, dataset_dir=tiny_dataset,
                      out_dir=tmp_path / "train", checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert stats["steps"] == 2
    merged = tmp_path / "merged"
    merged.mkdir()
    merge_adapter(tmp_path / "train" / "model", base, merged)
    assert AutoTokenizer.from_pretrained(merged).pad_token == "[PAD]"
    before = AutoModelForCausalLM.from_pretrained(base).get_input_embeddings().weight
    after = AutoModelForCausalLM.from_pretrained(merged).get_input_embeddings().weight
    assert after.shape == (261, before.shape[1]) and torch.equal(after, before)  # LoRA leaves embeddings frozen


# --- end to end: train, merge, eval by choice_logprobs, table -----------------------------------------

@pytest.fixture(scope="module")
def medical_run(tmp_path_factory, nopad_base) -> Path:
    from tests.test_workflow import snakemake

    workdir = tmp_path_factory.mktemp("medical_workflow")
    layer = workdir / "local_model.yaml"
    layer.write_text(f"model: {{local_path: {json.dumps(str(nopad_base))}}}\n")
    snakemake(workdir, "--configfile", str(MEDICAL_TINY), str(layer), "--cores", "2")
    return workdir


@pytest.mark.slow
def test_end_to_end_medical_tiny_run(medical_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = medical_run / "results"
    model_dir, = [p.parent for p in results.glob("model/*/manifest.json")]
    assert AutoTokenizer.from_pretrained(model_dir).pad_token == "[PAD]"
    stats = json.loads((model_dir / "stats.json").read_text())
    assert stats["tokenizer_fixes"]["embedding_rows"] == [260, 261]
    rows = AutoModelForCausalLM.from_pretrained(model_dir).get_input_embeddings().weight
    assert torch.allclose(rows[260], rows[:260].mean(0), atol=1e-6)
    scored = [p.parent for p in results.glob("score/*/manifest.json")]
    assert len(scored) == 3 * 2  # (base + sft + asft) x two benchmarks
    for folder in scored:
        scores = json.loads((folder / "scores.json").read_text())
        assert scores["scoring"] == "choice_logprobs" and scores["n_samples"] == 1 and scores["n_problems"] == 16
        assert scores["grading"] == {"method": "choose_letter"}
        generation = results / json.loads((folder / "manifest.json").read_text())["parents"]["samples"]
        prompts = [json.loads(line)["prompt"] for line in (generation / "samples.jsonl").read_text().splitlines()]
        samples = [json.loads(line) for line in (folder / "graded.jsonl").read_text().splitlines()]
        assert len(samples) == len(prompts) == 16
        for sample, prompt in zip(samples, prompts):
            assert sample["predicted"] in "ABCD" and sample["gold"] in "ABCD"
            assert sample["correct"] == (sample["predicted"] == sample["gold"])
            assert prompt.startswith("Question: ") and prompt.endswith("\n\nAnswer:")
    with open(results / "table.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [row["mode"] for row in table] == ["base", "sft", "asft"]
    for row in table:
        assert 0.0 <= float(row["embedded_mul_choice_mean"]) <= 100.0
        assert 0.0 <= float(row["embedded_add_choice_mean"]) <= 100.0
