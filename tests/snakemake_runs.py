"""Running the real workflow from a test: Snakemake and `asft` in a working directory of the test's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
ASFT = [sys.executable, "-m", "asft.ops.cli"]


def smk(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                          timeout=timeout)


def asft(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ASFT, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def group_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of a SIGKILLed process group has exited within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
