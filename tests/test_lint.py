"""The workflow is `snakefmt` clean (line length in pyproject.toml) and passes `snakemake --lint`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_snakefmt_leaves_the_workflow_unchanged():
    snakefmt = shutil.which("snakefmt") or str(Path(sys.executable).parent / "snakefmt")
    result = subprocess.run([snakefmt, "--check", "--diff", "Snakefile", "rules"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"snakefmt would reformat the workflow:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"


def test_snakemake_lint_is_clean(tmp_path):
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--directory", str(tmp_path), "-s",
                             str(ROOT / "Snakefile")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr
