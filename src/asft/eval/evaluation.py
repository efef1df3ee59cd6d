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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asft.core.job import StageJob
from asft.eval.settings import EvalRuntime, EvalSettings
from asft.eval.benchmarks import Problem, file_provenance, load_problems
from asft.eval.drift import drift
from asft.eval.generation import NextToken, Sampling, generate, next_token_top
from asft.eval.grading import extract_answer, grade_many
from asft.train.templates import STOP_STRINGS, problem_prompt


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


def _source_file(settings: EvalSettings, bench: str) -> dict[str, Any] | None:
    """The local benchmark file and what it is known to be (e.g. upstream's own test_data)."""
    context = settings.context
    if not context.local_file:
        return None
    sha256 = context.local_sha256
    return {"path": context.local_file, "sha256": sha256,
            "provenance": file_provenance(bench, sha256) or "local copy (not a known file)"}


def _generate_and_grade(settings: EvalSettings, runtime: EvalRuntime, problems: list[Problem],
                        prompts: list[str], tokenizer: Any, model_dir: Path, out_dir: Path,
                        progress: bool) -> dict[str, Any]:
    """Scoring `generate`: n completions per prompt, each graded against the gold answer."""
    started = time.time()
    template = settings.template
    sampling = Sampling(
        n=settings.n_samples, temperature=settings.temperature, top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens, stop=tuple(STOP_STRINGS[template] + list(settings.stop)),
        seed=settings.seed,
    )
    completions = generate(model_dir, prompts, sampling, backend=settings.backend, batch_size=runtime.batch_size,
                           tensor_parallel=runtime.tensor_parallel, progress=progress)
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


def _choose_letters(settings: EvalSettings, runtime: EvalRuntime, problems: list[Problem],
                    prompts: list[str], model_dir: Path, out_dir: Path, progress: bool) -> dict[str, Any]:
    """Scoring `choice_logprobs`: the letter of the most likely first token, one answer per problem."""
    started = time.time()
    tokens: list[NextToken] = next_token_top(
        model_dir, prompts, backend=settings.backend, batch_size=runtime.batch_size,
        tensor_parallel=runtime.tensor_parallel, seed=settings.seed, progress=progress)
    scored_s = time.time() - started
    correct: list[list[bool]] = []
    sources = {"logprobs": 0, "text": 0, "default": 0}
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as handle:
        for problem, prompt, token in zip(problems, prompts, tokens):
            if problem.choices is None:  # config validation keeps these out; a clear error if one slips in
                raise ValueError(f"scoring 'choice_logprobs': benchmark '{settings.benchmark.name}' has a "
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


def run_eval(settings: EvalSettings, runtime: EvalRuntime, *, model_dir: Path, out_dir: Path,
             base_dir: Path | None = None, threads: int = 1, progress: bool = True) -> dict[str, Any]:
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    started = time.time()
    bench = settings.benchmark.name
    problems = load_problems(bench, settings.context.model_dump(exclude_none=True), settings.limit)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = settings.template
    prompts = [problem_prompt(template, p, tokenizer) for p in problems]
    scoring = settings.scoring
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
    if settings.drift and base_dir is not None:
        scores["drift"] = drift(model_dir, base_dir, problems, template=template)
    scores["wall_seconds"] = round(time.time() - started, 3)
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def run_eval_stage(job: StageJob) -> dict[str, Any]:
    """The `eval` stage's runner (asft.workflow.stages): the model, and the base for drift."""
    base = job.weights("base") if "base" in job.parents else None
    return run_eval(job.settings, job.runtime, model_dir=job.weights("model"), out_dir=job.out, base_dir=base,
                    threads=job.threads)
