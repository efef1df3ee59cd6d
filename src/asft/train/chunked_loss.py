"""The memory-lean loss the trainer uses: same semantics as :func:`asft.train.losses.compute_loss`, computed
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

and with G the (chunk, V) block of these gradients, h the chunk's hidden states and W the head weight:
grad_h = G @ W, grad_W += G^T @ h.
The head matmul and everything after it run in fp32 whatever the input dtype (a bf16 head is copied to
fp32 once per call; the reference reuses that copy when it is the same head).

Memory beyond the inputs: two (chunk_size, V) fp32 buffers, or with a reference model two per model of
chunk_size // 2 rows each (the same budget, so asft's peak memory stays at sft's),
grad_h (N, H) fp32, and grad_W (V, H) fp32 only when the head is trained. The forward pass does all
the work (one head matmul per chunk and model, one G @ W, and G^T @ h when the head trains); for modes
whose weights depend on the whole call (``batch_level``: top-k, anti-outlier) a first pass computes the
CE of every token before the weights, and the second pass recomputes the chunk logits for the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asft.train.losses import (
    DEFAULT_KL_DIRECTION,
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
    kl_direction: str = DEFAULT_KL_DIRECTION,
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
        mode: a registered mode name or :class:`asft.train.losses.LossMode`.
        ref_hidden: (B, T, H) the reference model's hidden states (no gradient flows to them); required
            when the mode ``needs_reference``.
        ref_head_weight: (V, H) the reference head; defaults to ``head_weight`` (LoRA: the head is frozen).
        kl_weight, kl_direction, num_items, **mode_hparams: as in :func:`asft.train.losses.compute_loss`.
        chunk_size: response positions per chunk. Each model holds two (chunk_size, V) fp32 buffers,
            log-probabilities and probabilities (the latter becomes the chunk's logit gradient), allocated
            once per call and reused by every chunk.

    Returns:
        :class:`asft.train.losses.LossOutput`, equal to ``compute_loss(hidden @ head_weight.T, ...)``; ``loss``
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
        raise ValueError(
            f"hidden must be (B, T, H) and labels (B, T); got {tuple(hidden.shape)}, {tuple(labels.shape)}"
        )
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
        grad_enabled=torch.is_grad_enabled(),
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
    grad_enabled: bool  # autograd on at the call (inside Function.forward it is always off)


class _ChunkedLoss(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradient; backward only scales and scatters it."""

    @staticmethod
    def forward(ctx, hidden, head_weight, ref_hidden, ref_head_weight, rows, y, plan: _Plan):
        B, T, H = hidden.shape
        need_grad_h = plan.grad_enabled and ctx.needs_input_grad[0]  # under no_grad: loss terms only
        need_grad_w = plan.grad_enabled and ctx.needs_input_grad[1]
        want_grad = need_grad_h or need_grad_w
        spec = plan.spec

        h = hidden.detach().reshape(B * T, H).index_select(0, rows).float()  # (N, H)
        w_head = head_weight.detach().float()  # (V, H), no copy when already fp32
        n = y.numel()
        # Same memory budget whatever the mode: a reference model doubles the (rows, V) buffers,
        # so its chunks hold half the rows and asft's peak stays at sft's.
        step = plan.chunk_size if ref_hidden is None else max(1, plan.chunk_size // 2)
        chunks = [slice(i, min(i + step, n)) for i in range(0, n, step)]
        policy = _SoftmaxBlock(h, w_head, rows=chunks[0].stop)
        reference = None
        if ref_hidden is not None:
            ref_h = ref_hidden.detach().reshape(B * T, -1).index_select(0, rows).float()  # (N, H_ref)
            ref_w = w_head if _same_tensor(ref_head_weight, head_weight) else ref_head_weight.detach().float()
            reference = _SoftmaxBlock(ref_h, ref_w, rows=chunks[0].stop)
        grad_h = h.new_zeros(n, H) if need_grad_h else None  # (N, H)
        grad_w = torch.zeros_like(w_head) if need_grad_w else None  # (V, H)
        seq = torch.div(rows, T, rounding_mode="floor")  # (N,) the sequence (batch row) of each token

        def token_stats(c, logp, q):  # detached statistics of the chunk's tokens
            ce = -logp.gather(1, y[c, None]).squeeze(1)  # (c,)
            ref_pt = q.gather(1, y[c, None]).squeeze(1) if spec.needs_ref_probs else None
            return TokenStats(ce=ce, p_target=torch.exp(-ce), ref_p_target=ref_pt, seq=seq[c])

        weights = None
        if spec.batch_level:  # pass 1: statistics of all tokens, then the weights (N,)
            stats = []
            for c in chunks:
                logp, _ = policy.softmax(c)
                q = reference.softmax(c)[1] if spec.needs_ref_probs else None
                stats.append(token_stats(c, logp, q))
            weights = spec.weights(_cat_stats(stats), **plan.hparams)

        terms = h.new_zeros(3, dtype=torch.float64)  # sums over the tokens of CE, w*CE and KL
        for c in chunks:  # (pass 2 for batch-level modes): loss terms and the gradient of each chunk
            logp, p = policy.softmax(c)  # (c, V) each
            logq, q = reference.softmax(c) if reference is not None else (None, None)
            stats = token_stats(c, logp, q)
            w = weights[c] if weights is not None else spec.weights(stats, **plan.hparams)  # (c,)
            kl, grad_z = _kl_and_grad_(
                logp, p, logq if spec.uses_kl else None, q, y[c], w, plan.kl_weight, plan.kl_direction, want_grad
            )
            terms += torch.stack([stats.ce.sum(), (w * stats.ce).sum(), kl.sum()])
            if need_grad_h:
                torch.mm(grad_z, w_head, out=grad_h[c])  # (c, H)
            if need_grad_w:
                grad_w.addmm_(grad_z.T, h[c])  # (V, H)
        del policy, reference

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


class _SoftmaxBlock:
    """One model's head over the chunks: two (chunk, V) fp32 buffers, allocated once per call and
    reused by every chunk, hold the log-probabilities and the probabilities of the current chunk."""

    def __init__(self, h: Tensor, weight: Tensor, rows: int):
        self.h, self.weight = h, weight  # (N, H), (V, H) fp32
        self.logp_buf = h.new_empty(rows, weight.shape[0])  # (chunk, V)
        self.p_buf = torch.empty_like(self.logp_buf)  # (chunk, V)

    def softmax(self, c: slice) -> tuple[Tensor, Tensor]:
        """log p and p (c, V) of the rows ``c``: logits z = h W^T, then a stable softmax in place."""
        logp, p = self.logp_buf[: c.stop - c.start], self.p_buf[: c.stop - c.start]
        torch.mm(self.h[c], self.weight.T, out=logp)  # z
        logp.sub_(logp.amax(-1, keepdim=True))  # z - max z
        torch.exp(logp, out=p)
        total = p.sum(-1, keepdim=True)
        p.div_(total)  # p = softmax(z)
        logp.sub_(total.log_())  # log p = z - logsumexp(z)
        return logp, p


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same data (e.g. a detached view of the head): one fp32 copy then."""
    return a is b or (
        a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
    )


def _cat_stats(stats: list[TokenStats]) -> TokenStats:
    ref = None if stats[0].ref_p_target is None else torch.cat([s.ref_p_target for s in stats])
    return TokenStats(
        ce=torch.cat([s.ce for s in stats]), p_target=torch.cat([s.p_target for s in stats]), ref_p_target=ref,
        seq=torch.cat([s.seq for s in stats]),
    )


def _kl_and_grad_(
    logp: Tensor,
    p: Tensor,
    logq: Tensor | None,
    q: Tensor | None,
    y: Tensor,
    w: Tensor,
    kl_weight: float,
    direction: str,
    want_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-token KL (c,) (zeros when ``logq`` is None) and, if ``want_grad``, the unnormalised gradient
    w.r.t. the logits G = w * (p - onehot(y)) + kl_weight * dKL/dz (c, V), written into p's buffer.
    Overwrites the buffers of p, logq and q; logp is left intact."""
    kl, dkl = torch.zeros_like(w), None
    if logq is not None:
        if direction == "ref_policy":  # KL(q || p) = sum_v q (log q - log p);  dKL/dz = p - q
            kl = logq.sub_(logp).mul_(q).sum(-1)
            dkl = q.neg_().add_(p) if want_grad else None
        else:  # KL(p || q) = sum_v p (log p - log q);  dKL/dz_j = p_j ((log p_j - log q_j) - KL)
            diff = logq.neg_().add_(logp)  # log p - log q
            kl = torch.mul(diff, p, out=q).sum(-1)
            dkl = diff.sub_(kl[:, None]).mul_(p) if want_grad else None
    if not want_grad:
        return kl, None
    grad = p.mul_(w[:, None])  # w p
    grad.scatter_add_(1, y[:, None], -w[:, None])  # w (p - onehot(y))
    if dkl is not None:
        grad.add_(dkl, alpha=kl_weight)
    return kl, grad
