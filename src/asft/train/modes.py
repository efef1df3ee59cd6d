"""The loss modes: one pure function each, registered by name (no torch import, so the config can
list and check modes without loading torch).

Every mode is "detached per-token weights times cross-entropy, plus optionally ``kl_weight`` times a
per-token KL divergence to a reference model", on response tokens only (label ``-100`` is ignored):

    loss = (sum_i w_i * CE_i  +  kl_weight * sum_i KL_i) / D

A mode is one small pure function ``TokenStats -> weights [N]`` registered with :func:`register_mode`;
its keyword-only parameters are its hyper-parameters and their defaults are the upstream ones. The
registry decides, once, what a mode needs: a KL term (``uses_kl``: only such modes take
``kl_weight`` and ``kl_direction``), the reference model's probabilities, the whole call's tokens.
The trainer looks a mode up (:func:`get_mode`) and never branches on its name.

=============  ==========================================  ========  ==================
name           weight w_i                                  KL term   hyper-parameters
=============  ==========================================  ========  ==================
sft            1                                           no
dft            sg(p(y_i))                                  no
sft+kl         1                                           yes
asft           sg(p(y_i))                                  yes
sft-topk       kept_i * n / n_kept                         no        keep=0.7
sft-antiop     1 if CE_i <= cap else cap / (CE_i + 1e-8)   no        mult=3.0
sft-lr         clamp(1 + a*clamp(q(y)-p(y), -1, 1), 0.1)   no        alpha=1.0
=============  ==========================================  ========  ==================

(arXiv 2509.23753, "Anchored Supervised Fine-Tuning"; upstream zhuchichi56/ASFT ``train_v2.py``;
extension modes from the fork doub7e/token-SFT.) The weight functions use tensor methods only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from asft.core.names import did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DEFAULT_KL_DIRECTION",
    "IGNORE_INDEX",
    "KL_DIRECTIONS",
    "LossMode",
    "TokenStats",
    "available_modes",
    "get_mode",
    "register_mode",
]

IGNORE_INDEX = -100
"""Label value of positions that carry no loss (prompt and padding)."""

KL_DIRECTIONS = ("ref_policy", "policy_ref")
"""``ref_policy``: KL(ref || policy), the paper's "forward KL" D_KL(pi_base || pi_theta) (its eq. 6 and
Figure 2), what upstream computes and what produced the published numbers (default).
``policy_ref``: KL(policy || ref), the paper's "reverse KL" ablation (Figure 2).
The config also accepts ``forward`` and ``reverse`` (asft.workflow.config.KL_DIRECTION_ALIASES)."""

DEFAULT_KL_DIRECTION = "ref_policy"
"""The one default of the KL direction (the paper's forward KL)."""


@dataclass(frozen=True)
class TokenStats:
    """Detached per-token statistics of the N response tokens, the input of a mode's weight function."""

    ce: Tensor  # (N,) cross-entropy -log p(y_i) under the policy, fp32
    p_target: Tensor  # (N,) p(y_i) = exp(-ce), fp32
    ref_p_target: Tensor | None  # (N,) q(y_i) under the reference model; None unless the mode needs it


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------

WeightFn = Callable[..., "Tensor"]


@dataclass(frozen=True)
class LossMode:
    """A registered loss mode: its weight function and what it needs from the caller."""

    name: str
    weight_fn: WeightFn  # (TokenStats, **hparams) -> detached weights (N,)
    uses_kl: bool  # the loss adds kl_weight * KL(. || .) over the full vocabulary
    needs_ref_probs: bool  # the weights read TokenStats.ref_p_target
    batch_level: bool  # a token's weight depends on the other tokens of the call (e.g. top-k, median)
    defaults: Mapping[str, object]  # hyper-parameters and their (upstream) defaults

    @property
    def needs_reference(self) -> bool:
        """Whether the caller must provide the reference model's logits / hidden states."""
        return self.uses_kl or self.needs_ref_probs

    def resolve_hparams(self, hparams: Mapping[str, object]) -> dict[str, object]:
        """The mode's defaults updated with ``hparams``; an unknown name raises ValueError."""
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise ValueError(
                f"unknown hyper-parameter(s) {', '.join(map(repr, unknown))} for loss mode {self.name!r}; "
                f"its hyper-parameters: {known}"
            )
        return {**self.defaults, **hparams}

    def weights(self, stats: TokenStats, **hparams: object) -> Tensor:
        """The detached per-token weights (N,) of this mode."""
        return self.weight_fn(stats, **self.resolve_hparams(hparams)).detach()


_MODES: dict[str, LossMode] = {}


def register_mode(
    name: str, *, uses_kl: bool = False, needs_ref_probs: bool = False, batch_level: bool = False
) -> Callable[[WeightFn], WeightFn]:
    """Register a weight function as loss mode ``name``; returns the function unchanged (so decorators stack).

    The function takes a :class:`TokenStats` as its only positional argument; its keyword-only
    parameters, all with defaults, are the mode's hyper-parameters. A duplicate name raises ValueError.
    """

    def decorator(fn: WeightFn) -> WeightFn:
        if name in _MODES:
            raise ValueError(f"loss mode {name!r} is already registered")
        params = list(inspect.signature(fn).parameters.values())
        hparams = params[1:]
        if not params or any(p.kind is not inspect.Parameter.KEYWORD_ONLY for p in hparams):
            raise TypeError(f"weight function of {name!r} must be fn(stats, *, hparam=default, ...)")
        if any(p.default is inspect.Parameter.empty for p in hparams):
            raise TypeError(f"every hyper-parameter of loss mode {name!r} needs a default")
        defaults = MappingProxyType({p.name: p.default for p in hparams})
        _MODES[name] = LossMode(name, fn, uses_kl, needs_ref_probs, batch_level, defaults)
        return fn

    return decorator


def get_mode(mode: str | LossMode) -> LossMode:
    """The registered :class:`LossMode` called ``mode`` (a LossMode is returned as is)."""
    if isinstance(mode, LossMode):
        return mode
    try:
        return _MODES[mode]
    except (KeyError, TypeError):
        hint = did_you_mean(mode, _MODES)
        raise ValueError(f"unknown loss mode {mode!r}{hint}; known modes: {', '.join(available_modes())}") from None


def available_modes() -> tuple[str, ...]:
    """Names of the registered loss modes, in registration order."""
    return tuple(_MODES)


# --------------------------------------------------------------------------------------------------
# The modes: one pure function each, stats -> detached weights (N,)
# --------------------------------------------------------------------------------------------------


@register_mode("sft+kl", uses_kl=True)
@register_mode("sft")
def sft_weights(stats: TokenStats) -> Tensor:
    """SFT: token cross-entropy, w_i = 1. ``sft+kl`` adds kl_weight * KL (the paper's SFT+KL ablation)."""
    return stats.ce.new_ones(stats.ce.shape)


@register_mode("asft", uses_kl=True)
@register_mode("dft")
def dft_weights(stats: TokenStats) -> Tensor:
    """DFT (Wu et al. 2025, arXiv 2508.05629): CE weighted by the detached target probability,
    w_i = sg(p(y_i)), i.e. the loss -sg(p) * log p. ``asft`` (arXiv 2509.23753) adds kl_weight * KL."""
    return stats.p_target.detach()


@register_mode("sft-topk", batch_level=True)
def topk_weights(stats: TokenStats, *, keep: float = 0.7) -> Tensor:
    """Top-k SFT (fork doub7e/token-SFT): mean CE over the k = max(1, int(keep*n)) easiest tokens.

    Keeps tokens with CE <= the k-th smallest CE of the call's n response tokens and weights them by
    n / n_kept, so that with D = n the loss is the mean CE over the kept tokens (n_kept = k unless CE
    values tie at the threshold)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    n = stats.ce.numel()
    k = max(1, int(keep * n))
    threshold = stats.ce.kthvalue(k).values
    kept = (stats.ce <= threshold).to(stats.ce.dtype)
    return kept * (n / kept.sum())


@register_mode("sft-antiop", batch_level=True)
def antiop_weights(stats: TokenStats, *, mult: float = 3.0) -> Tensor:
    """Anti-outlier SFT (fork doub7e/token-SFT): tokens with CE above cap = mult * median(CE) (the lower
    median, ``Tensor.median``) get weight cap / (CE + 1e-8), so their weighted CE is ~cap; others 1."""
    if mult <= 0:
        raise ValueError(f"mult must be > 0, got {mult!r}")
    cap = mult * stats.ce.median()
    return stats.ce.new_ones(stats.ce.shape).where(stats.ce <= cap, cap / (stats.ce + 1e-8))


@register_mode("sft-lr", needs_ref_probs=True)
def lr_weights(stats: TokenStats, *, alpha: float = 1.0) -> Tensor:
    """Likelihood-ratio SFT (fork doub7e/token-SFT), no KL term:
    w_i = clamp(1 + alpha * clamp(q(y_i) - p(y_i), -1, 1), min=0.1) with q the reference model."""
    assert stats.ref_p_target is not None
    gap = (stats.ref_p_target - stats.p_target).clamp(-1.0, 1.0)
    return (1.0 + alpha * gap).clamp(min=0.1)
