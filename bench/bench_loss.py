"""Time and memory of one training step with the upstream-style loss vs the chunked loss.

A random-initialised tiny Qwen2 body with a real-size vocabulary, wrapped with LoRA, runs a full
training step (forward and backward of the body and the loss; for KL modes also the no-grad reference
forward under ``disable_adapter``) with

  upstream: ``compute_loss`` on the model's full logits, reference logits from a second forward
            (upstream's code also softmaxes prompt and padding positions; ``compute_loss`` selects the
            response positions first, so this is a slightly lighter "upstream style");
  chunked:  ``chunked_loss`` on the decoder's hidden states and the head weight.

The floor is (sft step + one no-grad reference forward) / sft step, measured in the sft process: the
reference forward is the full model for upstream, the body plus the chunked head (softmax of the
response positions, no gradient) for chunked.

Each (implementation, mode) runs in a fresh subprocess. Time: median wall time of the timed steps after
warm-up. Memory: peak resident set size during a step minus the resident set size just before it
(Linux: the peak counter VmHWM is reset through /proc/self/clear_refs before each step; the largest
value over the timed steps is reported). Where that reset is not available, the fallback is
``getrusage`` max RSS after the steps minus the RSS before the first step (marked "*"). Workers run
with glibc's mmap threshold fixed at 4 MiB so that freed tensors are returned to the OS between steps.

    python bench/bench_loss.py                  # defaults: hidden 256, 2 layers, vocab 151936, 2 x 512
    python bench/bench_loss.py --seq 256 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

IMPLS = ("upstream", "chunked")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256, help="hidden size of the body")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers")
    ap.add_argument("--vocab", type=int, default=151936, help="vocabulary size (Qwen2.5: 151936)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512, help="sequence length")
    ap.add_argument("--prompt", type=int, default=128, help="masked prompt tokens per row")
    ap.add_argument("--lora-r", type=int, default=8, help="LoRA rank on q_proj, v_proj (alpha = 2r)")
    ap.add_argument("--modes", default="sft,asft,sft+kl", help="comma-separated loss modes")
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma-separated: upstream, chunked")
    ap.add_argument("--kl-weight", type=float, default=0.1)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# Worker: one (implementation, mode) in its own process
# --------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def build(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(args.seed)
    heads = max(1, args.hidden // 64)
    config = Qwen2Config(
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        vocab_size=args.vocab,
        max_position_embeddings=max(args.seq, 64),
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config)
    # init_lora_weights=False: random A and B, so the policy differs from the reference and KL > 0
    lora = LoraConfig(
        r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
    )
    model = get_peft_model(model, lora)
    model.train()
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    labels = ids.clone()
    labels[:, : args.prompt] = -100
    return model, ids, labels


def make_step(impl, mode, model, ids, labels, args):
    from asft.train.chunked_loss import chunked_loss
    from asft.train.losses import compute_loss, get_mode

    import torch

    spec = get_mode(mode)
    kl = {"kl_weight": args.kl_weight} if spec.uses_kl else {}
    base = model.get_base_model()
    decoder, head = base.get_decoder(), base.get_output_embeddings().weight

    def step():
        if impl == "upstream":
            logits = model(input_ids=ids).logits  # (B, T, V); labels not passed: HF would build another copy
            ref_logits = None
            if spec.needs_reference:
                with torch.no_grad(), model.disable_adapter():
                    ref_logits = model(input_ids=ids).logits
            out = compute_loss(logits, labels, spec, ref_logits=ref_logits, **kl)
        else:
            hidden = decoder(input_ids=ids).last_hidden_state  # (B, T, H)
            ref_hidden = None
            if spec.needs_reference:
                with torch.no_grad(), model.disable_adapter():
                    ref_hidden = decoder(input_ids=ids).last_hidden_state
            out = chunked_loss(hidden, head, labels, spec, ref_hidden=ref_hidden, chunk_size=args.chunk_size, **kl)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        return out.loss.item()

    def ref_forward():  # one no-grad reference forward (body and head), what a KL mode adds at least
        with torch.no_grad(), model.disable_adapter():
            if impl == "upstream":
                model(input_ids=ids).logits
            else:  # the lean head: softmax of the response positions, chunk by chunk
                ref_hidden = decoder(input_ids=ids).last_hidden_state
                chunked_loss(ref_hidden, head, labels, "sft", chunk_size=args.chunk_size)

    return step, ref_forward


def worker(args):
    import gc

    import torch

    torch.set_num_threads(args.threads)
    impl, mode = args.worker
    model, ids, labels = build(args)
    step, ref_forward = make_step(impl, mode, model, ids, labels, args)
    for _ in range(args.warmup):
        step()
    gc.collect()

    exact = _reset_peak_rss()
    rss_before_first = _status_kib("VmRSS") or 0
    times, peaks, loss = [], [], None
    for _ in range(args.steps):
        gc.collect()
        if exact:
            _reset_peak_rss()
        before = _status_kib("VmRSS")
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
        if exact:
            peaks.append(_status_kib("VmHWM") - before)
    if not exact:  # ru_maxrss is in KiB on Linux
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_first)

    ref_times = []
    if mode == "sft":
        for _ in range(args.steps):
            t0 = time.perf_counter()
            ref_forward()
            ref_times.append(time.perf_counter() - t0)
    print(json.dumps({
        "impl": impl, "mode": mode, "step_s": statistics.median(times), "peak_mib": max(peaks) / 1024,
        "exact_peak": exact, "loss": loss, "ref_fwd_s": statistics.median(ref_times) if ref_times else None,
    }))


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def run_config(impl, mode, argv):
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", impl, mode]
    # Fixed glibc mmap threshold: freed blocks >= 4 MiB go back to the OS, so the RSS before a step is
    # a true baseline (with the dynamic threshold, glibc keeps some freed tensors and hides their reuse).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(4 << 20)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {impl} {mode} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    modes = args.modes.split(",")
    impls = args.impls.split(",")
    print(
        f"Qwen2 body hidden={args.hidden} layers={args.layers} vocab={args.vocab}, LoRA r={args.lora_r} on q,v; "
        f"batch {args.batch} x seq {args.seq} ({args.prompt} prompt tokens masked); fp32 CPU, "
        f"{args.threads} thread(s); kl_weight {args.kl_weight}; chunk {args.chunk_size}; "
        f"median of {args.steps} steps after {args.warmup} warm-up",
        flush=True,
    )
    t_start = time.perf_counter()
    results = {}
    for impl in impls:
        for mode in modes:
            results[impl, mode] = r = run_config(impl, mode, argv)
            print(f"  done {impl:9s} {mode:7s} in {time.perf_counter() - t_start:6.1f} s total", flush=True)

    print()
    print("| impl     | mode    | step (s) | peak over baseline (MiB) | loss       |")
    print("|----------|---------|---------:|-------------------------:|-----------:|")
    for (impl, mode), r in results.items():
        star = "" if r["exact_peak"] else "*"
        print(f"| {impl:8s} | {mode:7s} | {r['step_s']:8.3f} | {r['peak_mib']:23.0f}{star} | {r['loss']:.6f} |")
    print()
    for impl in impls:
        sft = results.get((impl, "sft"))
        if sft is None:
            continue
        for mode in modes:
            if mode != "sft" and (impl, mode) in results:
                r = results[impl, mode]
                print(f"{impl:8s} {mode}/sft step time  : {r['step_s'] / sft['step_s']:.2f}")
                print(f"{impl:8s} {mode}/sft peak memory: {r['peak_mib'] / max(sft['peak_mib'], 1e-9):.2f}")
        floor = (sft["step_s"] + sft["ref_fwd_s"]) / sft["step_s"]
        print(f"{impl:8s} floor (sft step + one no-grad reference forward) / sft step: {floor:.2f}"
              f"  (reference forward {sft['ref_fwd_s']:.3f} s)")
    if ("upstream", "asft") in results and ("chunked", "asft") in results:
        u, c = results["upstream", "asft"], results["chunked", "asft"]
        print(f"asft chunked vs upstream: step time {c['step_s'] / u['step_s']:.2f}x, "
              f"peak memory {c['peak_mib'] / u['peak_mib']:.2f}x, |loss difference| {abs(c['loss'] - u['loss']):.1e}")
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
