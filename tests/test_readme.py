"""The Python code the README and docs show runs as written (in order, one namespace per file)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if python_blocks(d)], ids=lambda d: d.name)
def test_python_blocks_run(document, tmp_path):
    script = tmp_path / "blocks.py"
    script.write_text("\n\n".join(python_blocks(document)))
    # A fresh interpreter: a block that registers a loss mode must not leak into the test session.
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, f"{document.name}: its python blocks fail:\n{result.stderr[-3000:]}"


def test_the_readme_shows_python_code():
    assert len(python_blocks(ROOT / "README.md")) >= 2
