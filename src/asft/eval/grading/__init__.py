r"""Grading of math answers: does a completion's final answer equal the gold? (docs/grading.md)

A thin layer over Math-Verify, by policy: ``strict`` (the default, :mod:`.strict`) and
``qwen_harness`` (the grader of the published numbers, :mod:`.qwen_harness`). Each policy module
has ``VERSION``, ``DESCRIPTION``, ``extract(completion)`` (pure Python) and ``grade(completion,
gold)`` (the whole decision; run only in the sandbox worker); it may also have ``fast(completion,
gold) -> bool | None``, a pure-Python pre-check that ``grade`` itself starts with, used here to
decide easy cases without the worker round trip.

This module is light to import: SymPy, Math-Verify and latex2sympy2-extended are imported only in
the worker process (``_worker.py``): one long-lived child per :class:`Grader`, with a memory limit,
a per-request time limit, SIGKILLed and restarted on a hang. Model text is never evaluated, and
parsed values are never rendered. Nothing here raises: any error or timeout is ``False``.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import subprocess
import sys
import threading
import time
import warnings
import weakref
from typing import Iterable, Sequence

from asft.core.names import did_you_mean
from asft.eval.grading.registry import POLICY_INFO

__all__ = [
    "DEFAULT_POLICY_NAME",
    "POLICIES",
    "Grader",
    "extract_answer",
    "grade_many",
    "is_correct",
    "last_boxed",
    "policy_description",
    "policy_version",
]

POLICIES: dict[str, str] = {"strict": "asft.eval.grading.strict",
                            "qwen_harness": "asft.eval.grading.qwen_harness"}
DEFAULT_POLICY_NAME = "strict"
DEFAULT_TIMEOUT_S = 5.0


def _check(name: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"unknown grading policy {name!r}{did_you_mean(name, POLICIES)}; "
                         f"known: {', '.join(POLICIES)}")
    return name


def policy_version(name: str) -> int:
    """The version of a policy (bumped when its verdicts change); never imports the policy."""
    return POLICY_INFO[_check(name)][0]


def policy_description(name: str) -> str:
    """One sentence on what a policy does; never imports the policy."""
    return POLICY_INFO[_check(name)][1]


def _module(name: str):
    return importlib.import_module(POLICIES[_check(name)])


def last_boxed(text: str) -> str | None:
    r"""Content of the last brace-matched ``\boxed{}``/``\fbox{}`` of ``text``; None if there is none
    or it is never closed."""
    from asft.eval.grading.strict import last_box

    try:
        return last_box(text)[1] if isinstance(text, str) else None
    except Exception:  # noqa: BLE001
        return None


def extract_answer(completion: str, policy: str = DEFAULT_POLICY_NAME) -> str | None:
    """The answer string ``policy`` grades (pure Python, bounded; for humans: samples.jsonl)."""
    module = _module(policy)
    try:
        answer = module.extract(completion) if isinstance(completion, str) else None
        return answer if isinstance(answer, str) else None
    except Exception:  # noqa: BLE001
        return None


def _as_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else (repr(value) if value == value else None)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Sequence) and value and isinstance(value[0], str):
        return value[0]
    return None


# --------------------------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------------------------

_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
_SRC_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_BOOT = (
    "import sys;sys.path[:]=[p for p in sys.path if p not in ('','.')];sys.path.insert(0,sys.argv[2]);"
    "import importlib.util as u;s=u.spec_from_file_location('_asft_grading_worker',sys.argv[1]);"
    "m=u.module_from_spec(s);s.loader.exec_module(m);sys.exit(m.main(sys.argv[3:]))"
)
_LIVE_WORKERS: "weakref.WeakSet[_Worker]" = weakref.WeakSet()
_MAX_START_FAILURES = 3
_GRACE_S = 1.0  # the parent waits this much past the worker's own limit before killing it


class _Worker:
    """One grading child process; not thread-safe (the Grader serialises calls)."""

    def __init__(self, memory_limit_bytes: int, startup_timeout_s: float) -> None:
        self.memory_limit_bytes = int(memory_limit_bytes)
        self.startup_timeout_s = float(startup_timeout_s)
        self.proc: subprocess.Popen | None = None
        self.buf, self.ready, self.next_id = b"", False, 0
        self.owner_pid = os.getpid()
        self.start_failures, self.disabled, self.restarts = 0, False, 0
        _LIVE_WORKERS.add(self)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's process without touching it."""
        proc, self.proc = self.proc, None
        self.buf, self.ready, self.owner_pid = b"", False, os.getpid()
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except Exception:  # noqa: BLE001
                    pass
            proc.returncode = -1  # never wait for a process that is not ours

    def spawn(self) -> None:
        if os.name != "posix":
            self.disabled = True
            return
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONWARNINGS="ignore")
        self.buf, self.ready = b"", False
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _WORKER_FILE, _SRC_DIR, "--memory", str(self.memory_limit_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            bufsize=0, close_fds=True, start_new_session=True, env=env)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        self.buf, self.ready = b"", False
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            pass
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        if self.owner_pid != os.getpid():
            self.forget_after_fork()
        else:
            self.kill()

    def _read_line(self, deadline: float) -> bytes | None:
        """A line from the worker; None on timeout; EOFError if it died."""
        import select

        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not poller.poll(max(1, int(remaining * 1000))):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def ensure_ready(self) -> bool:
        if self.owner_pid != os.getpid():
            self.forget_after_fork()
        if self.disabled:
            return False
        if self.proc is not None and self.proc.poll() is not None:
            self.kill()
        if self.proc is None:
            try:
                self.spawn()
            except Exception:  # noqa: BLE001
                self.proc = None
            if self.disabled or self.proc is None:
                self._start_failed()
                return False
        if self.ready:
            return True
        try:
            line = self._read_line(time.monotonic() + self.startup_timeout_s)
        except (EOFError, OSError):
            line = None
        if line is None or line.strip() != b"READY":
            self._start_failed()
            return False
        self.ready, self.start_failures = True, 0
        return True

    def _start_failed(self) -> None:
        self.kill()
        self.start_failures += 1
        if self.start_failures >= _MAX_START_FAILURES and not self.disabled:
            self.disabled = True
            warnings.warn("asft.eval.grading: the grading worker could not be started; answers that "
                          "need it are graded False", RuntimeWarning, stacklevel=4)

    def grade(self, policy: str, completion: str, gold: str, timeout_s: float) -> bool:
        """The policy's verdict within ``timeout_s`` (+1 s grace; start-up excluded); False on failure."""
        if timeout_s <= 0 or not self.ensure_ready():
            return False
        self.next_id += 1
        rid = self.next_id
        req = json.dumps({"i": rid, "p": policy, "c": completion, "g": gold, "t": timeout_s}) + "\n"
        deadline = time.monotonic() + timeout_s + _GRACE_S
        try:
            data = req.encode("utf-8", "replace")
            fd = self.proc.stdin.fileno()
            while data:
                data = data[os.write(fd, data):]
            while True:
                line = self._read_line(deadline)
                if line is None:  # past the limit: kill whatever it is doing, start a fresh one
                    self.kill()
                    self.restarts += 1
                    return False
                parts = line.split()
                if len(parts) == 2 and parts[0] == str(rid).encode():
                    return parts[1] == b"1"
        except (EOFError, OSError, ValueError, AttributeError):
            self.kill()
            self.restarts += 1
            return False


def _close_all_workers() -> None:
    for w in list(_LIVE_WORKERS):
        try:
            w.close()
        except Exception:  # noqa: BLE001
            pass


atexit.register(_close_all_workers)


# --------------------------------------------------------------------------------------------
# Grader and the module-level API
# --------------------------------------------------------------------------------------------

_LIVE_GRADERS: "weakref.WeakSet[Grader]" = weakref.WeakSet()
_MAX_COMPLETION_CHARS = 2_000_000  # longer completions are graded on their last 2,000,000 characters


class Grader:
    """Owns one lazily started worker process; thread-safe (requests are serialised on it).

    Use as a context manager or call :meth:`close`; workers are also killed at interpreter exit
    and replaced in a forked child.
    """

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_limit_bytes: int = 2 << 30,
                 startup_timeout_s: float = 60.0) -> None:
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._worker = _Worker(memory_limit_bytes, startup_timeout_s)
        _LIVE_GRADERS.add(self)

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker process (a later call starts a new one)."""
        with self._lock:
            self._worker.close()

    def start(self) -> bool:
        """Start the worker now (optional warm-up); False if it cannot be started."""
        with self._lock:
            return self._worker.ensure_ready()

    @property
    def worker_pid(self) -> int | None:
        """Process id of the current worker, if any (for monitoring and tests)."""
        proc = self._worker.proc
        return proc.pid if proc is not None else None

    @property
    def restarts(self) -> int:
        """How many times the worker was killed (timeout, death) and replaced."""
        return self._worker.restarts

    def is_correct(self, completion: str, gold: str, policy: str = DEFAULT_POLICY_NAME, *,
                   timeout_s: float | None = None) -> bool:
        """Whether the final answer of ``completion`` equals ``gold`` under ``policy``. Never raises
        (an unknown policy is the one error: ValueError)."""
        module = _module(policy)
        try:
            gold = _as_text(gold)
            if not isinstance(completion, str) or gold is None:
                return False
            completion = completion[-_MAX_COMPLETION_CHARS:]
            fast = getattr(module, "fast", None)
            if fast is not None:
                verdict = fast(completion, gold)
                if verdict is not None:
                    return verdict is True
            timeout = self.timeout_s if timeout_s is None else float(timeout_s)
            with self._lock:
                return self._worker.grade(policy, completion, gold, timeout)
        except Exception:  # noqa: BLE001
            return False

    def grade_many(self, pairs: Iterable[tuple[str, str]], policy: str = DEFAULT_POLICY_NAME, *,
                   timeout_s: float | None = None) -> list[bool]:
        """``[is_correct(c, g) for c, g in pairs]`` on this grader's one worker (streamed)."""
        _check(policy)
        return [self.is_correct(c, g, policy, timeout_s=timeout_s) for c, g in pairs]


def _after_fork_in_child() -> None:
    global _DEFAULT
    for g in list(_LIVE_GRADERS):
        g._lock = threading.Lock()
    for w in list(_LIVE_WORKERS):
        w.forget_after_fork()
    _DEFAULT = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_DEFAULT: Grader | None = None
_DEFAULT_LOCK = threading.Lock()


def _default() -> Grader:
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Grader()
        return _DEFAULT


def is_correct(completion: str, gold: str, policy: str = DEFAULT_POLICY_NAME, *,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the final answer of ``completion`` equals ``gold`` (docs/grading.md). Never raises
    on any input (an unknown ``policy`` name is a ValueError); bounded in time and memory."""
    return _default().is_correct(completion, gold, policy, timeout_s=timeout_s)


def grade_many(pairs: Iterable[tuple[str, str]], policy: str = DEFAULT_POLICY_NAME, *,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> list[bool]:
    """Grade ``(completion, gold)`` pairs on one shared worker process; a list of bools."""
    return _default().grade_many(pairs, policy, timeout_s=timeout_s)
