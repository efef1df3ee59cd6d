"""The sandbox worker of :mod:`asft.eval.grading`: one long-lived child process that runs a policy's
``grade(completion, gold)``. Started only by ``asft.eval.grading`` (nothing here is public API).

Protocol: one JSON object per line on stdin, one line per answer on stdout. After start-up the
worker writes ``READY``. Request: ``{"i": id, "p": policy name, "c": completion, "g": gold,
"t": seconds}``; answer: ``"<id> 1"`` or ``"<id> 0"``. Only this bool leaves the process: parsed
values are never rendered (printing a parsed power tower can hang for minutes, uninterruptibly).

Limits: address space ``RLIMIT_AS`` (2 GiB by default); per request a wall-clock ``ITIMER_REAL``
of ``t`` seconds (it raises a ``BaseException``, which library ``except Exception`` clauses cannot
swallow; Math-Verify's own signal timeouts are disabled so they cannot reset it) and a CPU budget
(``RLIMIT_CPU``: ``t`` + 3 s, so even an orphaned worker stuck in C code dies); the parent SIGKILLs
the worker when its own deadline passes, whatever it is doing. stdout/stderr go to /dev/null (the
protocol uses a private duplicate of fd 1) and logging is disabled, so no library prints anything.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys

try:  # POSIX only; the parent never starts a worker where this is missing
    import resource
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]


class _Deadline(BaseException):
    """Raised by the wall-clock timer."""


def _on_alarm(signum, frame):  # noqa: ARG001
    raise _Deadline()


def _limit_memory(nbytes: int) -> None:
    if resource is None:
        return
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if nbytes > 0:
            limit = nbytes if hard == resource.RLIM_INFINITY else min(nbytes, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass


def _cpu_budget(seconds: float) -> None:
    """At most ``seconds`` + 3 more CPU seconds, then the kernel's SIGXCPU ends the process."""
    if resource is None:
        return
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(usage.ru_utime + usage.ru_stime + max(seconds, 0.0)) + 3
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    except (ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    memory = int(argv[argv.index("--memory") + 1]) if "--memory" in argv else 2 << 30
    _limit_memory(memory)
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115

    def send(text: str) -> None:
        data = (text + "\n").encode("ascii")
        while data:
            data = data[os.write(out_fd, data):]

    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        from asft.eval.grading import POLICIES, DEFAULT_POLICY_NAME

        modules = {}
        for name, module in POLICIES.items():  # import (and warm) every installed policy
            try:
                modules[name] = importlib.import_module(module)
            except ImportError:
                continue
        modules[DEFAULT_POLICY_NAME].grade("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")  # warm caches
    except Exception:  # noqa: BLE001 - the parent sees EOF and reports the worker unusable
        return 2
    send("READY")

    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return 0
        ok, fatal, rid = False, False, -1
        try:
            req = json.loads(line)
            rid = int(req["i"])
            seconds = float(req.get("t", 5.0))
            module = modules.get(req.get("p"))
            if module is not None and seconds > 0 and isinstance(req.get("c"), str) \
                    and isinstance(req.get("g"), str):
                _cpu_budget(seconds)
                signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
                try:
                    ok = module.grade(req["c"], req["g"]) is True
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except MemoryError:
            ok, fatal = False, True
        except BaseException:  # noqa: BLE001 - includes _Deadline; any failure is "not correct"
            ok = False
        try:
            send(f"{rid} {1 if ok else 0}")
        except _Deadline:  # a timer that fired late; answer anyway
            send(f"{rid} {1 if ok else 0}")
        if fatal:
            os._exit(3)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
