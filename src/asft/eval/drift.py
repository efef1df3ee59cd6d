"""Drift: how far a fine-tuned model moved from its base on text it was not trained on.

Mean per-token KL(base || model) over the gold solutions of a benchmark's problems, teacher-forced:
the KL term of `sft+kl` with the base as the reference, so the chunked loss computes it from hidden
states without ever holding [tokens, vocab] logits (it fits 7B models). The problems are tokenized and
batched exactly as training examples are (asft.train.data.encode_batch and pad_collator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from asft.eval.benchmarks import Problem


HiddenAndHead = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def hidden_and_head(net: torch.nn.Module) -> HiddenAndHead:
    """A model's final hidden states on a batch and its LM head weight (what the chunked KL reads)."""
    from asft.train.reference import capture_hidden, unwrap

    def forward(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with capture_hidden(unwrap(net)) as store:
            net(**inputs, logits_to_keep=1)
        return store["hidden"], unwrap(net).get_output_embeddings().weight

    return forward


@torch.no_grad()
def drift(model_dir: Path, base_dir: Path, problems: Sequence[Problem], *, template: str,
          batch_size: int | None = None, max_problems: int = 256) -> float | None:
    """Mean per-token KL(base || model) over the gold solution tokens of the problems; None without any."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not any(p.solution for p in problems):
        return None
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device).eval()
    return drift_between(hidden_and_head(model), hidden_and_head(base), tokenizer, problems, template=template,
                         device=device, max_length=getattr(model.config, "max_position_embeddings", 4096),
                         batch_size=batch_size or (8 if cuda else 64), max_problems=max_problems,
                         what=f"drift of {model_dir}")


@torch.no_grad()
def drift_between(model: HiddenAndHead, base: HiddenAndHead, tokenizer: Any, problems: Sequence[Problem], *,
                  template: str, device: Any, max_length: int = 4096, batch_size: int = 64, max_problems: int = 256,
                  what: str = "drift") -> float | None:
    """`drift` of two models in memory, each given as its hidden-states-and-head function (`hidden_and_head`,
    or a trainer's `Reference.hidden_and_head` for the base: a LoRA model under `disable_adapter()`)."""
    from asft.train.chunked_loss import chunked_loss
    from asft.train.data import encode_batch, pad_collator
    from asft.train.models import require_pad_token_id

    rows = [p for p in problems if p.solution][:max_problems]
    if not rows:
        return None
    collate = pad_collator(require_pad_token_id(tokenizer, what))
    prompt_template = template if template in ("plain", "alpaca", "chat") else "plain"  # cot, choice: plain
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        encoded = encode_batch([p.question for p in batch], [p.solution for p in batch], tokenizer,
                               template=prompt_template, max_length=max_length, overlong="truncate")
        features = [{"input_ids": ids, "labels": labels}
                    for ids, labels in zip(encoded["input_ids"], encoded["labels"]) if ids]
        if not features:
            continue
        inputs = {name: tensor.to(device) for name, tensor in collate(features).items()}
        labels = inputs.pop("labels")
        hidden, head = model(inputs)
        ref_hidden, ref_head = base(inputs)
        terms = chunked_loss(hidden, head, labels, "sft+kl", ref_hidden=ref_hidden, ref_head_weight=ref_head,
                             kl_weight=1.0)
        total += float(terms.kl) * terms.n_tokens
        count += terms.n_tokens
    return total / count if count else None
