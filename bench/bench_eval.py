"""Evaluation throughput: batched vs one-by-one generation (hf backend), and vLLM vs hf on a GPU.

CPU (default): pre-trains a small embedded base model in-process (a few hundred steps, so its
completions have realistic length), then generates greedy completions for the same prompts with
batch size 1 and with a large batch, and grades them. Prints completions/s and the ratio measured
in this one run. With --gpu and a CUDA device: a random-initialised ~0.5B Qwen2 (Qwen2.5-0.5B shape)
generates with hf and with vLLM, printing tokens/s of each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def cpu_bench(args: argparse.Namespace) -> None:
    from asft.embedded.pretrain import pretrain
    from asft.embedded.spec import EmbeddedBaseSpec
    from asft.embedded.tasks import split
    from asft.eval.generation import Sampling, generate_hf
    from asft.eval.grading import grade_many

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        pretrain(EmbeddedBaseSpec(steps=args.pretrain_steps), base, progress=False)
        tests = [ex for task in ("add", "sub", "mul") for ex in split(task, 0)[1]][: args.problems]
        prompts = [ex.instruction for ex in tests]
        sampling = Sampling(max_new_tokens=32)
        timings, outputs = {}, {}
        for batch in (1, args.batch):
            start = time.perf_counter()
            outputs[batch] = generate_hf(base, prompts, sampling, batch_size=batch, progress=False)
            timings[batch] = time.perf_counter() - start
        start = time.perf_counter()
        verdicts = grade_many([(c[0], ex.answer) for c, ex in zip(outputs[args.batch], tests)])
        grade_s = time.perf_counter() - start
    same = outputs[1] == outputs[args.batch]
    print(f"{len(prompts)} problems, greedy, max_new_tokens 32, {args.threads} thread(s)")
    print(f"{'batch':>6} {'seconds':>8} {'completions/s':>14}")
    for batch, seconds in timings.items():
        print(f"{batch:>6} {seconds:>8.2f} {len(prompts) / seconds:>14.1f}")
    print(f"batched / one-by-one throughput: {timings[1] / timings[args.batch]:.1f}x")
    print(f"batched completions identical to one-by-one: {same}")
    print(f"grading: {len(verdicts)} completions in {grade_s:.3f} s; accuracy {100 * sum(verdicts) / len(verdicts):.1f}%")


def gpu_bench(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from asft.embedded.tokenizer import build_tokenizer
    from asft.eval.generation import Sampling, generate_hf, generate_vllm

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "qwen05b"
        config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                             num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                             tie_word_embeddings=True, torch_dtype="bfloat16")
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(folder)
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(folder)
        AutoTokenizer.from_pretrained(folder)
        prompts = [f"{a}+{b}=" for a in range(10, 10 + args.problems // 10) for b in range(10, 20)]
        sampling = Sampling(max_new_tokens=args.gpu_tokens, temperature=1.0)
        results = {}
        for name, fn in (("hf", lambda: generate_hf(folder, prompts, sampling, batch_size=args.batch, progress=False)),
                         ("vllm", lambda: generate_vllm(folder, prompts, sampling))):
            start = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - start
            tokens = sum(len(tokenizer(c[0])["input_ids"]) for c in out)
            results[name] = tokens / seconds
            print(f"{name:>5}: {len(prompts)} prompts, {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.0f} tokens/s")
        print(f"vllm / hf tokens/s: {results['vllm'] / results['hf']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--gpu", action="store_true", help="vLLM vs hf on a CUDA device")
    parser.add_argument("--gpu-tokens", type=int, default=256)
    args = parser.parse_args()
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device")
        gpu_bench(args)
    else:
        cpu_bench(args)


if __name__ == "__main__":
    main()
