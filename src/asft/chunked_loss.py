"""The memory-lean loss the trainer uses: same semantics as :func:`asft.losses.compute_loss`, computed
from the decoder's hidden states and the LM-head weight in chunks of response positions.

Upstream materialises full fp32 ``[tokens, vocab]`` logits for the policy and the reference model and
lets autograd keep several copies of them (about 11 in ASFT). Here only the response positions are
projected through the head, ``chunk_size`` rows at a time, and the gradient with respect to each chunk's
logits z is written by hand and immediately contracted with the head weight, so no ``[N, V]`` tensor
is ever stored. For a response position with target y, policy softmax p, reference softmax q, weight w
and D the normalisation:

    dL/dz = (w * (p - onehot(y)) + kl_weight * dKL/dz) / D
    dKL/dz = p - q                                  for KL(ref || policy)  ("ref_policy")
    dKL/dz_j = p_j * ((log p_j - log q_j) - KL)     for KL(policy || ref)  ("policy_ref")

and with h the chunk's hidden states and W the head weight: grad_h = G @ W, grad_W += G^T @ h.
The head matmul and everything after it run in fp32 whatever the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asft.losses import (
    IGNORE_INDEX,
    LossMode,
    LossOutput,
    TokenStats,
    check_arguments,
    denominator,
)

__all__ = ["chunked_loss"]


def chunked_loss(
    hidden: Tensor,
    head_weight: Tensor,
    labels: Tensor,
    mode: str | LossMode,
    *,
    ref_hidden: Tensor | None = None,
    ref_head_weight: Tensor | None = None,
    kl_weight: float = 0.0,
    kl_direction: str = "ref_policy",
    num_items: int | float | Tensor | None = None,
    chunk_size: int = 256,
    **mode_hparams: object,
) -> LossOutput:
    """Loss of ``mode`` on ``logits = hidden @ head_weight.T``, without materialising the logits.

    Args:
        hidden: (B, T, H) final hidden states of the decoder body (before the LM head).
        head_weight: (V, H) LM-head (or tied embedding) weight, no bias. Gets a gradient when it
            requires one (full fine-tuning).
        labels: (B, T) token ids, ``-100`` on prompt and padding; position t predicts ``labels[:, t+1]``.
        mode: a registered mode name or :class:`asft.losses.LossMode`.
        ref_hidden: (B, T, H) the reference model's hidden states (no gradient flows to them); required
            when the mode ``needs_reference``.
        ref_head_weight: (V, H) the reference head; defaults to ``head_weight`` (LoRA: the head is frozen).
        kl_weight, kl_direction, num_items, **mode_hparams: as in :func:`asft.losses.compute_loss`.
        chunk_size: response positions per chunk; memory holds one (chunk_size, V) fp32 block per model.

    Returns:
        :class:`asft.losses.LossOutput`, equal to ``compute_loss(hidden @ head_weight.T, ...)``; ``loss``
        carries the graph to ``hidden`` and ``head_weight``.
    """
    spec, hparams = check_arguments(
        mode,
        kl_weight=kl_weight,
        has_reference=ref_hidden is not None,
        kl_direction=kl_direction,
        mode_hparams=mode_hparams,
    )
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be (B, T, H) and labels (B, T); got {tuple(hidden.shape)}, {tuple(labels.shape)}")
    if head_weight.dim() != 2 or head_weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"head_weight must be (V, H={hidden.shape[2]}), got {tuple(head_weight.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    if ref_head_weight is None:
        ref_head_weight = head_weight
    if spec.needs_reference:
        if ref_hidden.shape[:2] != hidden.shape[:2]:
            raise ValueError(f"ref_hidden shape {tuple(ref_hidden.shape)} does not match hidden {tuple(hidden.shape)}")
        if ref_head_weight.shape[0] != head_weight.shape[0] or ref_head_weight.shape[1] != ref_hidden.shape[2]:
            raise ValueError(f"ref_head_weight {tuple(ref_head_weight.shape)} does not fit ref_hidden / head_weight")

    B, T, _ = hidden.shape
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1) response tokens
    y = labels[:, 1:][mask]  # (N,)
    n = y.numel()
    if n == 0:
        zero = hidden.new_zeros((), dtype=torch.float32)
        loss = hidden.sum() * 0 + (head_weight.sum() * 0 if head_weight.requires_grad else 0)
        return LossOutput(loss=loss, ce=zero, weighted_ce=zero, kl=zero, n_tokens=0)
    b, t = mask.nonzero(as_tuple=True)
    rows = b * T + t  # (N,) flat indices of the predicting positions in (B*T)

    plan = _Plan(
        spec=spec,
        hparams=hparams,
        kl_weight=float(kl_weight),
        kl_direction=kl_direction,
        d=denominator(num_items, n),
        chunk_size=chunk_size,
    )
    if not spec.needs_reference:
        ref_hidden = ref_head_weight = None
    loss, terms = _ChunkedLoss.apply(hidden, head_weight, ref_hidden, ref_head_weight, rows, y, plan)
    ce_mean, wce_mean, kl_mean = (terms / n).float().unbind()
    return LossOutput(loss=loss, ce=ce_mean, weighted_ce=wce_mean, kl=kl_mean, n_tokens=n)


@dataclass(frozen=True)
class _Plan:
    spec: LossMode
    hparams: dict
    kl_weight: float
    kl_direction: str
    d: float  # normalisation D
    chunk_size: int


class _ChunkedLoss(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradient; backward only scales and scatters it."""

    @staticmethod
    def forward(ctx, hidden, head_weight, ref_hidden, ref_head_weight, rows, y, plan: _Plan):
        B, T, H = hidden.shape
        need_grad_h, need_grad_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        spec = plan.spec

        h = hidden.detach().reshape(B * T, H).index_select(0, rows).float()  # (N, H)
        w_head = head_weight.detach().float()  # (V, H), no copy when already fp32
        ref = None
        if ref_hidden is not None:
            rh = ref_hidden.detach().reshape(B * T, -1).index_select(0, rows).float()  # (N, H_ref)
            ref = (rh, w_head if ref_head_weight is head_weight else ref_head_weight.detach().float())

        n = y.numel()
        chunks = [slice(i, min(i + plan.chunk_size, n)) for i in range(0, n, plan.chunk_size)]
        grad_h = h.new_zeros(n, H) if need_grad_h else None  # (N, H)
        grad_w = torch.zeros_like(w_head) if need_grad_w else None  # (V, H)

        weights = None
        if spec.batch_level:  # pass 1: statistics of all tokens, then the weights
            stats = [_token_stats(h[c], y[c], w_head, ref, spec.needs_ref_probs) for c in chunks]
            weights = spec.weights(_cat_stats(stats), **plan.hparams)  # (N,)

        terms = h.new_zeros(3, dtype=torch.float64)  # sums of CE, w*CE and KL over the tokens
        for c in chunks:  # (pass 2 for batch-level modes): loss terms and the gradient of each chunk
            logp = _log_softmax_(h[c] @ w_head.T)  # (c, V) fp32
            ce = -logp.gather(1, y[c, None]).squeeze(1)  # (c,)
            ref_logp = _log_softmax_(ref[0][c] @ ref[1].T) if ref is not None else None  # (c, V)
            if weights is not None:
                w = weights[c]
            else:
                ref_pt = ref_logp.gather(1, y[c, None]).squeeze(1).exp() if spec.needs_ref_probs else None
                w = spec.weights(TokenStats(ce=ce, p_target=torch.exp(-ce), ref_p_target=ref_pt), **plan.hparams)
            kl, grad_z = _kl_and_grad(logp, ref_logp, y[c], w, plan, want_grad=need_grad_h or need_grad_w)
            del logp, ref_logp
            terms += torch.stack([ce.sum(), (w * ce).sum(), kl.sum()])
            if grad_z is not None:
                if need_grad_h:
                    grad_h[c] = grad_z @ w_head  # (c, H)
                if need_grad_w:
                    grad_w.addmm_(grad_z.T, h[c])  # (V, H)
            del grad_z

        loss = ((terms[1] + plan.kl_weight * terms[2]) / plan.d).float()
        if grad_h is not None:
            grad_h /= plan.d
        if grad_w is not None:
            grad_w /= plan.d
        ctx.save_for_backward(grad_h, grad_w, rows)
        ctx.meta = (hidden.shape, hidden.dtype, head_weight.dtype)
        ctx.mark_non_differentiable(terms)
        return loss, terms

    @staticmethod
    def backward(ctx, grad_loss, _grad_terms):
        grad_h, grad_w, rows = ctx.saved_tensors
        shape, h_dtype, w_dtype = ctx.meta
        grad_hidden = grad_head = None
        if grad_h is not None:
            B, T, H = shape
            grad_hidden = grad_h.new_zeros(B * T, H, dtype=h_dtype)
            grad_hidden.index_copy_(0, rows, (grad_h * grad_loss).to(h_dtype))
            grad_hidden = grad_hidden.view(B, T, H)
        if grad_w is not None:
            grad_head = (grad_w * grad_loss).to(w_dtype)
        return grad_hidden, grad_head, None, None, None, None, None


def _log_softmax_(z: Tensor) -> Tensor:
    """log_softmax over the last dim, in place on the (c, V) fp32 block ``z``."""
    return z.sub_(z.logsumexp(-1, keepdim=True))


def _token_stats(h: Tensor, y: Tensor, w_head: Tensor, ref, need_ref_probs: bool) -> TokenStats:
    """CE and target probabilities of one chunk (pass 1 of batch-level modes)."""
    z = h @ w_head.T  # (c, V)
    ce = z.logsumexp(-1) - z.gather(1, y[:, None]).squeeze(1)  # (c,)
    del z
    ref_pt = None
    if need_ref_probs:
        zr = ref[0] @ ref[1].T  # (c, V)
        ref_pt = (zr.gather(1, y[:, None]).squeeze(1) - zr.logsumexp(-1)).exp()
    return TokenStats(ce=ce, p_target=torch.exp(-ce), ref_p_target=ref_pt)


def _cat_stats(stats: list[TokenStats]) -> TokenStats:
    ref = None if stats[0].ref_p_target is None else torch.cat([s.ref_p_target for s in stats])
    return TokenStats(
        ce=torch.cat([s.ce for s in stats]), p_target=torch.cat([s.p_target for s in stats]), ref_p_target=ref
    )


def _kl_and_grad(
    logp: Tensor, ref_logp: Tensor | None, y: Tensor, w: Tensor, plan: _Plan, *, want_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-token KL (c,) and the unnormalised gradient w.r.t. the logits (c, V):
    G = w * (p - onehot(y)) + kl_weight * dKL/dz. Reuses the ``logp`` / ``ref_logp`` buffers."""
    uses_kl = plan.spec.uses_kl
    if not uses_kl and not want_grad:
        return logp.new_zeros(logp.shape[0]), None
    p = logp.exp()  # (c, V)
    kl = logp.new_zeros(logp.shape[0])
    kl_grad = None  # dKL/dz, (c, V)
    if uses_kl:
        if plan.kl_direction == "ref_policy":  # KL(q || p) = sum q (log q - log p); dKL/dz = p - q
            q = ref_logp.exp()  # (c, V)
            kl = (q * ref_logp.sub_(logp)).sum(-1)  # ref_logp now holds log q - log p
            kl_grad = q.neg_().add_(p) if want_grad else None
        else:  # KL(p || q) = sum p (log p - log q); dKL/dz_j = p_j (log p_j - log q_j - KL)
            diff = ref_logp.neg_().add_(logp)  # (c, V) log p - log q, in ref_logp's buffer
            kl = (p * diff).sum(-1)
            kl_grad = diff.sub_(kl[:, None]).mul_(p) if want_grad else None
    if not want_grad:
        return kl, None
    grad = p.mul_(w[:, None])  # w * p, in p's buffer
    grad.scatter_add_(1, y[:, None], -w[:, None])  # - w * onehot(y)
    if kl_grad is not None:
        grad.add_(kl_grad, alpha=plan.kl_weight)
    return kl, grad
