"""The `eval` stage: generate, grade, score one (model, benchmark) pair.

Writes `samples.jsonl` (prompt, completion, extracted answer, gold, correct) and `scores.json`:
accuracy = mean correctness over all samples (avg@n, the paper's `mean_acc`), pass@1 of sample 0,
pass@n, and, when asked, drift = mean per-token KL(base || model) on the gold solutions
(teacher-forced), a measure of how far fine-tuning moved the model on text it was not trained on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from asft.benchmarks import Problem, load_problems
from asft.generation import Sampling, generate
from asft.grading import extract_answer, grade_many
from asft.templates import STOP_STRINGS, eval_prompt, training_prompt


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

    from asft.chunked_loss import chunked_loss
    from asft.data import IGNORE
    from asft.trainer import capture_hidden

    rows = [p for p in problems if p.solution][:max_problems]
    if not rows:
        return None
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    batch_size = batch_size or (8 if cuda else 64)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
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
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
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


def run_eval(settings: Mapping[str, Any], runtime: Mapping[str, Any], *, model_dir: Path, out_dir: Path,
             base_dir: Path | None = None, threads: int = 1, progress: bool = True) -> dict[str, Any]:
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    started = time.time()
    bench = settings["benchmark"]["name"]
    problems = load_problems(bench, settings.get("context"), settings.get("limit"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = settings["template"]
    prompts = [eval_prompt(template, p.question, tokenizer) for p in problems]
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
    scores: dict[str, Any] = {
        "benchmark": bench,
        **score(correct),
        "n_problems": len(problems),
        "n_samples": sampling.n,
        "generation_seconds": round(generated_s, 3),
        "tokens_per_second": round(new_tokens / generated_s, 1) if generated_s > 0 else None,
    }
    if settings.get("drift") and base_dir is not None:
        scores["drift"] = drift(model_dir, base_dir, problems, template=template)
    scores["wall_seconds"] = round(time.time() - started, 3)
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    return scores
