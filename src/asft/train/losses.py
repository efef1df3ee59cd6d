"""Token losses of SFT, DFT and ASFT, and the registry of loss modes.

Every mode is "detached per-token weights times cross-entropy, plus optionally ``kl_weight`` times a
per-token KL divergence to a reference model", on response tokens only (label ``-100`` is ignored):

    loss = (sum_i w_i * CE_i  +  kl_weight * sum_i KL_i) / D

where ``CE_i = -log p(y_i)`` under the policy, ``w_i`` is the mode's detached weight, ``KL_i`` is the
full-vocabulary KL at position i (only for modes registered with ``uses_kl=True``) and ``D`` is the
number of response tokens of the call, or ``num_items`` when given (the token count of the whole
accumulated batch, "global_tokens" normalisation).

A mode is one small pure function ``TokenStats -> weights [N]`` registered by name with
:func:`register_mode`; its keyword-only parameters are its hyper-parameters and their defaults are the
upstream ones. The trainer looks a mode up once (:func:`get_mode`) and reads its metadata
(``needs_reference``); it never branches on the name.

Modes (arXiv 2509.23753, "Anchored Supervised Fine-Tuning"; upstream zhuchichi56/ASFT ``train_v2.py``;
extension modes from the fork doub7e/token-SFT):

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

:func:`compute_loss` is the readable reference on full ``[B, T, V]`` logits. The trainer uses the
memory-lean :func:`asft.train.chunked_loss.chunked_loss`, which has the same semantics.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "KL_DIRECTIONS",
    "LossMode",
    "LossOutput",
    "TokenStats",
    "available_modes",
    "compute_loss",
    "get_mode",
    "kl_per_token",
    "register_mode",
]

IGNORE_INDEX = -100
"""Label value of positions that carry no loss (prompt and padding)."""

KL_DIRECTIONS = ("ref_policy", "policy_ref")
"""``ref_policy``: KL(ref || policy), the paper's "forward KL" D_KL(pi_base || pi_theta) (its eq. 6 and
Figure 2), what upstream computes and what produced the published numbers (default).
``policy_ref``: KL(policy || ref), the paper's "reverse KL" ablation (Figure 2).
The config also accepts ``forward`` and ``reverse`` (asft.workflow.config.KL_DIRECTION_ALIASES)."""


# --------------------------------------------------------------------------------------------------
# Data passed to and returned by the losses
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenStats:
    """Detached per-token statistics of the N response tokens, the input of a mode's weight function."""

    ce: Tensor  # (N,) cross-entropy -log p(y_i) under the policy, fp32
    p_target: Tensor  # (N,) p(y_i) = exp(-ce), fp32
    ref_p_target: Tensor | None  # (N,) q(y_i) under the reference model; None unless the mode needs it


@dataclass(frozen=True)
class LossOutput:
    """The loss to backpropagate and its detached terms (all means are over this call's response tokens)."""

    loss: Tensor  # scalar, (sum_i w_i*CE_i + kl_weight * sum_i KL_i) / D; carries the graph
    ce: Tensor  # scalar, detached: mean CE over the response tokens
    weighted_ce: Tensor  # scalar, detached: mean of w_i*CE_i (what DFT, top-k, ... optimise; = ce for sft)
    kl: Tensor  # scalar, detached: mean KL per response token; 0 when the mode has no KL term
    n_tokens: int  # number of response tokens in this call


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------

WeightFn = Callable[..., Tensor]


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
        close = difflib.get_close_matches(str(mode), list(_MODES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
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
    return torch.ones_like(stats.ce)


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
    threshold = torch.kthvalue(stats.ce, k).values
    kept = (stats.ce <= threshold).to(stats.ce.dtype)
    return kept * (n / kept.sum())


@register_mode("sft-antiop", batch_level=True)
def antiop_weights(stats: TokenStats, *, mult: float = 3.0) -> Tensor:
    """Anti-outlier SFT (fork doub7e/token-SFT): tokens with CE above cap = mult * median(CE) (the lower
    median, ``torch.median``) get weight cap / (CE + 1e-8), so their weighted CE is ~cap; others 1."""
    if mult <= 0:
        raise ValueError(f"mult must be > 0, got {mult!r}")
    cap = mult * torch.median(stats.ce)
    return torch.where(stats.ce <= cap, torch.ones_like(stats.ce), cap / (stats.ce + 1e-8))


@register_mode("sft-lr", needs_ref_probs=True)
def lr_weights(stats: TokenStats, *, alpha: float = 1.0) -> Tensor:
    """Likelihood-ratio SFT (fork doub7e/token-SFT), no KL term:
    w_i = clamp(1 + alpha * clamp(q(y_i) - p(y_i), -1, 1), min=0.1) with q the reference model."""
    assert stats.ref_p_target is not None
    gap = (stats.ref_p_target - stats.p_target).clamp(-1.0, 1.0)
    return (1.0 + alpha * gap).clamp(min=0.1)


# --------------------------------------------------------------------------------------------------
# Shared argument checks
# --------------------------------------------------------------------------------------------------


def check_arguments(
    mode: str | LossMode, *, kl_weight: float, has_reference: bool, kl_direction: str, mode_hparams: Mapping
) -> tuple[LossMode, dict[str, object]]:
    """Validate the arguments of a loss call; returns the mode and its resolved hyper-parameters."""
    spec = get_mode(mode)
    hparams = spec.resolve_hparams(mode_hparams)
    if kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {kl_direction!r}")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight!r}")
    if kl_weight > 0 and not spec.uses_kl:
        anchored = [m.name for m in _MODES.values() if m.uses_kl and m.weight_fn is spec.weight_fn]
        hint = (
            f"use mode {anchored[0]!r} for {spec.name!r} plus kl_weight * KL"
            if anchored
            else f"modes with a KL term: {', '.join(m.name for m in _MODES.values() if m.uses_kl)}"
        )
        raise ValueError(f"kl_weight={kl_weight!r} but loss mode {spec.name!r} has no KL term; {hint}")
    if spec.needs_reference and not has_reference:
        raise ValueError(
            f"loss mode {spec.name!r} needs the reference model's outputs: pass ref_logits "
            f"(compute_loss) or ref_hidden (chunked_loss)"
        )
    return spec, hparams


def denominator(num_items: int | float | Tensor | None, n_tokens: int) -> float:
    """D of the normalisation: ``num_items`` when given, else this call's number of response tokens."""
    if num_items is None:
        return float(n_tokens)
    value = float(num_items)
    if not value > 0:
        raise ValueError(f"num_items must be > 0, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# The reference loss on full logits
# --------------------------------------------------------------------------------------------------


def kl_per_token(logp: Tensor, ref_logp: Tensor, direction: str = "ref_policy") -> Tensor:
    """Full-vocabulary KL per row of log-probabilities (N, V) -> (N,), in the given direction.

    ``ref_policy``: KL(q || p) = sum_v q_v (log q_v - log p_v), which equals upstream's
    ``F.kl_div(log_softmax(policy), softmax(ref), reduction="none").sum(-1)``.
    ``policy_ref``: KL(p || q) = sum_v p_v (log p_v - log q_v)."""
    if direction == "ref_policy":
        return (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    if direction == "policy_ref":
        return (logp.exp() * (logp - ref_logp)).sum(-1)
    raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {direction!r}")


def compute_loss(
    logits: Tensor,
    labels: Tensor,
    mode: str | LossMode,
    *,
    kl_weight: float = 0.0,
    ref_logits: Tensor | None = None,
    kl_direction: str = "ref_policy",
    num_items: int | float | Tensor | None = None,
    **mode_hparams: object,
) -> LossOutput:
    """Loss of ``mode`` on full, unshifted logits (the readable reference implementation).

    Args:
        logits: (B, T, V) policy logits; position t predicts ``labels[:, t + 1]`` (HF convention).
        labels: (B, T) token ids, ``-100`` on prompt and padding.
        mode: a registered mode name (see :func:`available_modes`) or a :class:`LossMode`.
        kl_weight: weight of the KL term (modes with ``uses_kl`` only; 0 for any other mode).
        ref_logits: (B, T, V) reference-model logits, required when the mode ``needs_reference``.
        kl_direction: ``"ref_policy"`` = KL(ref || policy), the paper's forward KL and upstream's code, or
            ``"policy_ref"`` = KL(policy || ref), the paper's reverse-KL ablation.
        num_items: D of the normalisation; defaults to this call's number of response tokens.
        **mode_hparams: the mode's hyper-parameters (e.g. ``keep`` for ``sft-topk``).

    Returns:
        :class:`LossOutput` with ``loss = (sum_i w_i CE_i + kl_weight * sum_i KL_i) / D`` computed in fp32.
    """
    spec, hparams = check_arguments(
        mode,
        kl_weight=kl_weight,
        has_reference=ref_logits is not None,
        kl_direction=kl_direction,
        mode_hparams=mode_hparams,
    )
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (B, T, V) and labels (B, T); got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    if spec.needs_reference and ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits shape {tuple(ref_logits.shape)} != logits shape {tuple(logits.shape)}")

    targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    mask = targets != IGNORE_INDEX  # (B, T-1) response tokens
    y = targets[mask]  # (N,)
    n = y.numel()
    if n == 0:
        zero = logits.new_zeros((), dtype=torch.float32)
        return LossOutput(loss=logits.sum() * 0, ce=zero, weighted_ce=zero, kl=zero, n_tokens=0)

    logp = F.log_softmax(logits[:, :-1][mask].float(), dim=-1)  # (N, V)
    ce = -logp.gather(-1, y[:, None]).squeeze(-1)  # (N,)
    ref_logp = None
    if spec.needs_reference:
        ref_logp = F.log_softmax(ref_logits[:, :-1][mask].detach().float(), dim=-1)  # (N, V)

    stats = TokenStats(
        ce=ce.detach(),
        p_target=torch.exp(-ce.detach()),
        ref_p_target=None if ref_logp is None else ref_logp.gather(-1, y[:, None]).squeeze(-1).exp(),
    )
    w = spec.weights(stats, **hparams)  # (N,) detached
    kl = kl_per_token(logp, ref_logp, kl_direction) if spec.uses_kl else torch.zeros_like(ce)  # (N,)

    d = denominator(num_items, n)
    loss = ((w * ce).sum() + kl_weight * kl.sum()) / d
    return LossOutput(
        loss=loss,
        ce=ce.detach().sum() / n,
        weighted_ce=(w * ce).detach().sum() / n,
        kl=kl.detach().sum() / n,
        n_tokens=n,
    )
