"""The `eval` stage: generate, grade, score one (model, benchmark) pair.

Writes `samples.jsonl` (prompt, completion, extracted answer, gold, correct) and `scores.json`:
accuracy = mean correctness over all samples (avg@n, the paper's `mean_acc`), pass@1 of sample 0,
pass@n, and, when asked, drift = mean per-token KL(base || model) on the gold solutions
(teacher-forced), a measure of how far fine-tuning moved the model on text it was not trained on.

Scoring `choice_logprobs` (multiple choice, upstream eval/medeval/vllm_medical_test.py) generates
nothing: the answer is the option letter most likely as the first generated token (`choose_letter`),
and each row of `samples.jsonl` records the letters' log-probabilities and the predicted letter.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asft.eval.benchmarks import Problem, file_provenance, load_problems
from asft.eval.generation import NextToken, Sampling, generate, next_token_top
from asft.eval.grading import extract_answer, grade_many
from asft.train.templates import STOP_STRINGS, problem_prompt, training_prompt


def score(correct: Sequence[Sequence[bool]]) -> dict[str, float]:
    """avg@n (mean over all samples), pass@1 (first sample), pass@n (any sample)."""
    if not correct:
        raise ValueError("no problems were evaluated")
    flat = [c for row in correct for c in row]
    return {
        "accuracy": 100.0 * sum(flat) / len(flat),
        "pass@1": 100.0 * sum(row[0] for row in correct) / len(correct),
        f"pass@{len(correct[0])}": 100.0 * sum(any(row) for row in correct) / len(correct),
    }


@torch.no_grad()
def drift(model_dir: Path, base_dir: Path, problems: Sequence[Problem], *, template: str,
          batch_size: int | None = None, max_problems: int = 256) -> float | None:
    """Mean per-token KL(base || model) over the gold solution tokens of the problems (teacher-forced).

    KL(base || model) is the KL term of `sft+kl` with the base as reference, so the chunked loss
    computes it from hidden states without ever holding [tokens, vocab] logits: it fits 7B models.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asft.train.chunked_loss import chunked_loss
    from asft.train.data import IGNORE
    from asft.train.models import require_pad_token_id
    from asft.train.trainer import capture_hidden

    rows = [p for p in problems if p.solution][:max_problems]
    if not rows:
        return None
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    batch_size = batch_size or (8 if cuda else 64)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = require_pad_token_id(tokenizer, f"drift of {model_dir}")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device).eval()
    limit = getattr(model.config, "max_position_embeddings", 4096)
    prompt_template = template if template != "cot" else "plain"
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        encoded = []
        for problem in batch:
            prompt = tokenizer(training_prompt(prompt_template, problem.question, tokenizer),
                               add_special_tokens=False)["input_ids"]
            answer = tokenizer(problem.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            encoded.append(((prompt + answer)[:limit], ([IGNORE] * len(prompt) + answer)[:limit]))
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, (seq, lab) in enumerate(encoded):
            ids[i, : len(seq)], labels[i, : len(lab)], attention[i, : len(seq)] = (
                torch.tensor(seq), torch.tensor(lab), 1)
        inputs = {"input_ids": ids.to(device), "attention_mask": attention.to(device)}
        hidden = {}
        for name, net in (("model", model), ("base", base)):
            with capture_hidden(net) as store:
                net(**inputs, logits_to_keep=1)
            hidden[name] = store["hidden"]
        terms = chunked_loss(hidden["model"], model.get_output_embeddings().weight, labels.to(device), "sft+kl",
                             ref_hidden=hidden["base"], ref_head_weight=base.get_output_embeddings().weight,
                             kl_weight=1.0)
        total += float(terms.kl) * terms.n_tokens
        count += terms.n_tokens
    return total / count if count else None


UPSTREAM_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class LetterChoice:
    """The letter chosen for one multiple-choice problem, and why."""

    letter: str
    letter_logprobs: dict[str, float]  # the best log-probability of each letter among the top tokens
    source: str  # logprobs: among the top tokens; text: found in the generated text; default: neither, 'A'


def choose_letter(top: Sequence[tuple[str, float]], completion: str,
                  letters: Sequence[str] = UPSTREAM_LETTERS) -> LetterChoice:
    """Upstream medeval's rule for the chosen option.

    Each top token (decoded text, log-probability) that is a letter after `.strip().upper()` votes
    for it with its log-probability, the best one per letter (' A' and 'A' are two tokens of one
    letter); the letter with the highest wins (the first seen on a tie). If no top token is a letter,
    the generated text decides: the first of the letters, in letter order, found in
    `completion.strip().upper()`; else 'A'.
    """
    best: dict[str, float] = {}
    for text, logprob in top:
        letter = text.strip().upper()
        if letter in letters and logprob > best.get(letter, -math.inf):
            best[letter] = logprob
    if best:
        return LetterChoice(max(best, key=best.__getitem__), best, "logprobs")
    response = completion.strip().upper()
    for letter in letters:
        if letter in response:
            return LetterChoice(letter, best, "text")
    return LetterChoice("A", best, "default")


def _source_file(settings: Mapping[str, Any], bench: str) -> dict[str, Any] | None:
    """The local benchmark file and what it is known to be (e.g. upstream's own test_data)."""
    context = settings.get("context") or {}
    if not context.get("local_file"):
        return None
    sha256 = context.get("local_sha256")
    return {"path": context["local_file"], "sha256": sha256,
            "provenance": file_provenance(bench, sha256) or "local copy (not a known file)"}


def _generate_and_grade(settings: Mapping[str, Any], runtime: Mapping[str, Any], problems: list[Problem],
                        prompts: list[str], tokenizer: Any, model_dir: Path, out_dir: Path,
                        progress: bool) -> dict[str, Any]:
    """Scoring `generate`: n completions per prompt, each graded against the gold answer."""
    started = time.time()
    template = settings["template"]
    sampling = Sampling(
        n=settings["n_samples"], temperature=settings["temperature"], top_p=settings["top_p"],
        max_new_tokens=settings["max_new_tokens"], stop=tuple(STOP_STRINGS[template] + list(settings["stop"])),
        seed=settings["seed"],
    )
    completions = generate(model_dir, prompts, sampling, backend=settings["backend"],
                           batch_size=int(runtime.get("batch_size", 64)),
                           tensor_parallel=int(runtime.get("tensor_parallel", 1)), progress=progress)
    generated_s = time.time() - started
    pairs = [(c, p.gold) for p, samples in zip(problems, completions) for c in samples]
    verdicts = grade_many(pairs)
    correct, index = [], 0
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as handle:
        for problem, prompt, samples in zip(problems, prompts, completions):
            row = []
            for sample_index, completion in enumerate(samples):
                verdict = bool(verdicts[index])
                index += 1
                row.append(verdict)
                handle.write(json.dumps({
                    "prompt": prompt, "sample": sample_index, "completion": completion,
                    "extracted": extract_answer(completion), "gold": problem.gold, "correct": verdict,
                }, ensure_ascii=False) + "\n")
            correct.append(row)
    new_tokens = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c, _ in pairs)
    return {
        **score(correct),
        "n_problems": len(problems),
        "n_samples": sampling.n,
        "generation_seconds": round(generated_s, 3),
        "tokens_per_second": round(new_tokens / generated_s, 1) if generated_s > 0 else None,
    }


def _choose_letters(settings: Mapping[str, Any], runtime: Mapping[str, Any], problems: list[Problem],
                    prompts: list[str], model_dir: Path, out_dir: Path, progress: bool) -> dict[str, Any]:
    """Scoring `choice_logprobs`: the letter of the most likely first token, one answer per problem."""
    started = time.time()
    tokens: list[NextToken] = next_token_top(
        model_dir, prompts, backend=settings["backend"], batch_size=int(runtime.get("batch_size", 64)),
        tensor_parallel=int(runtime.get("tensor_parallel", 1)), seed=int(settings.get("seed", 0)), progress=progress)
    scored_s = time.time() - started
    correct: list[list[bool]] = []
    sources = {"logprobs": 0, "text": 0, "default": 0}
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as handle:
        for problem, prompt, token in zip(problems, prompts, tokens):
            if problem.choices is None:  # config validation keeps these out; a clear error if one slips in
                raise ValueError(f"scoring 'choice_logprobs': benchmark '{settings['benchmark']['name']}' has a "
                                 "problem without options")
            choice = choose_letter([(text, logprob) for _, text, logprob in token.top], token.completion,
                                   problem.choices.letters)
            verdict = choice.letter == problem.choices.gold
            sources[choice.source] += 1
            correct.append([verdict])
            handle.write(json.dumps({
                "prompt": prompt, "sample": 0, "completion": token.completion,
                "top_tokens": [[text, round(logprob, 6)] for _, text, logprob in token.top],
                "letter_logprobs": {k: round(v, 6) for k, v in choice.letter_logprobs.items()},
                "predicted": choice.letter, "predicted_from": choice.source, "extracted": choice.letter,
                "gold": problem.choices.gold, "correct": verdict,
            }, ensure_ascii=False) + "\n")
    return {
        **score(correct),
        "n_problems": len(problems),
        "n_samples": 1,
        "predicted_from": sources,
        "generation_seconds": round(scored_s, 3),
        "prompts_per_second": round(len(prompts) / scored_s, 1) if scored_s > 0 else None,
    }


def run_eval(settings: Mapping[str, Any], runtime: Mapping[str, Any], *, model_dir: Path, out_dir: Path,
             base_dir: Path | None = None, threads: int = 1, progress: bool = True) -> dict[str, Any]:
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    started = time.time()
    bench = settings["benchmark"]["name"]
    problems = load_problems(bench, settings.get("context"), settings.get("limit"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = settings["template"]
    prompts = [problem_prompt(template, p, tokenizer) for p in problems]
    scoring = settings.get("scoring", "generate")  # absent means generate (plan.eval_settings)
    scores: dict[str, Any] = {"benchmark": bench}
    source = _source_file(settings, bench)
    if source:
        scores["benchmark_file"] = source
    if scoring == "choice_logprobs":
        scores.update(scoring=scoring, **_choose_letters(settings, runtime, problems, prompts, model_dir, out_dir,
                                                         progress))
    elif scoring == "generate":
        scores.update(_generate_and_grade(settings, runtime, problems, prompts, tokenizer, model_dir, out_dir,
                                          progress))
    else:
        raise ValueError(f"unknown eval scoring '{scoring}'; known: generate, choice_logprobs")
    if settings.get("drift") and base_dir is not None:
        scores["drift"] = drift(model_dir, base_dir, problems, template=template)
    scores["wall_seconds"] = round(time.time() - started, 3)
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    return scores
