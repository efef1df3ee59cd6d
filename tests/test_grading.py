r"""Tests for asft.eval.grading: every case of tests/data/grading/cases.jsonl under ``strict``, the
stable API's promises (never raises, bounded, no code from model text runs), the worker's restart,
extraction, the policy registry, a light import, and the real benchmark golds grading themselves."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asft.eval import grading
from asft.eval.grading import (
    DEFAULT_POLICY_NAME,
    POLICIES,
    Grader,
    extract_answer,
    grade_many,
    is_correct,
    last_boxed,
    policy_description,
    policy_version,
)
from asft.eval.grading.registry import POLICY_INFO

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "data" / "benchmarks"
CASES = [json.loads(line) for line in (ROOT / "tests/data/grading/cases.jsonl").read_text("utf-8").splitlines()]
B = "\\boxed{%s}"


@pytest.fixture(scope="module")
def grader():
    with Grader() as g:
        assert g.start(), "the grading worker should start"
        yield g


def _proc_gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------

def test_cases_file_is_well_formed():
    assert len(CASES) >= 150
    assert len({c["id"] for c in CASES}) == len(CASES)
    for c in CASES:
        assert set(c) == {"id", "source", "completion", "gold", "strict", "note"}, c["id"]
        assert isinstance(c["strict"], bool) and c["source"] and c["note"]
    assert sum(c["strict"] for c in CASES) > 50 and sum(not c["strict"] for c in CASES) > 50


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(grader, case):
    assert grader.is_correct(case["completion"], case["gold"]) is case["strict"], case["note"]


# ---------------------------------------------------------------------------------------------
# The stable API's promises
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("completion", "gold"), [
    (None, "1"), (B % "1", None), (5, 5), (b"\\boxed{1}", "1"), (B % "1", object()),
    (B % "1", float("nan")), (B % "1", ["1", "2"]), ("\x00" * 100, "\x00"), ("\udcff" * 10, "1"),
    ("\\boxed{" * 1000, "1"), ("", ""), ("}" * 10_000, "}"), (B % "1", ""),
])
def test_never_raises_and_returns_bool(grader, completion, gold):
    assert isinstance(grader.is_correct(completion, gold), bool)  # type: ignore[arg-type]
    assert isinstance(is_correct(completion, gold), bool)  # type: ignore[arg-type]
    answer = extract_answer(completion)  # type: ignore[arg-type]
    assert answer is None or isinstance(answer, str)


def test_non_string_golds(grader):
    assert grader.is_correct(B % "27", 27.0)  # type: ignore[arg-type]  (amc23 stores floats)
    assert grader.is_correct(B % "204", 204)  # type: ignore[arg-type]
    assert grader.is_correct(B % "2", ["2"])  # type: ignore[arg-type]


def test_bounded_in_time(grader):
    for completion, gold in [(B % r"9^{9^{9^{9}}}", "1"), (B % r"(10^{10})!", "1"),
                             ("x" * 100_000 + B % r"\sqrt{2}", r"\sqrt{2}"),
                             (B % ("\\frac{1}{" * 12_000), "1"), (B % "(x+1)^{99999}", "x^{99999}+1"),
                             ("$" + "\\frac{1}{2}+" * 5000 + "$", "1")]:
        started = time.monotonic()
        assert isinstance(grader.is_correct(completion, gold, timeout_s=3.0), bool)
        assert time.monotonic() - started < 5.0, completion[:40]


def test_no_code_from_model_text_runs(grader, tmp_path):
    marker = tmp_path / "pwned"
    payloads = [f"__import__('os').system('touch {marker}')",
                f"exec(\"open('{marker}', 'w').write('x')\")",
                f"(lambda: __import__('subprocess').call(['touch', '{marker}']))()",
                f"x + __import__('os').system('touch {marker}')"]
    for payload in payloads:
        for completion in (payload, B % payload, "The answer is " + payload, "Answer: " + payload,
                           f"${payload}$"):
            for gold in ("0", "x", r"\frac{1}{2}", payload):
                grader.is_correct(completion, gold)
    time.sleep(0.2)
    assert not marker.exists(), "model text was executed"


def test_hung_worker_is_killed_and_restarted(grader):
    grader.start()
    old = grader.worker_pid
    os.kill(old, signal.SIGSTOP)  # an unresponsive worker (as if stuck in C code)
    try:
        started = time.monotonic()
        assert grader.is_correct(B % r"\sqrt{8}", r"2\sqrt{2}", timeout_s=1.0) is False
        elapsed = time.monotonic() - started
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert elapsed < 3.0, elapsed
    assert _proc_gone(old), "the killed worker must be reaped"
    assert grader.is_correct(B % r"\sqrt{8}", r"2\sqrt{2}") is True
    assert grader.worker_pid not in (None, old)


def test_dead_worker_is_replaced(grader):
    grader.start()
    old = grader.worker_pid
    os.kill(old, signal.SIGKILL)
    time.sleep(0.1)
    assert grader.is_correct(B % r"\sqrt{18}", r"3\sqrt{2}") is True
    assert grader.worker_pid != old


def test_easy_cases_need_no_worker():
    with Grader() as g:
        assert g.grade_many([(B % "12", "12"), (B % r"\frac{1}{2}", "0.5"), (B % "3", "4"),
                             (r"\boxed{\mathrm{(D)}\ 5}", "D"), (B % "2^{2^{16}}", "2^{65536}")]) \
            == [True, True, False, True, True]
        assert g.worker_pid is None


def test_module_level_functions():
    assert is_correct(r"so \boxed{\frac{1}{2}}", "0.5")
    assert is_correct(r"so \boxed{\frac{1}{2}}", "0.5", "strict", timeout_s=5.0)
    assert grade_many([(B % "1", "1"), (B % "2", "1"), ("no", "1")]) == [True, False, False]
    assert grade_many(iter([(B % r"\sqrt{4}", "2")]), timeout_s=5.0) == [True]


def test_worker_cleaned_up_at_exit():
    script = ("from asft.eval.grading import Grader\n"
              "g = Grader(); g.start(); print(g.worker_pid, flush=True)\n")
    pid = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _proc_gone(pid):
        time.sleep(0.05)
    assert _proc_gone(pid)


def test_import_is_light():
    probe = ("import sys, asft.eval.grading as g, asft.grading\n"
             "g.policy_version('strict'); g.policy_description('qwen_harness'); g.last_boxed('\\\\boxed{1}')\n"
             "print([m for m in ('sympy', 'math_verify', 'latex2sympy2_extended', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Policies, extraction
# ---------------------------------------------------------------------------------------------

def test_policy_registry():
    assert POLICIES == {"strict": "asft.eval.grading.strict", "qwen_harness": "asft.eval.grading.qwen_harness"}
    assert DEFAULT_POLICY_NAME == "strict" and set(POLICY_INFO) == set(POLICIES)
    for name in POLICIES:
        assert isinstance(policy_version(name), int) and policy_description(name)
    with pytest.raises(ValueError, match="did you mean 'strict'"):
        policy_version("strikt")
    with pytest.raises(ValueError, match="did you mean"):
        is_correct(B % "1", "1", policy="qwen_harnes")


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_module_version_matches_registry(name):
    try:
        module = importlib.import_module(POLICIES[name])
    except ImportError:
        pytest.skip(f"{name} is not written yet")
    assert module.VERSION == policy_version(name)
    assert callable(module.extract) and callable(module.grade) and module.DESCRIPTION


def test_qwen_harness_policy_runs_in_the_worker(grader):
    pytest.importorskip("asft.eval.grading.qwen_harness")
    assert grader.is_correct(B % r"\sqrt{12}", r"2\sqrt{3}", "qwen_harness") is True
    assert grader.is_correct(B % "3", "4", "qwen_harness") is False


@pytest.mark.parametrize(("completion", "expected"), [
    (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"first \boxed{1}, then \boxed{2}", "2"),
    (r"\boxed{\boxed{5}}", "5"),
    (r"\boxed{a \{b\} c}", r"a \{b\} c"),
    (r"\fbox{x+1}", "x+1"),
    (r"$\boxed 5$", "5"),
    (r"\boxed{1} then \boxed{2", None),  # the last box is never closed: no answer
    ("Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.", r"-\frac{2}{3}"),
    (r"Hence the ratio is $\dfrac{1}{3}$.", r"\dfrac{1}{3}"),
    ("Thus the answer is 42.", "42"),
    ("the answer is 3.5 cm. Next", "3.5 cm"),
    ("**Answer:** D", "D"),
    ("I have 3 apples and 5 pears", "5"),
    (r"\boxed{200} ... Final Answer: The final answer is $10,455$. I hope it is correct.", "10,455"),
    ("so \\boxed{\u22125}", "-5"),
    ("", None),
    ("no digits here", None),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_extract_answer_is_bounded():
    started = time.monotonic()
    for text in ("{" * 200_000, "\\boxed{" * 50_000, "$" * 200_000, "answer: " * 20_000, "1," * 100_000):
        extract_answer(text)
    assert time.monotonic() - started < 5.0


def test_last_boxed():
    assert last_boxed(r"a \boxed{1} b \boxed{\frac{2}{3}}") == r"\frac{2}{3}"
    assert last_boxed(r"\boxed{1} \boxed{2") is None
    assert last_boxed("none") is None and last_boxed(None) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Sanity on the real benchmark golds: each accepted as its own boxed completion
# ---------------------------------------------------------------------------------------------

def _gold(name: str, row: dict):
    """The gold as the benchmark loader reads it (PROVENANCE.md), in the raw JSON type."""
    if name == "math_oai":
        return row["answer"]
    if name == "gsm8k":
        return row["answer"].split("####")[-1].strip()
    if name == "minerva_math":
        return last_boxed(row["solution"])
    if name == "olympiadbench":
        return row["final_answer"][0].strip("$")
    return row["answer"]  # aime24: a string ("073"); amc23: a float (27.0)


@pytest.mark.parametrize("name", ["math_oai", "gsm8k", "minerva_math", "olympiadbench", "aime24", "amc23"])
def test_real_benchmark_golds(grader, name):
    with open(BENCHMARKS / name / "test.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(40), handle)]
    for row in rows:
        gold = _gold(name, row)
        written = str(int(gold)) if isinstance(gold, float) and gold.is_integer() else str(gold)
        right = "Let me think step by step ... so \\boxed{" + written + "}"
        assert grader.is_correct(right, gold), (name, gold)
        assert not grader.is_correct("... so \\boxed{31415926}", gold), (name, gold)
        assert not grader.is_correct(right + " Wait, no: \\boxed{-271828}", gold), (name, gold)
