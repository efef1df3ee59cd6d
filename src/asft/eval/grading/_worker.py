"""Private worker process for :mod:`asft.eval.grading`: the symbolic (Math-Verify) comparison.

Run only by ``asft.eval.grading`` as a child process (loaded by file path, so importing it does not
import the ``asft`` package or anything it pulls in). Nothing here is public API.

Protocol (one JSON object per line on stdin, one line per answer on stdout):

* after start-up the worker writes ``READY``;
* request: ``{"i": id, "p": pred_latex, "g": gold_latex, "t": seconds, "rel": rel_tol,
  "iex": integers_exact, "pct": percent_scaling, "isr": interval_matches_inequality}``;
* answer: ``"<id> 1"`` or ``"<id> 0"``. Only this boolean ever leaves the process: parsed SymPy
  values are never rendered (printing a parsed power tower can hang for minutes, uninterruptibly).

Safety:

* only Math-Verify's LaTeX extraction is used (its plain-expression extraction calls SymPy's
  ``parse_expr``, i.e. ``eval``); LaTeX is parsed by a grammar, never evaluated as Python;
* address space is capped with ``RLIMIT_AS``; each request gets a CPU-time budget with
  ``RLIMIT_CPU`` (so even an orphaned worker stuck in a C-level big-integer loop dies), and a
  wall-clock ``ITIMER_REAL`` that aborts Python-level work early; the parent SIGKILLs the worker
  when its own wall limit passes, whatever the worker is doing;
* stdout/stderr are redirected to ``/dev/null`` (the protocol uses a private duplicate of fd 1)
  and logging is disabled, so no library can print (or render) anything.
"""

from __future__ import annotations

import json
import os
import signal
import sys

try:  # POSIX only; the parent never starts a worker where this is missing
    import resource
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]


class _Deadline(BaseException):
    """Raised by the wall-clock timer; a BaseException so library ``except Exception`` won't eat it."""


def _on_alarm(signum, frame):  # noqa: ARG001
    raise _Deadline()


def _limit_memory(nbytes: int) -> None:
    if resource is None or nbytes <= 0:
        return
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = nbytes if hard == resource.RLIM_INFINITY else min(nbytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        pass
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass


def _cpu_budget(seconds: float) -> None:
    """Let the process use at most ``seconds`` (+2) more CPU seconds, then SIGXCPU kills it."""
    if resource is None:
        return
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used + max(seconds, 0.0)) + 3
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ValueError, OSError):
        pass


def _to_mpc(value, sympy, mpmath):
    """A finite mpmath complex for a numeric SymPy value, or None."""
    re_part, im_part = value.as_real_imag()
    if not (re_part.is_Number and im_part.is_Number):
        return None
    z = mpmath.mpc(sympy.Float(re_part, 30)._mpf_, sympy.Float(im_part, 30)._mpf_)
    if not mpmath.isfinite(z):
        return None
    return z


def _numeric_verdict(gold, pred, rel: float, integers_exact: bool, percent: bool):
    """Decide two closed-form numbers by relative tolerance (None: not both plain numbers)."""
    import mpmath
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
        return None
    if gold.free_symbols or pred.free_symbols:
        return None
    if not (gold.is_number and pred.is_number):
        return None
    golds = [gold]
    if percent:
        golds += [gold * 100, gold / 100]
    for g in golds:
        if integers_exact and g.is_Integer and pred.is_Integer:
            if bool(g == pred):
                return True
        elif _close(g, pred, rel, sympy, mpmath):
            return True
    return False


def _close(gold, pred, rel, sympy, mpmath) -> bool:
    g = _to_mpc(sympy.N(gold, 30), sympy, mpmath)
    p = _to_mpc(sympy.N(pred, 30), sympy, mpmath)
    if g is None or p is None:
        return False
    with mpmath.workprec(128):
        scale = max(abs(g), abs(p))
        if scale == 0:
            return True
        return bool(abs(g - p) <= mpmath.mpf(rel) * scale)


def _compare(req: dict, mv) -> bool:
    parse, verify, config = mv
    pred_s, gold_s = req["p"], req["g"]
    if not isinstance(pred_s, str) or not isinstance(gold_s, str):
        return False
    seconds = float(req.get("t", 5.0))
    if seconds <= 0:
        return False
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        gold = [x for x in parse("\\boxed{" + gold_s + "}", extraction_config=config,
                                 fallback_mode="no_fallback", parsing_timeout=None)
                if not isinstance(x, str)]
        pred = [x for x in parse("\\boxed{" + pred_s + "}", extraction_config=config,
                                 fallback_mode="no_fallback", parsing_timeout=None)
                if not isinstance(x, str)]
        if not gold or not pred:
            return False
        # Two closed-form numbers: decided by the tolerance policy, before (and instead of)
        # verify, whose simplification can hang on e.g. log(2)/(log(2)-log(3)) vs an integer.
        verdict = _numeric_verdict(gold[0], pred[0], float(req.get("rel", 1e-4)),
                                   bool(req.get("iex", True)), bool(req.get("pct", True)))
        if verdict is not None:
            return verdict
        return bool(verify(gold, pred, strict=True, timeout_seconds=None,
                           allow_set_relation_comp=bool(req.get("isr", False))))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    memory = 2 << 30
    if "--memory" in argv:
        try:
            memory = int(argv[argv.index("--memory") + 1])
        except (IndexError, ValueError):
            pass
    _limit_memory(memory)

    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115

    def send(text: str) -> None:
        data = (text + "\n").encode("ascii")
        while data:
            written = os.write(out_fd, data)
            data = data[written:]

    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        from math_verify import LatexExtractionConfig, parse, verify

        config = [LatexExtractionConfig(boxed_match_priority=0)]
        parse("\\boxed{\\frac{1}{2}}", extraction_config=config, parsing_timeout=None)  # warm caches
    except Exception:  # noqa: BLE001 - the parent sees EOF and reports the worker unusable
        return 2
    mv = (parse, verify, config)
    send("READY")

    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return 0
        fatal = False
        rid = -1
        try:
            req = json.loads(line)
            rid = int(req["i"])
            _cpu_budget(float(req.get("t", 5.0)))
            ok = _compare(req, mv)
        except MemoryError:
            ok, fatal = False, True
        except BaseException:  # noqa: BLE001 - includes _Deadline; any failure is "not equal"
            ok = False
        try:
            send(f"{rid} {1 if ok else 0}")
        except _Deadline:  # a timer that fired late; answer anyway
            send(f"{rid} {1 if ok else 0}")
        if fatal:
            os._exit(3)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
