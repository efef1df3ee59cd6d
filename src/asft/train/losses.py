"""The loss of every mode on full logits (:func:`compute_loss`), and what every loss call checks.

``loss = (sum_i w_i * CE_i + kl_weight * sum_i KL_i) / D`` where ``CE_i = -log p(y_i)`` under the
policy, ``w_i`` is the mode's detached weight (asft.train.modes), ``KL_i`` the full-vocabulary KL at
position i (modes registered with ``uses_kl=True`` only) and ``D`` the number of response tokens of
the call, or ``num_items`` when given (the token count of the whole accumulated batch,
"global_tokens" normalisation).

:func:`compute_loss` is the readable reference on full ``[B, T, V]`` logits. The trainer uses the
memory-lean :func:`asft.train.chunked_loss.chunked_loss`, which has the same semantics. The mode
registry's names are re-exported here (``asft.losses.register_mode`` keeps working).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from asft.train.modes import (
    DEFAULT_KL_DIRECTION,
    IGNORE_INDEX,
    KL_DIRECTIONS,
    LossMode,
    TokenStats,
    available_modes,
    get_mode,
    register_mode,
)

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

# --------------------------------------------------------------------------------------------------
# Data passed to and returned by the losses
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossOutput:
    """The loss to backpropagate and its detached terms (all means are over this call's response tokens)."""

    loss: Tensor  # scalar, (sum_i w_i*CE_i + kl_weight * sum_i KL_i) / D; carries the graph
    ce: Tensor  # scalar, detached: mean CE over the response tokens
    weighted_ce: Tensor  # scalar, detached: mean of w_i*CE_i (what DFT, top-k, ... optimise; = ce for sft)
    kl: Tensor  # scalar, detached: mean KL per response token; 0 when the mode has no KL term
    n_tokens: int  # number of response tokens in this call


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
        registered = [get_mode(name) for name in available_modes()]
        anchored = [m.name for m in registered if m.uses_kl and m.function is spec.function]
        hint = (
            f"use mode {anchored[0]!r} for {spec.name!r} plus kl_weight * KL"
            if anchored
            else f"modes with a KL term: {', '.join(m.name for m in registered if m.uses_kl)}"
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


def kl_per_token(logp: Tensor, ref_logp: Tensor, direction: str = DEFAULT_KL_DIRECTION) -> Tensor:
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
    kl_direction: str = DEFAULT_KL_DIRECTION,
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
        seq=mask.nonzero(as_tuple=True)[0],  # (N,) the sequence (batch row) of each token
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
