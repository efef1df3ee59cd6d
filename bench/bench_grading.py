"""Grading throughput of each policy, ``strict`` and ``qwen_harness`` (one worker; figures of one run, no
assertions).

Prints cases/s for easy inputs (boxed integers and fractions, as the embedded task and most MATH
golds; decided in pure Python without the worker), for hard inputs (symbolic, long and hostile
inputs: the worker and Math-Verify), the worst single case, and the time to re-score a benchmark:
each gold of ``data/benchmarks/<name>`` x ``--samples`` completions (boxed answers, a quarter of
them perturbed to be wrong).

    .venv/bin/python bench/bench_grading.py [--benchmark math_oai] [--samples 16] [--policy strict ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from asft.eval.grading import Grader

ROOT = Path(__file__).resolve().parents[1]
B = "\\boxed{%s}"


def _timed(grader: Grader, pairs: list[tuple[str, str]], policy: str) -> tuple[float, float]:
    worst, started = 0.0, time.perf_counter()
    for completion, gold in pairs:
        t0 = time.perf_counter()
        grader.is_correct(completion, gold, policy)
        worst = max(worst, time.perf_counter() - t0)
    return time.perf_counter() - started, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmark", default="math_oai")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--policy", nargs="+", default=["strict", "qwen_harness"])
    args = parser.parse_args()
    for policy in args.policy:
        print(f"--- policy {policy}")
        run(args, policy)


def run(args: argparse.Namespace, policy: str) -> None:
    easy = [(f"We add {i} and {i + 1}: 7+5=12;\\boxed{{{2 * i + 1}}}", str(2 * i + 1)) for i in range(3000)]
    easy += [(f"so \\boxed{{\\frac{{{i}}}{{{i + 2}}}}}", f"{i}/{i + 2}") for i in range(1, 2001)]
    cases = [json.loads(line) for line in (ROOT / "tests/data/grading/cases.jsonl").open(encoding="utf-8")]
    hard = [(c["completion"], c["gold"]) for c in cases]
    with Grader() as grader:
        started = time.perf_counter()
        grader.start()
        print(f"worker start: {time.perf_counter() - started:.2f} s")
        seconds, worst = _timed(grader, easy, policy)
        print(f"easy (boxed integers/fractions): {len(easy)} in {seconds:.2f} s = {len(easy) / seconds:,.0f} cases/s; "
              f"worst {worst * 1000:.1f} ms")
        seconds, worst = _timed(grader, hard, policy)
        print(f"hard (tests/data/grading/cases.jsonl: symbolic, long, hostile): {len(hard)} in {seconds:.2f} s = "
              f"{len(hard) / seconds:,.1f} cases/s; worst single case {worst:.2f} s")

        rows = [json.loads(line) for line in (ROOT / "data/benchmarks" / args.benchmark / "test.jsonl").open(encoding="utf-8")]
        golds = [str(r["answer"]) for r in rows if r.get("answer") is not None]
        pairs = []
        for i, gold in enumerate(golds):
            for s in range(args.samples):
                answer = gold if (i + s) % 4 else f"{gold}+1"
                pairs.append((f"Step by step ... so the answer is ${B % answer}$.", gold))
        started = time.perf_counter()
        verdicts = grader.grade_many(pairs, policy)
        seconds = time.perf_counter() - started
        right = [bool((i + s) % 4) for i, _ in enumerate(golds) for s in range(args.samples)]
        wrong_accepted = sum(v and not r for v, r in zip(verdicts, right))
        print(f"re-score {args.benchmark}: {len(golds)} golds x {args.samples} samples = {len(pairs)} completions in "
              f"{seconds:.1f} s ({len(pairs) / seconds:,.0f}/s); {sum(v and r for v, r in zip(verdicts, right))} of "
              f"{sum(right)} gold answers accepted, {wrong_accepted} of {len(right) - sum(right)} 'gold+1' answers "
              f"accepted (e.g. letter golds, percent rules); worker restarts {grader.restarts}")


if __name__ == "__main__":
    main()
