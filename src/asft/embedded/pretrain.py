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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from asft.embedded.spec import EmbeddedBaseSpec
from asft.embedded.tasks import Example, split
from asft.embedded.tokenizer import build_tokenizer

__all__ = [
    "SPEC_FILENAME",
    "EmbeddedBaseSpec",
    "init_model",
    "encode_examples",
    "pretrain",
]

SPEC_FILENAME = "embedded_base_spec.json"


def init_model(spec: EmbeddedBaseSpec, tokenizer: PreTrainedTokenizerBase) -> Qwen2ForCausalLM:
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
    mix = {t: w for t, w in spec.task_mix.items() if w > 0}
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

    model = init_model(spec, tokenizer)
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
    (out_dir / SPEC_FILENAME).write_text(json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")

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
