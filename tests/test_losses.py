"""Tests of the loss modes (asft.train.losses) and of the chunked loss (asft.train.chunked_loss).

The reference values are written here from the formulas, in float64, with plain torch: they do not
call any helper of the library.
"""

from __future__ import annotations

import collections
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from asft.train import modes
from asft.train.chunked_loss import chunked_loss
from asft.train.losses import available_modes, compute_loss, get_mode, register_mode

DIRECTIONS = ("ref_policy", "policy_ref")
EXPECTED_MODES = {"sft", "dft", "sft+kl", "asft", "sft-topk", "sft-antiop", "sft-lr", "asft-sft", "iw-sft"}
KL_WEIGHT = 0.3


# --------------------------------------------------------------------------------------------------
# Inputs and the formula-level reference
# --------------------------------------------------------------------------------------------------


def make_batch(B=3, T=11, V=37, seed=0, scale=3.0):
    """Random logits, reference logits and labels with a masked prompt and right padding."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(B, T, V, generator=g)
    ref_logits = logits + torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    for b in range(B):
        prompt = 1 + b  # prompt tokens
        pad = b  # right padding
        labels[b, :prompt] = -100
        if pad:
            labels[b, T - pad :] = -100
    return logits, ref_logits, labels


def kwargs_for(mode, direction="ref_policy"):
    """Keyword arguments that make a valid call for ``mode``."""
    spec = get_mode(mode)
    kw = {"kl_direction": direction}
    if spec.uses_kl:
        kw["kl_weight"] = KL_WEIGHT
    return kw


def formula_loss(logits, labels, mode, *, kl_weight=0.0, ref_logits=None, kl_direction="ref_policy",
                 num_items=None, **hp):
    """The loss of each mode written from its definition, in float64 (rows = response positions)."""
    z = logits[:, :-1].double()
    y_all = labels[:, 1:]
    mask = y_all != -100
    z, y = z[mask], y_all[mask]  # (N, V), (N,)
    n = y.numel()
    p = torch.softmax(z, -1)
    p_y = p[torch.arange(n), y]
    ce = -torch.log(p_y)
    if mode in ("sft", "sft+kl"):
        w = torch.ones(n, dtype=torch.float64)
    elif mode in ("dft", "asft"):
        w = p_y.detach()
    elif mode == "sft-topk":
        k = max(1, int(hp.get("keep", 0.7) * n))
        kth = torch.sort(ce.detach()).values[k - 1]
        kept = ce.detach() <= kth
        w = kept.double() * n / kept.sum()  # mean over the kept tokens once divided by n
    elif mode == "sft-antiop":
        lower_median = torch.sort(ce.detach()).values[(n - 1) // 2]
        cap = hp.get("mult", 3.0) * lower_median
        c = ce.detach()
        w = torch.where(c <= cap, torch.ones_like(c), cap / (c + 1e-8))
    elif mode == "sft-lr":
        q = torch.softmax(ref_logits[:, :-1].double()[mask], -1)
        q_y = q[torch.arange(n), y]
        w = torch.clamp(1 + hp.get("alpha", 1.0) * torch.clamp(q_y - p_y.detach(), -1, 1), min=0.1)
    elif mode == "asft-sft":  # DFT + alpha * SFT
        w = p_y.detach() + hp.get("alpha", 0.1)
    elif mode == "iw-sft":  # one weight per sequence: exp(temp * mean log(p/q)) clipped to [0, max_weight]
        q = torch.softmax(ref_logits[:, :-1].double()[mask], -1)
        log_ratio = torch.log(p_y.detach()) - torch.log(q[torch.arange(n), y])
        row = mask.nonzero()[:, 0]
        w = torch.zeros(n, dtype=torch.float64)
        for b in row.unique().tolist():
            mean = log_ratio[row == b].mean()
            w[row == b] = torch.clamp(torch.exp(hp.get("temp", 1.0) * mean), 0.0, hp.get("max_weight", 16.0))
    else:
        raise AssertionError(mode)
    kl = torch.zeros(n, dtype=torch.float64)
    if mode in ("sft+kl", "asft"):
        q = torch.softmax(ref_logits[:, :-1].double()[mask], -1)
        if kl_direction == "ref_policy":
            kl = (q * (torch.log(q) - torch.log(p))).sum(-1)
        else:
            kl = (p * (torch.log(p) - torch.log(q))).sum(-1)
    d = n if num_items is None else num_items
    return ((w * ce).sum() + kl_weight * kl.sum()) / d, ce, w, kl


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------------
# compute_loss against the formulas
# --------------------------------------------------------------------------------------------------


def test_registry_has_the_published_and_extension_modes():
    assert EXPECTED_MODES <= set(available_modes())
    assert get_mode("sft-topk").defaults == {"keep": 0.7}
    assert get_mode("sft-antiop").defaults == {"mult": 3.0}
    assert get_mode("sft-lr").defaults == {"alpha": 1.0}
    assert get_mode("asft-sft").defaults == {"alpha": 0.1}
    assert get_mode("iw-sft").defaults == {"temp": 1.0, "max_weight": 16.0}
    needs_ref = {m for m in available_modes() if get_mode(m).needs_reference}
    assert needs_ref == {"sft+kl", "asft", "sft-lr", "iw-sft"}
    assert {m for m in available_modes() if get_mode(m).batch_level} == {"sft-topk", "sft-antiop", "iw-sft"}


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("mode", sorted(EXPECTED_MODES))
def test_compute_loss_matches_formula(mode, direction):
    logits, ref_logits, labels = make_batch()
    for hp in ({}, {"sft-topk": {"keep": 0.4}, "sft-antiop": {"mult": 1.2}, "sft-lr": {"alpha": 0.5},
                    "asft-sft": {"alpha": 2.0}, "iw-sft": {"temp": 0.5, "max_weight": 1.5}}.get(mode, {})):
        kw = kwargs_for(mode, direction)
        x = logits.clone().requires_grad_()
        out = compute_loss(x, labels, mode, ref_logits=ref_logits, **kw, **hp)
        (gx,) = torch.autograd.grad(out.loss, x)

        x64 = logits.double().requires_grad_()
        ref_loss, ce, w, kl = formula_loss(x64, labels, mode, ref_logits=ref_logits, **kw, **hp)
        (g64,) = torch.autograd.grad(ref_loss, x64)

        assert out.loss.dtype == torch.float32
        assert close(out.loss, ref_loss)
        assert close(gx, g64)
        assert out.n_tokens == ce.numel() == int((labels[:, 1:] != -100).sum())
        assert close(out.ce, ce.mean())
        assert close(out.weighted_ce, (w * ce).mean())
        assert close(out.kl, kl.mean())
        assert not (out.ce.requires_grad or out.weighted_ce.requires_grad or out.kl.requires_grad)


def test_weighted_ce_of_sft_is_ce_and_topk_is_mean_over_kept():
    logits, _, labels = make_batch()
    out = compute_loss(logits, labels, "sft")
    assert torch.equal(out.weighted_ce, out.ce) and close(out.loss, out.ce)
    topk = compute_loss(logits, labels, "sft-topk", keep=0.5)
    ce = -F.log_softmax(logits[:, :-1][labels[:, 1:] != -100].double(), -1).gather(
        -1, labels[:, 1:][labels[:, 1:] != -100][:, None]).squeeze(-1)
    k = int(0.5 * ce.numel())
    assert close(topk.loss, ce.sort().values[:k].mean())


def test_ref_policy_kl_is_upstream_kl_div():
    logits, ref_logits, labels = make_batch()
    mask = labels[:, 1:] != -100
    upstream = F.kl_div(
        F.log_softmax(logits[:, :-1][mask].float(), -1), F.softmax(ref_logits[:, :-1][mask].float(), -1),
        reduction="none",
    ).sum(-1)
    out = compute_loss(logits, labels, "asft", kl_weight=0.1, ref_logits=ref_logits)
    assert close(out.kl, upstream.mean())


def test_directions_differ():
    logits, ref_logits, labels = make_batch()
    a = compute_loss(logits, labels, "asft", kl_weight=0.1, ref_logits=ref_logits, kl_direction="ref_policy")
    b = compute_loss(logits, labels, "asft", kl_weight=0.1, ref_logits=ref_logits, kl_direction="policy_ref")
    assert a.kl > 0 and b.kl > 0 and not close(a.kl, b.kl, 1e-3)


@pytest.mark.parametrize("anchored, plain", [("sft+kl", "sft"), ("asft", "dft")])
def test_kl_weight_zero_reduces_to_plain_mode(anchored, plain):
    logits, ref_logits, labels = make_batch()
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    a = compute_loss(x1, labels, anchored, kl_weight=0.0, ref_logits=ref_logits)
    b = compute_loss(x2, labels, plain)
    a.loss.backward()
    b.loss.backward()
    assert torch.equal(a.loss, b.loss) and torch.allclose(x1.grad, x2.grad, atol=1e-9)
    assert a.kl > 0  # the term is still measured and reported


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("anchored, plain", [("sft+kl", "sft"), ("asft", "dft")])
def test_kl_is_zero_when_policy_is_reference(anchored, plain, direction):
    logits, _, labels = make_batch()
    x = logits.clone().requires_grad_()
    out = compute_loss(x, labels, anchored, kl_weight=0.5, ref_logits=logits, kl_direction=direction)
    assert abs(out.kl.item()) < 1e-6
    (g,) = torch.autograd.grad(out.loss, x)
    x2 = logits.clone().requires_grad_()
    (g2,) = torch.autograd.grad(compute_loss(x2, labels, plain).loss, x2)
    assert close(out.loss, compute_loss(logits, labels, plain).loss) and torch.allclose(g, g2, atol=1e-7)


@pytest.mark.parametrize("mode", ["sft", "dft", "asft", "sft-lr", "asft-sft", "iw-sft"])
def test_num_items_global_token_normalisation(mode):
    """Two micro-batches with num_items = tokens of both: their losses sum to the loss of the union.

    Holds for modes whose weights are per token or per sequence (iw-sft); batch-level modes (top-k, anti-outlier) select tokens
    within each micro-batch, as upstream does."""
    logits, ref_logits, labels = make_batch(B=5, seed=3)
    kw = kwargs_for(mode)
    n1 = int((labels[:2, 1:] != -100).sum())
    n_all = int((labels[:, 1:] != -100).sum())
    parts = [
        compute_loss(logits[s], labels[s], mode, ref_logits=ref_logits[s], num_items=n_all, **kw)
        for s in (slice(0, 2), slice(2, 5))
    ]
    whole = compute_loss(logits, labels, mode, ref_logits=ref_logits, **kw)
    assert close(parts[0].loss + parts[1].loss, whole.loss)
    # the documented value: micro-batch 1 contributes its own mean loss scaled by n1 / n_all
    own = compute_loss(logits[:2], labels[:2], mode, ref_logits=ref_logits[:2], **kw)
    assert close(parts[0].loss, own.loss * n1 / n_all)
    assert close(parts[0].ce, own.ce)  # the reported terms stay per-call means
    tensor_items = compute_loss(logits[:2], labels[:2], mode, ref_logits=ref_logits[:2],
                                num_items=torch.tensor(n_all), **kw)
    assert close(tensor_items.loss, parts[0].loss)


@pytest.mark.parametrize("mode", sorted(EXPECTED_MODES))
def test_no_response_tokens_gives_zero_loss_with_graph(mode):
    logits, ref_logits, _ = make_batch()
    labels = torch.full(logits.shape[:2], -100)
    kw = kwargs_for(mode)
    x = logits.clone().requires_grad_()
    out = compute_loss(x, labels, mode, ref_logits=ref_logits, **kw)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.n_tokens == 0 and torch.count_nonzero(x.grad) == 0
    assert not any(torch.isnan(t) for t in (out.ce, out.weighted_ce, out.kl))

    h = torch.randn(3, 11, 8, requires_grad=True)
    w = torch.randn(37, 8, requires_grad=True)
    out = chunked_loss(h, w, labels, mode, ref_hidden=torch.randn(3, 11, 8), **kw)
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.count_nonzero(h.grad) == 0 and torch.count_nonzero(w.grad) == 0


def test_bf16_logits_are_computed_in_fp32():
    logits, ref_logits, labels = make_batch()
    lo = logits.bfloat16()
    out = compute_loss(lo, labels, "asft", kl_weight=0.1, ref_logits=ref_logits.bfloat16())
    ref = compute_loss(lo.float(), labels, "asft", kl_weight=0.1, ref_logits=ref_logits.bfloat16().float())
    assert out.loss.dtype == torch.float32 and torch.equal(out.loss, ref.loss)


# --------------------------------------------------------------------------------------------------
# Errors and the registry
# --------------------------------------------------------------------------------------------------


def test_unknown_mode_suggests_and_lists():
    with pytest.raises(ValueError, match=r"did you mean 'asft'") as e:
        get_mode("asfd")
    for name in EXPECTED_MODES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="unknown loss mode"):
        compute_loss(*make_batch()[::2], "nonsense")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_mode("dft")(lambda stats: stats.p_target)


def test_register_new_mode_and_hparams():
    @register_mode("test-half", batch_level=False)
    def half(stats, *, factor: float = 0.5):
        return torch.full_like(stats.ce, factor)

    try:
        logits, _, labels = make_batch()
        assert close(compute_loss(logits, labels, "test-half").loss, 0.5 * compute_loss(logits, labels, "sft").loss)
        assert close(compute_loss(logits, labels, "test-half", factor=2.0).loss,
                     2 * compute_loss(logits, labels, "sft").loss)
        with pytest.raises(TypeError, match="default"):
            register_mode("test-bad")(lambda stats, *, x: stats.ce)
    finally:
        modes._MODES.pop("test-half", None)
        modes._MODES.pop("test-bad", None)


def test_argument_errors_name_the_argument():
    logits, ref_logits, labels = make_batch()
    with pytest.raises(ValueError, match=r"'keepp'.*sft-topk.*keep"):
        compute_loss(logits, labels, "sft-topk", keepp=0.5)
    with pytest.raises(ValueError, match=r"'alpha'"):
        compute_loss(logits, labels, "sft", alpha=1.0)
    with pytest.raises(ValueError, match=r"kl_weight.*'sft'.*'sft\+kl'"):
        compute_loss(logits, labels, "sft", kl_weight=0.1)
    with pytest.raises(ValueError, match=r"kl_weight.*'dft'.*'asft'"):
        compute_loss(logits, labels, "dft", kl_weight=0.1)
    with pytest.raises(ValueError, match=r"kl_weight.*modes with a KL term"):
        compute_loss(logits, labels, "sft-lr", kl_weight=0.1, ref_logits=ref_logits)
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        compute_loss(logits, labels, "asft", kl_weight=-0.1, ref_logits=ref_logits)
    for mode in ("asft", "sft+kl", "sft-lr", "iw-sft"):
        with pytest.raises(ValueError, match="ref_logits"):
            compute_loss(logits, labels, mode, kl_weight=0.1 if get_mode(mode).uses_kl else 0.0)
        with pytest.raises(ValueError, match="ref_hidden"):
            chunked_loss(torch.randn(3, 11, 4), torch.randn(37, 4), labels, mode)
    with pytest.raises(ValueError, match="kl_direction"):
        compute_loss(logits, labels, "asft", kl_weight=0.1, ref_logits=ref_logits, kl_direction="forward")
    with pytest.raises(ValueError, match="num_items"):
        compute_loss(logits, labels, "sft", num_items=0)
    with pytest.raises(ValueError, match="keep"):
        compute_loss(logits, labels, "sft-topk", keep=1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_loss(torch.randn(3, 11, 4), torch.randn(37, 4), labels, "sft", chunk_size=0)


# --------------------------------------------------------------------------------------------------
# chunked_loss equals compute_loss
# --------------------------------------------------------------------------------------------------


def make_hidden(B=3, T=11, H=16, V=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)
    ref_hidden = hidden + 0.5 * torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) / H**0.5 * 3
    _, _, labels = make_batch(B, T, V, seed=seed)
    return hidden, ref_hidden, weight, labels


def assert_chunked_equals_full(mode, direction, chunk_size, head_grad, hidden, ref_hidden, weight, labels,
                               ref_weight=None, num_items=None, tol=1e-5, **hp):
    kw = kwargs_for(mode, direction)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_(head_grad)
    rw = weight if ref_weight is None else ref_weight
    full = compute_loss(h1 @ w1.T, labels, mode, ref_logits=ref_hidden @ rw.T, num_items=num_items, **kw, **hp)
    g_full = torch.autograd.grad(full.loss, [h1, w1] if head_grad else [h1])

    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_(head_grad)
    chunk = chunked_loss(h2, w2, labels, mode, ref_hidden=ref_hidden, ref_head_weight=ref_weight,
                         chunk_size=chunk_size, num_items=num_items, **kw, **hp)
    g_chunk = torch.autograd.grad(chunk.loss, [h2, w2] if head_grad else [h2])

    assert chunk.n_tokens == full.n_tokens
    for a, b in [(chunk.loss, full.loss), (chunk.ce, full.ce), (chunk.weighted_ce, full.weighted_ce),
                 (chunk.kl, full.kl), *zip(g_chunk, g_full)]:
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item())), (a - b).abs().max()


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("mode", sorted(EXPECTED_MODES))
def test_chunked_equals_full_logits(mode, direction):
    hidden, ref_hidden, weight, labels = make_hidden()
    for chunk_size in (1, 7, 256):
        for head_grad in (True, False):
            assert_chunked_equals_full(mode, direction, chunk_size, head_grad, hidden, ref_hidden, weight, labels)
    assert_chunked_equals_full(mode, direction, 5, True, hidden, ref_hidden, weight, labels, num_items=100)


@pytest.mark.parametrize("mode", ["asft", "sft-lr", "iw-sft"])
def test_chunked_with_separate_reference_head(mode):
    """Full fine-tuning: the reference is a frozen copy with its own head."""
    hidden, ref_hidden, weight, labels = make_hidden(seed=1)
    ref_weight = weight + 0.3 * torch.randn_like(weight)
    for direction in DIRECTIONS:
        assert_chunked_equals_full(mode, direction, 4, True, hidden, ref_hidden, weight, labels, ref_weight=ref_weight)


@pytest.mark.parametrize("head_dtype", [torch.float32, torch.bfloat16])
def test_chunked_bf16_hidden(head_dtype):
    hidden, ref_hidden, weight, labels = make_hidden(seed=2)
    h = hidden.bfloat16().requires_grad_()
    w = weight.to(head_dtype).requires_grad_()
    out = chunked_loss(h, w, labels, "asft", ref_hidden=ref_hidden.bfloat16(), kl_weight=0.1, chunk_size=7)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and h.grad.dtype == torch.bfloat16 and w.grad.dtype == head_dtype
    # fp32 math on the same (bf16-valued) inputs
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref = compute_loss(h32 @ w32.T, labels, "asft", ref_logits=ref_hidden.bfloat16().float() @ w32.detach().T,
                       kl_weight=0.1)
    ref.loss.backward()
    assert torch.allclose(out.loss, ref.loss, rtol=1e-5)
    assert torch.allclose(h.grad.float(), h32.grad, rtol=1e-2, atol=1e-4)  # grad rounded to bf16
    assert torch.allclose(w.grad.float(), w32.grad, rtol=1e-2, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    mode=st.sampled_from(sorted(EXPECTED_MODES)),
    direction=st.sampled_from(DIRECTIONS),
    B=st.integers(1, 3),
    T=st.integers(2, 9),
    chunk_size=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    mask_p=st.floats(0.0, 0.9),
)
def test_chunked_equals_full_random_shapes(mode, direction, B, T, chunk_size, seed, mask_p):
    g = torch.Generator().manual_seed(seed)
    H, V = 8, 19
    hidden = torch.randn(B, T, H, generator=g)
    ref_hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < mask_p] = -100
    assert_chunked_equals_full(mode, direction, chunk_size, True, hidden, ref_hidden, weight, labels)


# --------------------------------------------------------------------------------------------------
# Real models: TRL's DFT, and a LoRA-wrapped Qwen2
# --------------------------------------------------------------------------------------------------


def tiny_qwen2(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config)


def model_batch(V=300, B=2, T=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100  # prompt
    labels[1, -3:] = -100  # padding
    return ids, labels


@pytest.mark.parametrize("num_items", [None, 40])
def test_dft_equals_trl(num_items):
    """TRL 1.16 has no standalone DFT function: its DFT is inline in ``SFTTrainer.compute_loss``
    (``loss_type="dft"``): per_token = -log p(y) * sg(p(y)) over response tokens (its fused LM head),
    summed and divided by the number of response tokens, or by ``num_items_in_batch`` when given, the
    same normalisation as ours. We call that method on a minimal stand-in for the trainer (pinned
    trl==1.16.0; a failure here may mean TRL's internals moved)."""
    trl = pytest.importorskip("trl")
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_qwen2().eval()  # eval: skips the trainer's train-only token bookkeeping
    ids, labels = model_batch()
    logits = model(input_ids=ids).logits
    ours = compute_loss(logits, labels, "dft", num_items=num_items).loss
    g_ours = torch.autograd.grad(ours, list(model.parameters()))

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    accelerator = types.SimpleNamespace(parallelism_config=None, gather_for_metrics=lambda x: x, num_processes=1)
    trainer = types.SimpleNamespace(
        model=model, aux_loss_enabled=False, accelerator=accelerator, compute_loss_func=None, label_smoother=None,
        args=types.SimpleNamespace(loss_type="dft", average_tokens_across_devices=False, max_length=None),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0, get_tp_size=lambda: 1,
    )
    theirs = trl.SFTTrainer.compute_loss(trainer, model, {"input_ids": ids, "labels": labels},
                                         num_items_in_batch=num_items)
    g_theirs = torch.autograd.grad(theirs, list(model.parameters()))
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    for a, b in zip(g_ours, g_theirs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lora_qwen2_reference_by_disable_adapter(direction):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_qwen2(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    model.train()
    ids, labels = model_batch()
    decoder = model.get_base_model().get_decoder()
    head = model.get_base_model().get_output_embeddings().weight  # frozen under LoRA
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora) and not head.requires_grad

    hidden = decoder(input_ids=ids).last_hidden_state
    with torch.no_grad(), model.disable_adapter():
        ref_hidden = decoder(input_ids=ids).last_hidden_state
    out = chunked_loss(hidden, head, labels, "asft", ref_hidden=ref_hidden, kl_weight=0.1,
                       kl_direction=direction, chunk_size=7)
    assert abs(out.kl.item()) < 1e-6  # lora_B = 0 at init: the adapter is the identity
    g_chunk = torch.autograd.grad(out.loss, lora)
    # the trainer passes the reference head explicitly, as a detached view of the same weight
    again = chunked_loss(decoder(input_ids=ids).last_hidden_state, head, labels, "asft", ref_hidden=ref_hidden,
                         ref_head_weight=head.detach(), kl_weight=0.1, kl_direction=direction, chunk_size=7)
    assert torch.equal(again.loss, out.loss)

    logits = model(input_ids=ids).logits
    with torch.no_grad(), model.disable_adapter():
        ref_logits = model(input_ids=ids).logits
    full = compute_loss(logits, labels, "asft", ref_logits=ref_logits, kl_weight=0.1, kl_direction=direction)
    g_full = torch.autograd.grad(full.loss, lora)
    assert torch.allclose(out.loss, full.loss, rtol=1e-5)
    assert torch.allclose(out.loss, compute_loss(logits, labels, "dft").loss, rtol=1e-5)
    for a, b in zip(g_chunk, g_full):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-8)
    lora_b = [g for (n, _), g in zip([(n, p) for n, p in model.named_parameters() if "lora_" in n], g_chunk)
              if "lora_B" in n]
    assert all(g.abs().sum() > 0 for g in lora_b)  # gradients reach the adapters


def test_chunked_under_no_grad_gives_the_terms_only():
    hidden, ref_hidden, weight, labels = make_hidden(seed=4)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.no_grad():
        out = chunked_loss(h, w, labels, "asft", ref_hidden=ref_hidden, kl_weight=0.1, chunk_size=5)
    full = compute_loss(hidden @ weight.T, labels, "asft", ref_logits=ref_hidden @ weight.T, kl_weight=0.1)
    assert not out.loss.requires_grad and torch.allclose(out.loss, full.loss, rtol=1e-5)
    assert torch.allclose(out.kl, full.kl, rtol=1e-5) and out.n_tokens == full.n_tokens
