"""Pre-training of the embedded default base model: a tiny Qwen2 that knows add and sub well and
mul only partly, so that fine-tuning on mul can show forgetting (see
``shared/notes/embedded-default.md``).

Training format (the "plain" template, shared with the fine-tuning and eval stages): the prompt is
the instruction itself (``47+35=``), the target is ``response + eos``; the loss is taken on the
target tokens only. Only the *train* split of each task is used (the 200 test problems per task
are never seen).

Determinism: with ``torch.set_num_threads(1)`` (pass ``num_threads=1``) two runs of the same spec
give bitwise-identical weights. Initialisation uses ``torch.manual_seed(spec.seed)``; batch
sampling uses its own ``torch.Generator`` seeded from ``spec.seed``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from asft.eval.grading import last_boxed

from .tasks import TASKS, Example, split
from .tokenizer import build_tokenizer

__all__ = [
    "SPEC_FILENAME",
    "EmbeddedBaseSpec",
    "build_model",
    "encode_examples",
    "extract_boxed",
    "generate_responses",
    "pretrain",
    "quick_accuracy",
]

SPEC_FILENAME = "embedded_base_spec.json"
_DEFAULT_MIX = (("add", 0.46), ("sub", 0.46), ("mul", 0.08))


@dataclass(frozen=True)
class EmbeddedBaseSpec:
    """Everything that determines the embedded base model (architecture, data, optimisation)."""

    hidden_size: int = 128  # model width (d_model)
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention (query) heads; head dim = hidden_size / num_heads = 32
    num_kv_heads: int = 2  # key/value heads (grouped-query attention)
    intermediate_size: int = 512  # SwiGLU MLP width
    max_positions: int = 64  # max sequence length (the longest example is 34 tokens)
    tie_embeddings: bool = True  # share input embedding and LM head (525,952 params at defaults)
    # sampling probability of each task per training example; stored as (task, weight) pairs
    # in TASKS order so the spec stays hashable; to_dict/from_dict use a {task: weight} mapping
    task_mix: tuple[tuple[str, float], ...] = _DEFAULT_MIX
    steps: int = 1000  # optimiser steps
    batch_size: int = 64  # examples per step
    lr: float = 3e-3  # peak learning rate (AdamW)
    warmup: int = 100  # linear warm-up steps up to lr (if >= steps, the whole run warms up)
    min_lr_ratio: float = 0.1  # cosine decay from lr down to min_lr_ratio * lr at the last step
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max global gradient norm
    split_seed: int = 0  # seed of the train/test split of the tasks (tasks.split)
    seed: int = 0  # seed of the weight initialisation and of batch sampling

    def __post_init__(self) -> None:
        mix = self.task_mix
        items = list(mix.items()) if isinstance(mix, Mapping) else [tuple(p) for p in mix]
        weights = {str(task): float(w) for task, w in items}
        if len(weights) != len(items):
            raise ValueError(f"duplicate task in task_mix: {mix!r}")
        unknown = set(weights) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks in task_mix: {sorted(unknown)}")
        if any(w < 0 or not math.isfinite(w) for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"task_mix weights must be finite, >= 0 and not all 0: {mix!r}")
        object.__setattr__(
            self, "task_mix", tuple((t, weights[t]) for t in TASKS if t in weights)
        )
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2:
            raise ValueError(f"betas must have two values: {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "intermediate_size", "max_positions", "steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, num_heads by num_kv_heads")
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio must be in [0, 1]")

    @property
    def mix(self) -> dict[str, float]:
        """``task_mix`` as a ``{task: weight}`` dict."""
        return dict(self.task_mix)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``task_mix`` as a mapping, ``betas`` as a list)."""
        out = asdict(self)
        out["task_mix"] = self.mix
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddedBaseSpec:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys raise."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown EmbeddedBaseSpec fields: {sorted(unknown)}")
        return cls(**dict(data))


def build_model(spec: EmbeddedBaseSpec, tokenizer: PreTrainedTokenizerBase) -> Qwen2ForCausalLM:
    """A randomly initialised ``Qwen2ForCausalLM`` (``torch.manual_seed(spec.seed)`` first)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config)
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = None
    gen.do_sample = False
    return model


def encode_examples(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode ``instruction + response + eos`` once (pitfall 7: sample indices, not strings).

    Returns ``(input_ids, labels, lengths)``: ``[N, L]`` right-padded ids (pad = eos), labels
    equal to the ids on the target (response + eos) and -100 on the prompt and padding, and the
    true lengths ``[N]``.
    """
    prompts = tokenizer([e.instruction for e in examples], add_special_tokens=False)["input_ids"]
    targets = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    seqs = [(p, t + [eos]) for p, t in zip(prompts, targets)]
    width = max(len(p) + len(t) for p, t in seqs)
    input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    lengths = torch.empty(len(seqs), dtype=torch.long)
    for i, (p, t) in enumerate(seqs):
        n = len(p) + len(t)
        input_ids[i, :n] = torch.tensor(p + t)
        labels[i, len(p):n] = torch.tensor(t)
        lengths[i] = n
    return input_ids, labels, lengths


def _lr_factor(step: int, spec: EmbeddedBaseSpec) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine down to ``min_lr_ratio``."""
    if step < spec.warmup:
        return (step + 1) / spec.warmup
    span = max(1, spec.steps - spec.warmup - 1)
    progress = min(1.0, (step - spec.warmup) / span)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(
    spec: EmbeddedBaseSpec,
    out_dir: Path,
    *,
    progress: bool = True,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Pre-train the embedded base model and save it (safetensors) with its tokenizer.

    ``out_dir`` must be empty (it is created if missing); the caller renames it into place.
    ``num_threads``, when given, sets ``torch.set_num_threads`` for the run (restored after);
    use 1 for bitwise reproducibility and steady speed. Returns a stats dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"output directory is not empty: {out_dir}")
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _pretrain(spec, out_dir, progress=progress)
    finally:
        if num_threads is not None:
            torch.set_num_threads(previous_threads)


def _pretrain(spec: EmbeddedBaseSpec, out_dir: Path, *, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    tokenizer = build_tokenizer()
    mix = {t: w for t, w in spec.task_mix if w > 0}
    examples: list[Example] = []
    weights: list[float] = []
    n_train: dict[str, int] = {}
    for task, weight in mix.items():
        train, _test = split(task, spec.split_seed)
        n_train[task] = len(train)
        examples.extend(train)
        weights.extend([weight / len(train)] * len(train))
    input_ids, labels, lengths = encode_examples(examples, tokenizer)
    if input_ids.shape[1] > spec.max_positions:
        raise ValueError(f"examples of {input_ids.shape[1]} tokens exceed max_positions")
    sample_weights = torch.tensor(weights, dtype=torch.float64)

    model = build_model(spec, tokenizer)
    model.train()
    num_parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=spec.lr,
        betas=spec.betas,
        weight_decay=spec.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, spec))
    generator = torch.Generator().manual_seed(spec.seed)

    losses: list[float] = []
    bar = tqdm(range(spec.steps), desc="pretrain", disable=not progress, mininterval=1.0)
    for step in bar:
        idx = torch.multinomial(sample_weights, spec.batch_size, replacement=True,
                                generator=generator)
        width = int(lengths[idx].max())
        batch_ids = input_ids[idx, :width]
        batch_labels = labels[idx, :width]
        # Right padding under a causal mask: real tokens never attend to the trailing pads and
        # pad positions carry no loss, so no attention mask is needed.
        logits = model(input_ids=batch_ids).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            batch_labels[:, 1:].reshape(-1),
            ignore_index=-100,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if progress and (step % 10 == 0 or step == spec.steps - 1):
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    bar.close()
    train_seconds = time.perf_counter() - start

    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / SPEC_FILENAME).write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")

    window = max(1, min(50, spec.steps // 10))
    stride = max(1, spec.steps // 100)
    return {
        "steps": spec.steps,
        "num_parameters": num_parameters,
        "num_train_examples": n_train,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "final_loss": sum(losses[-window:]) / window,  # mean of the last `window` steps
        "final_loss_window": window,
        "loss_history": [[s, losses[s]] for s in range(0, spec.steps, stride)],
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
    }




def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (braces balanced, stripped), or None."""
    content = last_boxed(text)
    return None if content is None else content.strip()


@torch.no_grad()
def generate_responses(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int = 256,
    max_new_tokens: int = 32,
) -> list[str]:
    """Greedy, left-padded, batched generation; returns the decoded continuations."""
    was_training = model.training
    old_side = tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # pitfall 3: right padding breaks batched generation
    outputs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = out[:, enc["input_ids"].shape[1]:]
            outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs


def quick_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 256,
    max_new_tokens: int = 32,
) -> float:
    """Fraction of ``examples`` whose greedy answer's last ``\\boxed{}`` equals the answer."""
    if not examples:
        return float("nan")
    texts = generate_responses(model, tokenizer, [e.instruction for e in examples],
                               batch_size=batch_size, max_new_tokens=max_new_tokens)
    correct = sum(extract_boxed(t) == e.answer for t, e in zip(texts, examples))
    return correct / len(examples)
