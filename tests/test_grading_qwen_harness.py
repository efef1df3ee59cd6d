"""The ``qwen_harness`` grading policy against the verdicts of the REAL harness.

``tests/data/grading/qwen_harness_verdicts.json`` was computed once by running upstream ASFT's
``eval/math_evaluation/`` (the Qwen2.5-Math harness) in a sandbox over every case of
``cases.jsonl`` and ``cases_qwen.jsonl`` (see ``PROVENANCE_qwen_harness.md`` and
``run_qwen_harness.py``). Every case must get that verdict from ``qwen_harness.grade``, and
``qwen_harness.extract`` must give the harness's extracted string.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asft.eval.grading import qwen_harness

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "grading"
VERDICTS = json.loads((DATA / "qwen_harness_verdicts.json").read_text(encoding="utf-8"))
CASE_FILES = ["cases_qwen.jsonl", "cases.jsonl"]

# Cases whose harness verdict can only be reproduced by evaluating the model's text.
XFAIL = {
    "code-eval": "the harness hands 'eval(\"1+1\")' to sympy parse_expr, which runs Python eval and "
                 "gets 2 (= gold); this policy never evaluates text, so it says False",
}

PER_CASE_SECONDS = 10.0


def _cases():
    out = []
    for name in CASE_FILES:
        path = DATA / name
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


CASES = _cases()


def test_every_case_has_a_harness_verdict():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique across the two files"
    missing = sorted(set(ids) - set(VERDICTS["verdicts"]))
    assert not missing, f"rerun run_qwen_harness.py: no harness verdict for {missing[:10]}"
    assert set(VERDICTS["extracted"]) >= set(ids)
    assert VERDICTS["harness"].startswith("zhuchichi56/ASFT@")


def _param(c):
    marks = []
    if c["id"] in XFAIL:
        marks.append(pytest.mark.xfail(reason=XFAIL[c["id"]], strict=True))
    return pytest.param(c, id=c["id"], marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_verdict_matches_the_real_harness(case):
    t0 = time.monotonic()
    got = qwen_harness.grade(case["completion"], case["gold"])
    elapsed = time.monotonic() - t0
    assert elapsed < PER_CASE_SECONDS, f"took {elapsed:.1f}s"
    assert got is VERDICTS["verdicts"][case["id"]], case.get("note")


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in CASES])
def test_extraction_matches_the_real_harness(case):
    assert qwen_harness.extract(case["completion"]) == VERDICTS["extracted"][case["id"]]
    assert qwen_harness.parse_gold(case["gold"]) == VERDICTS["gold_parsed"][case["id"]]


def test_module_contract():
    assert qwen_harness.VERSION == 1
    assert isinstance(qwen_harness.DESCRIPTION, str) and "\n" not in qwen_harness.DESCRIPTION
    assert qwen_harness.extract("so $\\boxed{\\frac{14}{3}}$.") == "\\frac{14}{3}"
    assert qwen_harness.grade("so $\\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}") is True


def test_import_is_light():
    code = ("import sys; import asft.eval.grading.qwen_harness as q; "
            "bad = [m for m in ('sympy', 'latex2sympy2_extended', 'antlr4') if m in sys.modules]; "
            "q.extract('\\\\boxed{3}'); q.grade('\\\\boxed{3}', '3'); "
            "bad += [m for m in ('sympy',) if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported {out.stdout.strip()} (string-decided grade should not need it)"


def test_no_code_execution(tmp_path):
    target = tmp_path / "pwned"
    for completion in (
        f"\\boxed{{__import__('os').system('touch {target}')}}",
        f"The answer is __import__('os').system('touch {target}')",
        f"\\boxed{{(lambda: __import__('subprocess').call(['touch','{target}']))()}}",
    ):
        for gold in ("0", "1", "x"):
            assert qwen_harness.grade(completion, gold) is False
    assert not target.exists()


@pytest.mark.parametrize("completion,gold", [
    ("\\boxed{9^{9^{9^{9}}}}", "1"),
    ("\\boxed{10^{10^{10}}}", "10"),
    ("\\boxed{2^{2^{2^{2^{2}}}}}", "65536"),
    ("\\boxed{(10^{10})!}", "1"),
    ("\\boxed{99^{9999999}}", "1"),
    ("\\boxed{\\frac{1}{" + "1" * 100_000, "1"),
    ("\\boxed{" + "\\text{a" * 20_000 + "}", "1"),
    ("\\boxed{" + "{" * 50_000, "1"),
    ("x " * 500_000, "1"),
    ("\\boxed{1}", "\\text{a" * 20_000),
])
def test_hostile_inputs_return_quickly(completion, gold):
    t0 = time.monotonic()
    assert qwen_harness.grade(completion, gold) is False
    assert time.monotonic() - t0 < 5.0
