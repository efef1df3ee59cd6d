"""The frozen reference model of the anchored losses, and reading a decoder's final hidden states.

The reference is the same model with its LoRA adapters disabled (`disable_adapter()`), or, for full
fine-tuning, a frozen copy placed like the policy (DeepSpeed ZeRO-3 shards it too, as TRL prepares
DPO's reference). `capture_hidden` records the decoder's final hidden states, what the chunked loss
and the drift measure project through the LM head in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn


def unwrap_distributed(model: nn.Module) -> nn.Module:
    """The model under DDP/DeepSpeed wrappers (a peft model stays a peft model)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain causal LM under DDP/DeepSpeed and peft wrappers."""
    model = unwrap_distributed(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def capture_hidden(causal_lm: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the decoder's final (normed) hidden states during a forward pass."""
    store: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        store["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = causal_lm.get_decoder().register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


class Reference:
    """The frozen reference policy: hidden states (chunked loss) or logits (full loss), no grad."""

    def __init__(self, policy: nn.Module, frozen_copy: nn.Module | None = None) -> None:
        self.policy = policy
        self.frozen_copy = frozen_copy

    def _context(self):
        if self.frozen_copy is not None:
            return nullcontext()
        peft_model = unwrap_distributed(self.policy)
        if not hasattr(peft_model, "disable_adapter"):
            raise RuntimeError("full fine-tuning needs a frozen reference copy (frozen_copy)")
        return peft_model.disable_adapter()

    def _model(self) -> nn.Module:
        return self.frozen_copy if self.frozen_copy is not None else self.policy

    @torch.no_grad()
    def hidden_and_head(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        model = self._model()
        with self._context(), capture_hidden(unwrap(model)) as store:
            model(**inputs, logits_to_keep=1)
        return store["hidden"].detach(), unwrap(model).get_output_embeddings().weight.detach()

    @torch.no_grad()
    def logits(self, inputs: Mapping[str, Tensor]) -> Tensor:
        with self._context():
            return self._model()(**inputs).logits.detach()


def prepare_reference(frozen: nn.Module, trainer: Any) -> nn.Module:
    """Place the frozen reference like the policy: DeepSpeed-initialised (ZeRO-3 shards it across
    GPUs instead of replicating ~14 GB per GPU for a 7B model), else moved to the policy's device."""
    if trainer.is_deepspeed_enabled:
        import copy

        import deepspeed

        ds_config = copy.deepcopy(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
        stage = ds_config.get("zero_optimization", {}).get("stage", 0)
        if stage != 3:
            ds_config.setdefault("zero_optimization", {})["stage"] = 0  # a frozen copy needs no ZeRO-1/2
        ds_config.pop("optimizer", None)
        ds_config.pop("scheduler", None)
        engine, *_ = deepspeed.initialize(model=frozen, config=ds_config)
        engine.eval()
        return engine
    return frozen.to(trainer.args.device)
