"""docs/grading.md's table of where the two policies differ is true: each row graded by both policies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asft.eval.grading import is_correct

DOC = Path(__file__).resolve().parents[1] / "docs" / "grading.md"


def _rows() -> list[tuple[str, str, bool, bool]]:
    section = DOC.read_text().split("## Where the two policies differ", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].startswith("`") and cells[3].split()[0] in ("True", "False"):
            completion, gold = (re.fullmatch(r"`(.*)`", c).group(1) for c in cells[1:3])
            rows.append((completion, gold, cells[3].split()[0] == "True", cells[4] == "True"))
    return rows


def test_the_table_has_rows_where_the_policies_disagree():
    rows = _rows()
    assert len(rows) >= 15 and sum(harness != strict for _, _, harness, strict in rows) >= 12


@pytest.mark.parametrize(("completion", "gold", "harness", "strict"), _rows())
def test_each_row_is_what_the_policies_decide(completion, gold, harness, strict):
    assert is_correct(completion, gold, "qwen_harness") is harness
    assert is_correct(completion, gold, "strict") is strict


def test_the_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})  # our own documentation, not model text
