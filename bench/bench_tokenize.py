"""Throughput of the tokenize stage (examples/s), one process vs several (datasets.map num_proc).

A generated alpaca-style set (default 20,000 rows, NuminaMath-CoT-like lengths: a ~250-character
problem, a ~1,300-character worked solution with LaTeX and a \\boxed{} answer) goes through
`asft.train.data.tokenize_dataset` end to end: read train.jsonl, template, tokenize, mask, filter,
save_to_disk. Two tokenizers:

  embedded: the workflow's own Qwen2 tokenizer (byte-level, no merges: one token per byte, so
            ~1,700 tokens per example; the worst case for the Python side of the stage);
  bpe:      a real-size byte-level BPE (default 32,000 entries) trained in-process with `tokenizers`
            on the generated text, behind transformers' Qwen2Tokenizer (Qwen2's pre-tokenizer and
            special tokens), so the cost per example is that of a real model's tokenizer.

TOKENIZERS_PARALLELISM is false so that num_proc alone decides the parallelism (with it on, one
process already spreads each batch over the Rust thread pool). Each configuration runs `--repeats`
times; the best wall time is reported, with the CPU seconds of that run (this process and the map
workers): on a shared machine the wall time depends on the load, the CPU time much less.

    python bench/bench_tokenize.py                       # 20k rows, both tokenizers, num_proc 1 and 2
    python bench/bench_tokenize.py --rows 5000 --tokenizer bpe --num-proc 1 2 4
"""

from __future__ import annotations

import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

WORDS = ("the", "of", "a", "is", "we", "find", "that", "let", "be", "and", "so", "number", "sum", "value",
         "integer", "function", "equation", "solve", "then", "therefore", "since", "thus", "real", "positive",
         "triangle", "circle", "area", "length", "probability", "each", "all", "which", "such", "given",
         "substituting", "simplify", "both", "sides", "gives", "factor", "root", "roots", "coefficient")


def _sentence(rng: random.Random, words: int) -> str:
    parts = []
    for _ in range(words):
        roll = rng.random()
        if roll < 0.12:
            parts.append(f"${rng.randint(2, 999)}{rng.choice('+-*/')}{rng.choice('xyzabn')}^{rng.randint(2, 5)}$")
        elif roll < 0.2:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 6))))
        else:
            parts.append(rng.choice(WORDS))
    return " ".join(parts).capitalize() + "."


def generate_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        problem = " ".join(_sentence(rng, rng.randint(10, 25)) for _ in range(2))
        steps = [_sentence(rng, rng.randint(12, 30)) for _ in range(rng.randint(6, 11))]
        answer = rng.randint(1, 10 ** 4)
        solution = "\n\n".join(steps) + f"\n\nTherefore, the answer is $\\boxed{{{answer}}}$."
        rows.append({"instruction": problem, "response": solution})
    return rows


def embedded_tokenizer():
    from asft.embedded.tokenizer import build_tokenizer

    return build_tokenizer()


def bpe_tokenizer(rows: list[dict[str, str]], vocab_size: int):
    """A byte-level BPE trained on the rows, wrapped as a Qwen2Tokenizer (real pre-tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator((r["instruction"] + "\n" + r["response"] for r in rows), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab = {token: i for token, i in model["vocab"].items() if token not in specials}
    vocab = {token: i for i, token in enumerate(sorted(vocab, key=vocab.get))}
    for token in specials:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=specials[0],
                          pad_token=specials[0], additional_special_tokens=specials[1:], model_max_length=1 << 30)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the map workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_once(data_dir: Path, model_dir: Path, num_proc: int, max_length: int) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds and stats of one tokenize stage."""
    from asft.train.data import tokenize_dataset
    from asft.train.settings import TokenizeSettings

    out = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    try:
        cpu, started = _cpu_seconds(), time.perf_counter()
        stats = tokenize_dataset(TokenizeSettings(template="alpaca", max_length=max_length), data_dir, model_dir,
                                 out, num_proc=num_proc)
        return time.perf_counter() - started, _cpu_seconds() - cpu, stats
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--tokenizer", choices=("embedded", "bpe", "both"), default="both")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    from asft.train.data import write_jsonl

    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        rows = generate_rows(args.rows)
        (work / "data").mkdir()
        write_jsonl(work / "data" / "train.jsonl", rows)
        chars = sum(len(r["instruction"]) + len(r["response"]) for r in rows) / len(rows)
        print(f"{args.rows} generated alpaca-style rows, {chars:.0f} characters each on average; "
              f"{os.cpu_count()} CPUs; TOKENIZERS_PARALLELISM=false")
        names = ("embedded", "bpe") if args.tokenizer == "both" else (args.tokenizer,)
        for name in names:
            started = time.perf_counter()
            tokenizer = embedded_tokenizer() if name == "embedded" else bpe_tokenizer(rows, args.vocab_size)
            built = time.perf_counter() - started
            model_dir = work / f"tok-{name}"
            tokenizer.save_pretrained(model_dir)
            print(f"\n[{name}] {len(tokenizer)} tokens (built in {built:.1f} s)")
            speeds = {}
            for num_proc in args.num_proc:
                best, cpu, stats = min((run_once(work / "data", model_dir, num_proc, args.max_length)
                                        for _ in range(args.repeats)), key=lambda result: result[0])
                speeds[num_proc] = args.rows / best
                print(f"  num_proc={num_proc}: {best:6.2f} s wall ({cpu:6.2f} s CPU)  {speeds[num_proc]:6.0f} examples/s  "
                      f"{stats['tokens'] / best / 1e6:5.2f} M tokens/s  (mean {stats['tokens'] / stats['examples']:.0f} "
                      f"tokens/example, {stats['truncated']} truncated)")
            base = args.num_proc[0]
            for num_proc in args.num_proc[1:]:
                print(f"  ratio num_proc={num_proc} / num_proc={base}: {speeds[num_proc] / speeds[base]:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
