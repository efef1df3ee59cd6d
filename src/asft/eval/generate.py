"""The `generate` stage: a model's samples on one benchmark (the GPU part of evaluation).

Writes `samples.jsonl`, one row per sample (problem index, sample index, prompt, completion, gold),
and `generation.json` (what was generated: benchmark, counts, throughput, and, when asked, drift =
mean per-token KL(base || model) on the gold solutions, teacher-forced: how far fine-tuning moved the
model on text it was not trained on). Nothing here judges an answer: that is the `score` stage
(asft.eval.score), so a change of grading policy never regenerates a sample.

Scoring `choice_logprobs` (multiple choice, upstream eval/medeval/vllm_medical_test.py) generates
one token: each row records the top next-token log-probabilities and the option letters, from which
the score stage picks the answer (`asft.eval.score.choose_letter`).

A judged benchmark (AlpacaEval) also gets `model_outputs.json`, the outputs in alpaca-eval's format
(asft.eval.judge.outputs), named after the run (`generator`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from asft.core.job import StageJob
from asft.eval.benchmarks import Problem, file_provenance, get_benchmark, load_problems
from asft.eval.drift import drift
from asft.eval.generation import NextToken, Sampling, generate, next_token_top
from asft.eval.settings import GenerateRuntime, GenerateSettings
from asft.train.templates import STOP_STRINGS, problem_prompt

SAMPLES = "samples.jsonl"
GENERATION = "generation.json"


def _source_file(settings: GenerateSettings, bench: str) -> dict[str, Any] | None:
    """The local benchmark file and what it is known to be (e.g. upstream's own test_data)."""
    context = settings.context
    if not context.local_file:
        return None
    sha256 = context.local_sha256
    return {"path": context.local_file, "sha256": sha256,
            "provenance": file_provenance(bench, sha256) or "local copy (not a known file)"}


def _sample_completions(settings: GenerateSettings, runtime: GenerateRuntime, problems: list[Problem],
                        prompts: list[str], tokenizer: Any, model_dir: Path, out_dir: Path,
                        progress: bool) -> dict[str, Any]:
    """Scoring `generate`: n completions per prompt."""
    started = time.time()
    sampling = Sampling(
        n=settings.n_samples, temperature=settings.temperature, top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens, stop=tuple(STOP_STRINGS[settings.template] + list(settings.stop)),
        seed=settings.seed,
    )
    completions = generate(model_dir, prompts, sampling, backend=settings.backend, batch_size=runtime.batch_size,
                           tensor_parallel=runtime.tensor_parallel, progress=progress)
    generated_s = time.time() - started
    new_tokens = 0
    with open(out_dir / SAMPLES, "w", encoding="utf-8") as handle:
        for index, (problem, prompt, samples) in enumerate(zip(problems, prompts, completions)):
            for sample_index, completion in enumerate(samples):
                new_tokens += len(tokenizer(completion, add_special_tokens=False)["input_ids"])
                handle.write(json.dumps({"problem": index, "sample": sample_index, "prompt": prompt,
                                         "completion": completion, "gold": problem.gold}, ensure_ascii=False) + "\n")
    return {
        "n_problems": len(problems),
        "n_samples": sampling.n,
        "generation_seconds": round(generated_s, 3),
        "tokens_per_second": round(new_tokens / generated_s, 1) if generated_s > 0 else None,
    }


def _next_tokens(settings: GenerateSettings, runtime: GenerateRuntime, problems: list[Problem],
                 prompts: list[str], model_dir: Path, out_dir: Path, progress: bool) -> dict[str, Any]:
    """Scoring `choice_logprobs`: the top next-token log-probabilities after each prompt, one row per problem."""
    started = time.time()
    tokens: list[NextToken] = next_token_top(
        model_dir, prompts, backend=settings.backend, batch_size=runtime.batch_size,
        tensor_parallel=runtime.tensor_parallel, seed=settings.seed, progress=progress)
    scored_s = time.time() - started
    with open(out_dir / SAMPLES, "w", encoding="utf-8") as handle:
        for index, (problem, prompt, token) in enumerate(zip(problems, prompts, tokens)):
            if problem.choices is None:  # config validation keeps these out; a clear error if one slips in
                raise ValueError(f"scoring 'choice_logprobs': benchmark '{settings.benchmark.name}' has a "
                                 "problem without options")
            handle.write(json.dumps({
                "problem": index, "sample": 0, "prompt": prompt, "completion": token.completion,
                "top_tokens": [[text, round(logprob, 6)] for _, text, logprob in token.top],
                "letters": list(problem.choices.letters), "gold": problem.choices.gold,
            }, ensure_ascii=False) + "\n")
    return {
        "n_problems": len(problems),
        "n_samples": 1,
        "generation_seconds": round(scored_s, 3),
        "prompts_per_second": round(len(prompts) / scored_s, 1) if scored_s > 0 else None,
    }


def run_generate(settings: GenerateSettings, runtime: GenerateRuntime, *, model_dir: Path, out_dir: Path,
                 base_dir: Path | None = None, threads: int = 1, progress: bool = True,
                 generator: str = "model") -> dict[str, Any]:
    """Write samples.jsonl and generation.json into `out_dir`; returns what generation.json holds."""
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    started = time.time()
    bench = settings.benchmark.name
    problems = load_problems(bench, settings.context.model_dump(exclude_none=True), settings.limit)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [problem_prompt(settings.template, p, tokenizer) for p in problems]
    if get_benchmark(bench).code is not None:  # EvalPlus's prompt forms (asft.eval.code.prompts)
        from asft.eval.code.prompts import code_prompt

        prompts = [code_prompt(settings.template, p.question, tokenizer) for p in problems]
    generation: dict[str, Any] = {"benchmark": bench, "scoring": settings.scoring}
    source = _source_file(settings, bench)
    if source:
        generation["benchmark_file"] = source
    if settings.scoring == "choice_logprobs":
        generation.update(_next_tokens(settings, runtime, problems, prompts, model_dir, out_dir, progress))
    elif settings.scoring == "generate":
        generation.update(_sample_completions(settings, runtime, problems, prompts, tokenizer, model_dir, out_dir,
                                              progress))
    else:
        raise ValueError(f"unknown eval scoring '{settings.scoring}'; known: generate, choice_logprobs")
    if get_benchmark(bench).judged and settings.scoring == "generate":
        from asft.eval.judge.outputs import write_model_outputs

        generation["model_outputs"] = write_model_outputs(out_dir / SAMPLES, out_dir, generator)
    if settings.drift and base_dir is not None:
        generation["drift"] = drift(model_dir, base_dir, problems, template=settings.template)
    generation["wall_seconds"] = round(time.time() - started, 3)
    (out_dir / GENERATION).write_text(json.dumps(generation, indent=2) + "\n")
    return generation


def run_generate_stage(job: StageJob) -> dict[str, Any]:
    """The `generate` stage's runner (asft.workflow.stages): the model, and the base for drift."""
    from asft.eval.judge.outputs import run_name

    base = job.weights("base") if "base" in job.parents else None
    return run_generate(job.settings, job.runtime, model_dir=job.weights("model"), out_dir=job.out, base_dir=base,
                        threads=job.threads, generator=run_name(job.labels))
