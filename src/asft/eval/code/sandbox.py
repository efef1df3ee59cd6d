"""Run model code only inside the sandbox: one fresh worker process per batch of samples.

The worker (`asft.eval.code.worker`, whose docstring lists each layer and what it does not stop) is
started with a cleared environment, its own process group and a fresh scratch directory as working
directory, HOME and TMPDIR. The parent reads its verdicts as they come and kills the whole process
group at the batch's wall-clock limit; the sample being checked then is scored failed ("killed") and
the rest of the batch is checked again in a new worker without it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asft.eval.code import worker as worker_module

KILLED = "killed"  # the verdict of a sample whose worker was killed at the wall-clock limit
NOBODY_UID = 65534  # the user the worker runs the tests as, when it can


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one worker (and each process it forks)."""

    wall_seconds: float = 600.0  # the batch's wall-clock limit; the parent kills the process group then
    cpu_seconds: int = 600  # RLIMIT_CPU of each process
    memory_mb: int = 4096  # RLIMIT_AS/RLIMIT_DATA (EvalPlus's own default limit for a test process is 4 GiB)
    file_mb: int = 64  # RLIMIT_FSIZE: the largest file a process may write
    extra_processes: int = 16  # RLIMIT_NPROC: processes the sandbox user may have beyond those it has at start


@dataclass(frozen=True)
class Sample:
    """One solution to check: its position in the caller's list, the EvalPlus task and the code."""

    index: int
    task_id: str
    solution: str


@dataclass
class BatchResult:
    verdicts: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> {"base": .., "plus": ..}
    sandbox: dict[str, Any] = field(default_factory=dict)  # the layers that held (the worker's report)
    killed: list[int] = field(default_factory=list)  # samples that ran into the wall-clock limit


def _scratch(data_file: Path, override_env: str) -> tuple[Path, dict[str, str]]:
    scratch = Path(tempfile.mkdtemp(prefix="asft-sandbox-"))
    local = scratch / ("data" + "".join(data_file.suffixes[-2:]))
    shutil.copyfile(data_file, local)  # the worker reads only its scratch directory (and gives it to its user)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           override_env: str(local)}
    return scratch, env


def _start(job: dict[str, Any], scratch: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    job_file = scratch / "job.json"
    job_file.write_text(json.dumps(job))
    read_fd, write_fd = os.pipe()
    env = {**env, "EVALPLUS_MAX_MEMORY_BYTES": str(job["limits"]["memory_mb"] * 2**20)}
    process = subprocess.Popen([sys.executable, "-I", worker_module.__file__, str(write_fd)], cwd=scratch, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    return process, read_fd


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _run_worker(job: dict[str, Any], scratch: Path, env: dict[str, str],
                limits: SandboxLimits) -> tuple[list[dict[str, Any]], bool, str]:
    """Start one worker on `job`; returns its result lines, whether it was killed, and its stderr's tail."""
    process, read_fd = _start(job, scratch, env)
    deadline = time.monotonic() + limits.wall_seconds
    buffer, killed = b"", False
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed = True
                break
            ready, _, _ = select.select([pipe], [], [], remaining)
            if not ready:
                continue
            chunk = pipe.read(65536)
            if not chunk:
                break
            buffer += chunk
    if killed:
        _kill_group(process)
    else:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed = True
        _kill_group(process)  # whatever the worker left in its group goes with it
    # and whatever left the group (setsid) but not the worker's pids cgroup; then the cgroup itself
    worker_module.release_cgroup(worker_module.cgroup_dir(process.pid))
    stderr = process.stderr.read().decode("utf-8", "replace")[-2000:] if process.stderr else ""
    lines = [json.loads(line) for line in buffer.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines, killed, stderr


def check_batch(dataset: str, suite: str, samples: Sequence[Sample], *, data_file: Path, override_env: str,
                limits: SandboxLimits, min_time_limit: float, gt_time_limit_factor: float,
                home: str | None = None) -> BatchResult:
    """EvalPlus's verdicts on `samples`, each computed in the sandbox.

    A worker killed at the wall-clock limit costs the sample it was on (verdict KILLED); the samples after
    it go to a new worker. A worker that dies for another reason is an error (its stderr is in the message).
    """
    home = home if home is not None else os.path.expanduser("~")
    result = BatchResult()
    pending = list(samples)
    while pending:
        scratch, env = _scratch(data_file, override_env)
        try:
            job = {"dataset": dataset, "suite": suite, "home": home, "min_time_limit": min_time_limit,
                   "gt_time_limit_factor": gt_time_limit_factor,
                   "limits": {"cpu_seconds": limits.cpu_seconds, "memory_mb": limits.memory_mb,
                              "file_mb": limits.file_mb, "extra_processes": limits.extra_processes,
                              "nobody_uid": NOBODY_UID},
                   "samples": [{"index": s.index, "task_id": s.task_id, "solution": s.solution} for s in pending]}
            lines, killed, stderr = _run_worker(job, scratch, env, limits)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for line in lines:
            if "sandbox" in line:
                result.sandbox = line["sandbox"]
            elif "error" in line:
                raise ValueError(f"{dataset}: sample {line['index']}: {line['error']}")
            else:
                result.verdicts[line["index"]] = line
        done = [s for s in pending if s.index in result.verdicts]
        rest = [s for s in pending if s.index not in result.verdicts]
        if not rest:
            break
        if not killed:
            raise RuntimeError(f"the sandbox worker stopped after {len(done)} of {len(pending)} samples:\n{stderr}")
        culprit = rest[0]
        result.killed.append(culprit.index)
        result.verdicts[culprit.index] = {"index": culprit.index, "base": KILLED, "plus": KILLED if suite == "plus"
                                          else None}
        pending = rest[1:]
    return result
