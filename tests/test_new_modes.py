"""The loss modes asft-sft (DFT + alpha * SFT, the paper's Figure 4) and iw-sft (importance-weighted SFT,
Qin & Springenberg 2025, as emmyqin/iw_sft computes it): against independent straightforward
implementations (loss and gradient), chunked vs full logits, the stable API, hyper-parameter errors, a
real training run through the trainer, and a config that lists both modes.

The references here are written from the formulas in docs/losses.md, in float64, with loops over
sequences and tokens; they call no helper of the library.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import asft.losses
from asft.train.chunked_loss import chunked_loss
from asft.train.losses import TokenStats, compute_loss, get_mode
from asft.workflow.config import parse_config
from asft.workflow.plan import build_plan
from tests.conftest import RUNTIME, train_settings
from tests.test_config import default_raw

NEW_MODES = ("asft-sft", "iw-sft")
HPARAMS = {
    "asft-sft": [{}, {"alpha": 0.0}, {"alpha": 0.01}, {"alpha": 1.0}, {"alpha": 10.0}],
    "iw-sft": [{}, {"temp": 2.0}, {"temp": 0.0}, {"max_weight": 1.2}, {"temp": 0.5, "max_weight": 3.0}],
}


def batch(B=4, T=13, V=29, seed=0, scale=2.0, ref_noise=0.7):
    """Logits, reference logits near them, labels with a prompt, right padding and one empty row."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(B, T, V, generator=g)
    ref_logits = logits + ref_noise * torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    for b in range(B):
        labels[b, : 2 + b] = -100  # prompt
        if b:
            labels[b, T - b :] = -100  # right padding
    labels[B - 1] = -100  # a row without response tokens (padding row of a micro-batch)
    return logits, ref_logits, labels


# --------------------------------------------------------------------------------------------------
# Independent references (float64, loops)
# --------------------------------------------------------------------------------------------------


def reference_loss(logits, ref_logits, labels, mode, num_items=None, **hp):
    """sum over response tokens of w * (-log p(y)) / D, token by token; returns (loss, weights by token)."""
    B, T, _ = logits.shape
    terms, weights = [], []
    for b in range(B):
        rows = []  # (log p(y), log q(y)) of the row's response tokens
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            log_p = torch.log_softmax(logits[b, t].double(), -1)[y]
            log_q = torch.log_softmax(ref_logits[b, t].double(), -1)[y]
            rows.append((log_p, log_q))
        if not rows:
            continue
        if mode == "iw-sft":
            mean_log_ratio = sum(float(lp.detach()) - float(lq) for lp, lq in rows) / len(rows)
            w_seq = min(max(math.exp(hp.get("temp", 1.0) * mean_log_ratio), 0.0), hp.get("max_weight", 16.0))
        for log_p, _ in rows:
            if mode == "asft-sft":  # -sg(p) log p - alpha log p
                w = math.exp(float(log_p.detach())) + hp.get("alpha", 0.1)
            else:
                w = w_seq
            terms.append(-w * log_p)
            weights.append(w)
    d = len(terms) if num_items is None else num_items
    return torch.stack(terms).sum() / d, torch.tensor(weights, dtype=torch.float64)


def close(a, b, tol=1e-6):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("mode", NEW_MODES)
def test_loss_and_gradient_match_the_reference(mode):
    for seed in (0, 1):
        logits, ref_logits, labels = batch(seed=seed)
        for hp in HPARAMS[mode]:
            for num_items in (None, 57):
                x = logits.clone().requires_grad_()
                out = compute_loss(x, labels, mode, ref_logits=ref_logits, num_items=num_items, **hp)
                (g,) = torch.autograd.grad(out.loss, x)
                x64 = logits.double().requires_grad_()
                want, w = reference_loss(x64, ref_logits, labels, mode, num_items=num_items, **hp)
                (g64,) = torch.autograd.grad(want, x64)
                assert close(out.loss, want), (hp, out.loss, want)
                assert close(g, g64), (hp, (g - g64).abs().max())
                assert out.n_tokens == w.numel()
                assert close(out.weighted_ce * out.n_tokens, (want * (num_items or w.numel())).detach())


def test_iw_sft_weights_are_per_sequence_detached_and_clipped():
    """One weight per sequence (shared by its tokens), exp(temp * mean log(p/q)) clipped to [0, max_weight]."""
    ce = torch.tensor([0.5, 1.0, 2.0, 0.1, 0.3], requires_grad=True)
    ref_p = torch.tensor([0.5, 0.2, 0.1, 0.9, 0.4])
    seq = torch.tensor([0, 0, 0, 2, 2])  # row 1 has no response tokens
    stats = TokenStats(ce=ce, p_target=(-ce).exp(), ref_p_target=ref_p, seq=seq)
    w = get_mode("iw-sft").weights(stats)
    log_ratio = [-0.5 - math.log(0.5), -1.0 - math.log(0.2), -2.0 - math.log(0.1), -0.1 - math.log(0.9),
                 -0.3 - math.log(0.4)]
    row0, row2 = math.exp(sum(log_ratio[:3]) / 3), math.exp(sum(log_ratio[3:]) / 2)
    assert torch.allclose(w, torch.tensor([row0] * 3 + [row2] * 2), rtol=1e-6)
    assert not w.requires_grad
    assert torch.allclose(get_mode("iw-sft").weights(stats, temp=2.0), torch.tensor([row0**2] * 3 + [row2**2] * 2),
                          rtol=1e-6)
    clipped = get_mode("iw-sft").weights(stats, max_weight=1.0)
    assert torch.allclose(clipped, torch.tensor([min(row0, 1.0)] * 3 + [min(row2, 1.0)] * 2), rtol=1e-6)
    # the reference assigns probability 0 (log q = -inf, as upstream's log of the softmax): clipped to max_weight
    zero = TokenStats(ce=ce.detach(), p_target=(-ce.detach()).exp(), ref_p_target=torch.tensor([0.0, 0.2, 0.1, 0.9, 0.4]),
                      seq=seq)
    assert get_mode("iw-sft").weights(zero)[:3].tolist() == [16.0] * 3


def test_iw_sft_policy_equal_to_reference_is_sft():
    """p == q gives weight 1 for every sequence: the loss and gradient are SFT's (LoRA's first step)."""
    logits, _, labels = batch(seed=2)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    a = compute_loss(x1, labels, "iw-sft", ref_logits=logits)
    b = compute_loss(x2, labels, "sft")
    a.loss.backward()
    b.loss.backward()
    assert close(a.loss, b.loss) and close(x1.grad, x2.grad) and close(a.weighted_ce, a.ce)


def test_asft_sft_is_dft_plus_alpha_sft_through_the_stable_api():
    logits, _, labels = batch(seed=3)
    for alpha in (0.0, 0.1, 2.5):
        out = asft.losses.compute_loss(logits, labels, "asft-sft", alpha=alpha)
        dft = asft.losses.compute_loss(logits, labels, "dft")
        sft = asft.losses.compute_loss(logits, labels, "sft")
        assert close(out.loss, dft.loss + alpha * sft.loss)
        assert close(out.ce, sft.ce) and close(out.weighted_ce, dft.weighted_ce + alpha * sft.ce)
        assert out.kl == 0
    assert torch.equal(asft.losses.compute_loss(logits, labels, "asft-sft", alpha=0.0).loss,
                       asft.losses.compute_loss(logits, labels, "dft").loss)
    # the default: 0.1
    assert close(asft.losses.compute_loss(logits, labels, "asft-sft").loss,
                 asft.losses.compute_loss(logits, labels, "asft-sft", alpha=0.1).loss)


def test_registry_entries():
    a, i = get_mode("asft-sft"), get_mode("iw-sft")
    assert dict(a.defaults) == {"alpha": 0.1} and not a.needs_reference and not a.uses_kl and not a.batch_level
    assert dict(i.defaults) == {"temp": 1.0, "max_weight": 16.0}
    assert i.needs_reference and i.needs_ref_probs and not i.uses_kl and i.batch_level
    assert a.description and i.description


# --------------------------------------------------------------------------------------------------
# chunked == full
# --------------------------------------------------------------------------------------------------


def chunked_vs_full(mode, hidden, ref_hidden, weight, labels, *, chunk_size, head_grad, num_items=None,
                    ref_weight=None, **hp):
    """(|loss diff|, max |grad diff| over hidden (and head)) of chunked_loss against compute_loss."""
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_(head_grad)
    rw = weight if ref_weight is None else ref_weight
    full = compute_loss(h1 @ w1.T, labels, mode, ref_logits=ref_hidden @ rw.T, num_items=num_items, **hp)
    g_full = torch.autograd.grad(full.loss, [h1, w1] if head_grad else [h1])
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_(head_grad)
    chunk = chunked_loss(h2, w2, labels, mode, ref_hidden=ref_hidden, ref_head_weight=ref_weight,
                         chunk_size=chunk_size, num_items=num_items, **hp)
    g_chunk = torch.autograd.grad(chunk.loss, [h2, w2] if head_grad else [h2])
    assert chunk.n_tokens == full.n_tokens
    for a, b in ((chunk.ce, full.ce), (chunk.weighted_ce, full.weighted_ce), (chunk.kl, full.kl)):
        assert close(a, b, 1e-5)
    d_grad = max((a - b).abs().max().item() / max(1.0, b.abs().max().item()) for a, b in zip(g_chunk, g_full))
    return abs(chunk.loss.item() - full.loss.item()) / max(1.0, abs(full.loss.item())), d_grad


@pytest.mark.parametrize("mode", NEW_MODES)
def test_chunked_equals_full(mode):
    worst = [0.0, 0.0]
    for seed in (0, 1, 2):
        g = torch.Generator().manual_seed(seed)
        B, T, H, V = 4, 13, 16, 29
        hidden = torch.randn(B, T, H, generator=g)
        ref_hidden = hidden + 0.4 * torch.randn(B, T, H, generator=g)
        weight = torch.randn(V, H, generator=g) / H**0.5 * 3
        _, _, labels = batch(B, T, V, seed=seed)
        ref_weight = weight + 0.2 * torch.randn(V, H, generator=g)
        for hp in HPARAMS[mode]:
            for chunk_size in (1, 5, 256):
                for head_grad in (True, False):
                    for extra in ({}, {"num_items": 77}, {"ref_weight": ref_weight}):
                        dl, dg = chunked_vs_full(mode, hidden, ref_hidden, weight, labels, chunk_size=chunk_size,
                                                 head_grad=head_grad, **extra, **hp)
                        worst = [max(worst[0], dl), max(worst[1], dg)]
    print(f"{mode}: chunked vs full, max relative |dloss| {worst[0]:.2e}, max relative |dgrad| {worst[1]:.2e}")
    assert worst[0] < 1e-5 and worst[1] < 1e-5


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1x", None, True])
def test_bad_alpha_is_a_clear_error(bad):
    logits, ref_logits, labels = batch()
    with pytest.raises(ValueError, match=r"'asft-sft': alpha must be a finite number >= 0"):
        compute_loss(logits, labels, "asft-sft", alpha=bad)
    with pytest.raises(ValueError, match=r"'asft-sft': alpha"):
        chunked_loss(torch.randn(4, 13, 8), torch.randn(29, 8), labels, "asft-sft", alpha=bad)


def test_bad_iw_sft_hyper_parameters_and_arguments():
    logits, ref_logits, labels = batch()
    for name, bad in (("temp", -1.0), ("temp", float("nan")), ("max_weight", 0.0), ("max_weight", float("inf"))):
        with pytest.raises(ValueError, match=rf"'iw-sft': {name} must be a finite number"):
            compute_loss(logits, labels, "iw-sft", ref_logits=ref_logits, **{name: bad})
    with pytest.raises(ValueError, match=r"'alhpa'.*asft-sft.*alpha"):
        compute_loss(logits, labels, "asft-sft", alhpa=0.5)
    with pytest.raises(ValueError, match=r"'alpha'.*iw-sft.*max_weight, temp|'alpha'.*iw-sft.*temp"):
        compute_loss(logits, labels, "iw-sft", ref_logits=ref_logits, alpha=0.5)
    with pytest.raises(ValueError, match="ref_logits"):
        compute_loss(logits, labels, "iw-sft")
    with pytest.raises(ValueError, match="ref_hidden"):
        chunked_loss(torch.randn(4, 13, 8), torch.randn(29, 8), labels, "iw-sft")
    with pytest.raises(ValueError, match=r"kl_weight.*'asft-sft'"):
        compute_loss(logits, labels, "asft-sft", kl_weight=0.1)
    compute_loss(logits, labels, "asft-sft")  # no reference needed


# --------------------------------------------------------------------------------------------------
# Through the trainer, and in a config's plan
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", NEW_MODES)
def test_a_real_training_run(tmp_path, tiny_base, tiny_dataset, mode):
    from asft.train.trainer import train_run

    hparams = {"alpha": 0.5} if mode == "asft-sft" else {}
    out = tmp_path / "out"
    out.mkdir()
    stats = train_run(train_settings(mode, max_steps=3, hparams=hparams), RUNTIME, model_dir=tiny_base,
                      dataset_dir=tiny_dataset, out_dir=out, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert stats["steps"] == 3
    logged = [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in e]
    assert len(logged) == 3 and not any("kl" in e for e in logged)
    assert all(math.isfinite(e["loss"]) for e in logged)
    first = logged[0]
    if mode == "iw-sft":  # LoRA B starts at 0: policy == reference, every weight is 1
        assert first["weighted_ce"] == pytest.approx(first["ce"], rel=1e-5)
    else:  # w = p + alpha with 0 < p < 1
        assert 0.5 * first["ce"] < first["weighted_ce"] < 1.5 * first["ce"]
    from safetensors.torch import load_file

    adapter = load_file(out / "model" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_config_with_the_new_modes_validates_and_plans():
    raw = default_raw()
    raw["modes"] = ["asft-sft", "iw-sft"]
    raw["loss"] = {**raw.get("loss", {}), "hparams": {"asft-sft": {"alpha": 0.5}}}
    plan = build_plan(parse_config(raw))
    runs = {node.labels["mode"]: node for node in plan.nodes["train"].values()}
    assert set(runs) == {"asft-sft", "iw-sft"}
    assert runs["asft-sft"].settings.hparams == {"alpha": 0.5}
    assert runs["iw-sft"].settings.hparams == {"temp": 1.0, "max_weight": 16.0}
    for node in runs.values():
        assert node.settings.kl_weight == 0.0 and node.settings.kl_direction is None
    assert plan.nodes["merge"] and plan.nodes["score"]

    raw["loss"]["hparams"]["asft-sft"]["alpha"] = 1.0  # alpha re-trains asft-sft only
    again = build_plan(parse_config(raw))
    before = {n.labels["mode"]: {k for k, m in plan.nodes["train"].items() if m.labels["mode"] == n.labels["mode"]}
              for n in plan.nodes["train"].values()}
    after = {n.labels["mode"]: {k for k, m in again.nodes["train"].items() if m.labels["mode"] == n.labels["mode"]}
             for n in again.nodes["train"].values()}
    assert before["iw-sft"] == after["iw-sft"] and before["asft-sft"].isdisjoint(after["asft-sft"])

    raw["loss"]["hparams"] = {"asft-sft": {"alhpa": 0.5}}
    with pytest.raises(Exception, match="alhpa"):
        parse_config(raw)
