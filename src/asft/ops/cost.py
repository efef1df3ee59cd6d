"""What a configuration costs before it runs: jobs, tokens, FLOPs and GPU-hours per stage.

Estimates, with every assumption printed:
- training FLOPs = 6 x params x tokens for full fine-tuning, 4 x params x tokens for LoRA (no weight
  gradients of the frozen base), plus 2 x params x tokens for the reference forward of modes that
  need one (sft+kl, asft, sft-lr, iw-sft: every mode whose `needs_reference` is set);
- generation FLOPs = 2 x params x (prompt + completion tokens) per sample, with an assumed completion
  length (generation is memory-bound, so it gets a lower assumed utilisation);
- training tokens: exact from a cached tokenize artifact (stats.json), else rows x bytes per row /
  3.6 bytes per token for the paper's files (their sizes are pinned), else 400 tokens per row;
- GPU-hours = FLOPs / (peak bf16 FLOP/s x utilisation).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asft.train.data import known_file
from asft.train.modes import get_mode
from asft.train.settings import EmbeddedData, HubData, LocalData
from asft.workflow.artifacts import MANIFEST, Node, artifact_dir
from asft.workflow.config import Config
from asft.workflow.plan import Plan
from asft.workflow.stages import STAGE_NAMES

#: Parameter counts of common base models (from their published configs).
KNOWN_PARAMS = {
    "Qwen/Qwen2.5-0.5B": 0.494e9, "Qwen/Qwen2.5-1.5B": 1.54e9, "Qwen/Qwen2.5-3B": 3.09e9,
    "Qwen/Qwen2.5-7B": 7.62e9, "Qwen/Qwen2.5-14B": 14.8e9, "Qwen/Qwen2.5-Math-7B": 7.62e9,
    "meta-llama/Llama-2-7b-hf": 6.74e9, "meta-llama/Meta-Llama-3-8B": 8.03e9,
}
BYTES_PER_TOKEN = 3.6
DEFAULT_TOKENS_PER_ROW = 400


@dataclass(frozen=True)
class Assumptions:
    peak_flops: float = 989e12  # H100 SXM dense bf16
    train_utilisation: float = 0.40
    generation_utilisation: float = 0.10
    completion_tokens: int = 600  # assumed mean completion length (capped by max_new_tokens)
    prompt_tokens: int = 200


def qwen2_params(cfg: dict[str, Any]) -> float:
    """Parameters of a Qwen2/LLaMA-style config (attention with biases on q,k,v; gated MLP)."""
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    kv_dim = h // heads * kv
    attention = h * h + 2 * h * kv_dim + h * h + h + 2 * kv_dim
    per_layer = attention + 3 * h * i + 2 * h
    embeddings = cfg["vocab_size"] * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + h


def model_params(config: Config) -> float:
    model = config.model
    if model.source == "embedded":
        spec = model.embedded
        return qwen2_params({"hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
                             "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
                             "num_key_value_heads": spec.num_kv_heads, "vocab_size": 260,
                             "tie_word_embeddings": spec.tie_embeddings})
    folder = Path(model.local_path) if model.local_path else None
    if folder and (folder / "config.json").is_file():
        return qwen2_params(json.loads((folder / "config.json").read_text()))
    if model.id in KNOWN_PARAMS:
        return KNOWN_PARAMS[model.id]
    raise ValueError(f"cost: unknown size of model '{model.id}'; give model.local_path with a config.json")


def dataset_rows(data: EmbeddedData | HubData | LocalData) -> float:
    """Rows of a training set from its data settings: the subsample size, else the embedded split,
    else the pinned row count of a paper file, else an assumed 10,000."""
    if data.size:
        return float(data.size)
    if isinstance(data, EmbeddedData):
        from asft.embedded.tasks import split

        return float(len(split(data.task, data.split_seed)[0]))
    entry = known_file(data.repo, data.filename) if isinstance(data, HubData) else None
    return float(entry.rows) if entry and entry.rows else 10000.0


def dataset_tokens(plan: Plan, train_node: Node, results: Path) -> tuple[float, float, str]:
    """Rows and tokens of a run's training set, and how the tokens were obtained."""
    tokenize = plan.parent(train_node, "tokenize")
    data = plan.parent(tokenize, "data").settings
    rows = dataset_rows(data)
    stats = artifact_dir(results, "tokenize", tokenize.key) / "stats.json"
    if stats.is_file():
        exact = json.loads(stats.read_text())
        return float(exact["examples"]), float(exact["tokens"]), "exact (cached tokenize)"
    if isinstance(data, EmbeddedData):
        return rows, rows * 24.0, "embedded rows x 24 tokens"
    entry = known_file(data.repo, data.filename) if isinstance(data, HubData) else None
    if entry and entry.rows:
        return rows, rows * entry.bytes / entry.rows / BYTES_PER_TOKEN, f"{entry.filename}: bytes / {BYTES_PER_TOKEN}"
    return rows, rows * float(DEFAULT_TOKENS_PER_ROW), f"{rows:.0f} rows x {DEFAULT_TOKENS_PER_ROW} tokens (assumed)"


def estimate(plan: Plan, results: Path, assumptions: Assumptions = Assumptions()) -> dict[str, Any]:
    """Per-stage jobs, cached jobs, tokens, FLOPs and GPU-hours of a plan."""
    from asft.eval.benchmarks import load_problems

    from asft.workflow.sweeps import sweep_points

    # each base model's size (a sweep may change the model: one per point's model node)
    sizes = {_model_key(point.config): model_params(point.config) for point in sweep_points(plan.config)}
    params = next(iter(sizes.values()))
    stages: dict[str, dict[str, float]] = {}
    counts, cached = Counter(), Counter()
    done = set()
    for node in plan.iter_nodes():
        counts[node.stage] += 1
        if (artifact_dir(results, node.stage, node.key) / MANIFEST).exists():
            cached[node.stage] += 1
            done.add(node.key)
    notes = []
    train_tokens = train_flops = 0.0
    for node in plan.nodes.get("train", {}).values():
        rows, tokens, how = dataset_tokens(plan, node, results)
        settings = node.settings
        if settings.max_steps:
            tokens = tokens / rows * settings.max_steps * settings.global_batch_size
        else:
            tokens *= settings.epochs
        per_token = 6 if settings.method == "full" else 4
        if get_mode(settings.mode).needs_reference:
            per_token += 2
        train_tokens += tokens
        train_flops += 0.0 if node.key in done else per_token * sizes[_base_model(plan, node).key] * tokens
        notes.append(how)
    gen_tokens = gen_flops = 0.0
    problems_cache: dict[str, float] = {}
    unknown: list[str] = []
    for node in plan.nodes.get("generate", {}).values():
        settings = node.settings
        name = settings.benchmark.name
        if name not in problems_cache:
            try:
                problems_cache[name] = len(load_problems(name, settings.context.model_dump(exclude_none=True),
                                                         settings.limit))
            except (RuntimeError, OSError, ValueError) as error:
                # a hub benchmark offline and not in the cache: its cost is unknown, the rest of the plan is not
                problems_cache[name] = math.nan
                unknown.append(f"{name}: its rows could not be read ({str(error).splitlines()[0]})")
        completion = min(settings.max_new_tokens, assumptions.completion_tokens)
        samples = problems_cache[name] * settings.n_samples
        tokens = samples * (assumptions.prompt_tokens + completion)
        gen_tokens += tokens
        gen_flops += 0.0 if node.key in done else 2 * sizes[_base_model(plan, node).key] * tokens
    gpu_hours = {
        "train": train_flops / (assumptions.peak_flops * assumptions.train_utilisation) / 3600,
        "generate": gen_flops / (assumptions.peak_flops * assumptions.generation_utilisation) / 3600,
    }
    for stage in counts:
        stages[stage] = {"jobs": counts[stage], "cached": cached[stage]}
    stages.setdefault("train", {}).update(tokens=train_tokens, flops=train_flops, gpu_hours=gpu_hours["train"])
    stages.setdefault("generate", {}).update(tokens=gen_tokens, flops=gen_flops, gpu_hours=gpu_hours["generate"])
    if plan.nodes.get("rl"):
        unknown.append("rl: not estimated (generation-bound; see docs/rl.md)")
    return {"params": params, "model_params": sorted(set(sizes.values())), "stages": stages,
            "token_sources": sorted(set(notes)), "assumptions": assumptions, "unknown": unknown}


def _model_key(config: Config) -> str:
    from asft.workflow.plan import _node, model_settings

    return _node("model", model_settings(config), {}).key


def _base_model(plan: Plan, node: Node) -> Node:
    """The base model a train or generate node descends from (by the `model` parents)."""
    while node.stage != "model":
        node = plan.parent(node, "model")
    return node


def format_estimate(result: dict[str, Any]) -> str:
    a: Assumptions = result["assumptions"]
    sizes = result.get("model_params") or [result["params"]]
    lines = [f"model parameters: {', '.join(f'{size / 1e9:.3g} B' for size in sizes)}", "",
             f"{'stage':<10} {'jobs':>5} {'cached':>7} {'tokens':>12} {'PFLOP to run':>13} {'GPU-hours':>10}"]
    for stage in STAGE_NAMES:
        row = result["stages"].get(stage)
        if not row or "jobs" not in row:
            continue
        tokens = f"{row['tokens']:.3g}" if "tokens" in row else ""
        flops = f"{row['flops'] / 1e15:.3g}" if "flops" in row else ""
        hours = f"{row['gpu_hours']:.3g}" if "gpu_hours" in row else ""
        lines.append(f"{stage:<10} {row['jobs']:>5} {row['cached']:>7} {tokens:>12} {flops:>13} {hours:>10}")
    total = sum(r.get("gpu_hours", 0.0) for r in result["stages"].values())
    lines += ["", f"total: {total:.3g} GPU-hours for the jobs not cached yet (tokens count every job)",
              "assumptions: train 6 x params x tokens (full) or 4 x (LoRA), + 2 x for a reference forward; "
              f"generation 2 x params x ({a.prompt_tokens} prompt + min(max_new_tokens, {a.completion_tokens}) "
              f"completion) tokens per sample; peak {a.peak_flops / 1e12:.0f} TFLOP/s (H100 bf16) at "
              f"{a.train_utilisation:.0%} (train) and {a.generation_utilisation:.0%} (generation) utilisation",
              "training tokens: " + "; ".join(result["token_sources"])]
    if math.isnan(total):
        lines.append("(some estimates are unknown)")
    lines += [f"unknown: {note}" for note in result.get("unknown", [])]
    return "\n".join(lines)
