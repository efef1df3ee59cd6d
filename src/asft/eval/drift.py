"""Drift: how far a fine-tuned model moved from its base on text it was not trained on.

Mean per-token KL(base || model) over the gold solutions of a benchmark's problems, teacher-forced:
the KL term of `sft+kl` with the base as the reference, so the chunked loss computes it from hidden
states without ever holding [tokens, vocab] logits (it fits 7B models). The problems are tokenized and
batched exactly as training examples are (asft.train.data.encode_batch and pad_collator).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from asft.eval.benchmarks import Problem


@torch.no_grad()
def drift(model_dir: Path, base_dir: Path, problems: Sequence[Problem], *, template: str,
          batch_size: int | None = None, max_problems: int = 256) -> float | None:
    """Mean per-token KL(base || model) over the gold solution tokens of the problems; None without any."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asft.train.chunked_loss import chunked_loss
    from asft.train.data import encode_batch, pad_collator
    from asft.train.models import require_pad_token_id
    from asft.train.reference import capture_hidden

    rows = [p for p in problems if p.solution][:max_problems]
    if not rows:
        return None
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    batch_size = batch_size or (8 if cuda else 64)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collate = pad_collator(require_pad_token_id(tokenizer, f"drift of {model_dir}"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device).eval()
    limit = getattr(model.config, "max_position_embeddings", 4096)
    prompt_template = template if template in ("plain", "alpaca", "chat") else "plain"  # cot, choice: plain
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        encoded = encode_batch([p.question for p in batch], [p.solution for p in batch], tokenizer,
                               template=prompt_template, max_length=limit, overlong="truncate")
        features = [{"input_ids": ids, "labels": labels}
                    for ids, labels in zip(encoded["input_ids"], encoded["labels"]) if ids]
        if not features:
            continue
        inputs = {name: tensor.to(device) for name, tensor in collate(features).items()}
        labels = inputs.pop("labels")
        hidden = {}
        for name, net in (("model", model), ("base", base)):
            with capture_hidden(net) as store:
                net(**inputs, logits_to_keep=1)
            hidden[name] = store["hidden"]
        terms = chunked_loss(hidden["model"], model.get_output_embeddings().weight, labels, "sft+kl",
                             ref_hidden=hidden["base"], ref_head_weight=base.get_output_embeddings().weight,
                             kl_weight=1.0)
        total += float(terms.kl) * terms.n_tokens
        count += terms.n_tokens
    return total / count if count else None
