"""The `score` stage: judge one generation's samples (CPU, seconds; no model is loaded).

Reads the parent generation's `samples.jsonl` and `generation.json` (verified against its manifest
before this runs) and writes `graded.jsonl` (per sample: the answer the policy extracted and the
verdict) and `scores.json`: accuracy = mean correctness over all samples (avg@n, the paper's
`mean_acc`), pass@1 of sample 0 and pass@n, with the grading policy and its version that made them,
beside what generation.json recorded (counts, throughput, drift).

Method `grade`: each completion against its gold by a named grading policy (asft.eval.grading).
Method `choose_letter`: multiple choice, upstream medeval's letter rule over the recorded top
next-token log-probabilities (`choose_letter`); no grading policy is involved.
Method `execute` (code benchmarks): each sample's program run against its task's tests by EvalPlus in
a sandbox (asft.eval.code.scoring); accuracy is pass@1 with greedy decoding.
Method `judge` (AlpacaEval 2): the generation's outputs against reference outputs by a judge model
(asft.eval.judge.score); accuracy is the length-controlled win rate.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asft.core.job import StageJob
from asft.eval.generate import GENERATION, SAMPLES
from asft.eval.settings import ScoreRuntime, ScoreSettings

GRADED = "graded.jsonl"
SCORES = "scores.json"
UPSTREAM_LETTERS = ("A", "B", "C", "D")


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


def _rows(samples: Path) -> Iterator[dict[str, Any]]:
    with open(samples, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
                row = {**row, "problem": int(row["problem"]), "sample": int(row["sample"])}
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{samples}, line {number}: not a sample row ({error}); the generation is "
                                 "damaged: run `asft verify --fix`, then the same snakemake command") from None
            yield row


def _by_problem(verdicts: Sequence[tuple[int, int, bool]]) -> list[list[bool]]:
    """Verdicts grouped per problem, in sample order (samples.jsonl is written that way; sorting keeps it so)."""
    problems: dict[int, list[tuple[int, bool]]] = {}
    for problem, sample, correct in verdicts:
        problems.setdefault(problem, []).append((sample, correct))
    return [[correct for _, correct in sorted(problems[p])] for p in sorted(problems)]


def _grade(rows: list[dict[str, Any]], policy: str, handle: Any) -> tuple[list[tuple[int, int, bool]], dict]:
    from asft.eval.grading import extract_answer, grade_many

    verdicts = grade_many(((row["completion"], row["gold"]) for row in rows), policy=policy)
    out = []
    for row, verdict in zip(rows, verdicts, strict=True):
        out.append((row["problem"], row["sample"], bool(verdict)))
        handle.write(json.dumps({"problem": row["problem"], "sample": row["sample"],
                                 "extracted": extract_answer(row["completion"], policy=policy),
                                 "gold": row["gold"], "correct": bool(verdict)}, ensure_ascii=False) + "\n")
    return out, {}


def _choose(rows: list[dict[str, Any]], handle: Any) -> tuple[list[tuple[int, int, bool]], dict]:
    out, sources = [], {"logprobs": 0, "text": 0, "default": 0}
    for row in rows:
        choice = choose_letter([(text, logprob) for text, logprob in row["top_tokens"]], row["completion"],
                               row.get("letters") or UPSTREAM_LETTERS)
        verdict = choice.letter == row["gold"]
        sources[choice.source] += 1
        out.append((row["problem"], row["sample"], verdict))
        handle.write(json.dumps({
            "problem": row["problem"], "sample": row["sample"],
            "letter_logprobs": {k: round(v, 6) for k, v in choice.letter_logprobs.items()},
            "predicted": choice.letter, "predicted_from": choice.source, "extracted": choice.letter,
            "gold": row["gold"], "correct": verdict,
        }, ensure_ascii=False) + "\n")
    return out, {"predicted_from": sources}


def _judge(settings: ScoreSettings, runtime: ScoreRuntime | None, samples_dir: Path, out_dir: Path) -> dict[str, Any]:
    from asft.eval.judge.score import run_judge
    from asft.eval.settings import JudgeRuntime

    if settings.judge is None:
        raise ValueError("score method 'judge' needs its judge settings")
    judge_runtime = (runtime.judge if runtime is not None else None) or JudgeRuntime()
    with open(out_dir / GRADED, "w", encoding="utf-8") as handle:
        return run_judge(settings.judge, judge_runtime, samples_dir=samples_dir, graded=handle, log_dir=out_dir)


def _execute(settings: ScoreSettings, rows: list[dict[str, Any]], handle: Any) -> tuple[list[tuple[int, int, bool]],
                                                                                      dict]:
    from asft.eval.code.scoring import execute

    if settings.execute is None:
        raise ValueError("score method 'execute' needs its execute settings")
    return execute(rows, settings.execute, handle)


def run_score(settings: ScoreSettings, *, samples_dir: Path, out_dir: Path,
              runtime: ScoreRuntime | None = None) -> dict[str, Any]:
    """Write graded.jsonl and scores.json into `out_dir`; returns the scores."""
    started = time.time()
    generation = json.loads((samples_dir / GENERATION).read_text())
    if settings.method == "judge":
        scores = {**generation, **_judge(settings, runtime, samples_dir, out_dir),
                  "scoring_seconds": round(time.time() - started, 3)}
        (out_dir / SCORES).write_text(json.dumps(scores, indent=2) + "\n")
        return scores
    rows = list(_rows(samples_dir / SAMPLES))
    with open(out_dir / GRADED, "w", encoding="utf-8") as handle:
        if settings.method == "choose_letter":
            verdicts, extra = _choose(rows, handle)
            grading: dict[str, Any] = {"method": "choose_letter"}
        elif settings.method == "execute":
            verdicts, extra = _execute(settings, rows, handle)
            grading = {"method": "execute", **settings.execute.model_dump(exclude_none=True)}
        else:
            if settings.policy is None:
                raise ValueError("score method 'grade' needs a grading policy")
            verdicts, extra = _grade(rows, settings.policy.name, handle)
            grading = {"method": "grade", "policy": settings.policy.name, "policy_version": settings.policy.version}
    scores = {**generation, **score(_by_problem(verdicts)), **extra, "grading": grading,
              "scoring_seconds": round(time.time() - started, 3)}
    (out_dir / SCORES).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def run_score_stage(job: StageJob) -> dict[str, Any]:
    """The `score` stage's runner (asft.workflow.stages): the generation it judges."""
    return run_score(job.settings, samples_dir=job.parents["samples"], out_dir=job.out, runtime=job.runtime)
