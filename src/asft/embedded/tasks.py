"""The three arithmetic tasks of the embedded default: add, sub, mul.

Every problem is a prompt such as ``47+35=`` answered by a short chain of thought whose steps are
each a *single operation* (one operator kind per step, applied to one digit column; a carry or a
borrow joins the column as one more operand of the same operator), separated by ``;``, and ends
with the answer in ``\\boxed{}``. Pitfall 5 of ``shared/notes/embedded-default.md``: a step that
mixes operators (``8*6+3=51``) capped fine-tuned accuracy at 58%, so multiplication and the carry
addition are separate steps.

Notation: the first operand ``a`` has digits ``a1 a0`` (tens, units), likewise ``b = b1 b0``.
Numbers are written in plain decimal without leading zeros or signs.

add (``a, b`` in 10..99, every ordered pair; 8100 problems)
    1. ``a0+b0=u`` (always written, even when ``u < 10``). Carry ``c = 1`` if ``u >= 10``.
    2. ``a1+b1=t`` when ``c = 0``, else ``a1+b1+1=t`` (``t`` may reach 19).
    Answer ``10*t + (u mod 10)``, i.e. ``t`` followed by the units digit of ``u``.
    ``41+32=`` -> ``1+2=3;4+3=7;\\boxed{73}``;
    ``47+35=`` -> ``7+5=12;4+3+1=8;\\boxed{82}``;
    ``97+35=`` -> ``7+5=12;9+3+1=13;\\boxed{132}``.

sub (``a, b`` in 10..99 with ``a >= b``, so results are never negative; ``a == b`` included,
giving 0; 4095 problems)
    1. ``a0-b0=u`` when ``a0 >= b0`` (no borrow); otherwise borrow: ``(10+a0)-b0=u`` written
       with the borrowed-into value, e.g. ``14-7=7``.
    2. ``a1-b1=t`` without borrow, ``a1-b1-1=t`` with one (``t >= 0`` because ``a >= b``).
    Answer ``10*t + u`` (so ``t = 0`` gives a one-digit answer).
    ``84-32=`` -> ``4-2=2;8-3=5;\\boxed{52}``;
    ``84-37=`` -> ``14-7=7;8-3-1=4;\\boxed{47}``;
    ``52-47=`` -> ``12-7=5;5-4-1=0;\\boxed{5}``;
    ``33-33=`` -> ``3-3=0;3-3=0;\\boxed{0}``.

mul (``a`` in 10..99, multiplier ``b`` in 2..9; 720 problems)
    1. ``a0*b=p`` (always written). Carry ``c = p // 10`` (0 to 8).
    2. ``a1*b=q``.
    3. ``q+c=t`` only when ``c > 0``; with no carry there is no third step and ``t = q``.
    Answer ``10*t + (p mod 10)``.
    ``21*3=`` -> ``1*3=3;2*3=6;\\boxed{63}``;
    ``86*6=`` -> ``6*6=36;8*6=48;48+3=51;\\boxed{516}``;
    ``10*7=`` -> ``0*7=0;1*7=7;\\boxed{70}``.

Each task has a fixed, seed-dependent test split of 200 problems (:func:`split`); training uses
the rest. The rows follow the upstream ASFT formats: training ``{"instruction", "response"}`` and
benchmark ``{"question", "answer", "solution"}``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "N_TEST",
    "OPERATORS",
    "TASKS",
    "Example",
    "all_problems",
    "solve",
    "split",
]

TASKS = ("add", "sub", "mul")
OPERATORS = {"add": "+", "sub": "-", "mul": "*"}
N_TEST = 200


@dataclass(frozen=True)
class Example:
    """One problem: the prompt, the chain-of-thought response and the bare answer."""

    instruction: str  # the prompt, e.g. "47+35="
    response: str  # the chain of thought ending in the boxed answer
    answer: str  # the answer alone, e.g. "82"

    def as_train_row(self) -> dict[str, str]:
        """The upstream ASFT training row: ``{"instruction", "response"}``."""
        return {"instruction": self.instruction, "response": self.response}

    def as_benchmark_row(self) -> dict[str, str]:
        """A benchmark row: ``{"question", "answer", "solution"}``."""
        return {"question": self.instruction, "answer": self.answer, "solution": self.response}


def _check(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def all_problems(task: str) -> list[tuple[int, int]]:
    """Every operand pair of ``task``, in lexicographic order (see the module docstring)."""
    _check(task)
    if task == "add":
        return [(a, b) for a in range(10, 100) for b in range(10, 100)]
    if task == "sub":
        return [(a, b) for a in range(10, 100) for b in range(10, a + 1)]
    return [(a, b) for a in range(10, 100) for b in range(2, 10)]


def _valid(task: str, a: int, b: int) -> bool:
    if not (10 <= a <= 99):
        return False
    if task == "add":
        return 10 <= b <= 99
    if task == "sub":
        return 10 <= b <= a
    return 2 <= b <= 9


def solve(task: str, a: int, b: int) -> Example:
    """The example for ``a <op> b``, with the chain of thought described in the module docstring."""
    _check(task)
    if not _valid(task, a, b):
        raise ValueError(f"operands out of range for {task}: {a}, {b}")
    a1, a0 = divmod(a, 10)
    steps: list[str] = []
    if task == "add":
        b1, b0 = divmod(b, 10)
        u = a0 + b0
        carry = u // 10
        t = a1 + b1 + carry
        steps.append(f"{a0}+{b0}={u}")
        steps.append(f"{a1}+{b1}+1={t}" if carry else f"{a1}+{b1}={t}")
        result = 10 * t + u % 10
    elif task == "sub":
        b1, b0 = divmod(b, 10)
        borrow = int(a0 < b0)
        top = a0 + 10 * borrow
        u = top - b0
        t = a1 - b1 - borrow
        steps.append(f"{top}-{b0}={u}")
        steps.append(f"{a1}-{b1}-1={t}" if borrow else f"{a1}-{b1}={t}")
        result = 10 * t + u
    else:
        p = a0 * b
        carry = p // 10
        q = a1 * b
        steps.append(f"{a0}*{b}={p}")
        steps.append(f"{a1}*{b}={q}")
        t = q
        if carry:
            t = q + carry
            steps.append(f"{q}+{carry}={t}")
        result = 10 * t + p % 10
    expected = {"add": a + b, "sub": a - b, "mul": a * b}[task]
    if result != expected:  # pragma: no cover - the rules above are exhaustively tested
        raise AssertionError(f"chain of thought for {a}{OPERATORS[task]}{b} gives {result}")
    answer = str(result)
    steps.append(f"\\boxed{{{answer}}}")
    return Example(
        instruction=f"{a}{OPERATORS[task]}{b}=",
        response=";".join(steps),
        answer=answer,
    )


def split(task: str, seed: int, n_test: int = N_TEST) -> tuple[list[Example], list[Example]]:
    """Deterministic train/test split of every problem of ``task``: ``(train, test)``.

    The test problems are ``n_test`` problems drawn without replacement by
    ``random.Random(f"asft-embedded:{task}:{seed}")`` (string seeds are hashed with SHA-512,
    so the split is the same in every Python process, whatever ``PYTHONHASHSEED``); training is
    every other problem. Both lists are in the canonical order of :func:`all_problems`.
    """
    _check(task)
    problems = all_problems(task)
    if not 0 < n_test < len(problems):
        raise ValueError(f"n_test must be in 1..{len(problems) - 1}, got {n_test}")
    rng = random.Random(f"asft-embedded:{task}:{int(seed)}")
    test_idx = set(rng.sample(range(len(problems)), n_test))
    train = [solve(task, a, b) for i, (a, b) in enumerate(problems) if i not in test_idx]
    test = [solve(task, a, b) for i, (a, b) in enumerate(problems) if i in test_idx]
    return train, test
