r"""Grading of math answers: extract the final answer of a completion and decide it against a gold.

Used for MATH-500 (``math_oai``), GSM8K, Minerva Math, OlympiadBench, AIME24, AMC23 and the
embedded arithmetic task (``7+5=12;4+3+1=8;\boxed{82}``, gold ``82``). Users: see
``docs/grading.md``.

Pipeline
--------
1. **Extraction** (:func:`extract_answer`, pure Python): the content of the *last*
   ``\boxed{...}`` / ``\fbox{...}`` (brace-matched; ``\boxed 5`` also works); if the completion has a
   box but the last one is never closed, there is no answer. Without a box: the text after the last
   "the answer is", else after the last ``Answer:``, else the last number.
2. **Fast path** (pure Python, no SymPy): both sides are normalised (:func:`normalize_answer`), then
   compared as strings, as exact numbers (``fractions.Fraction``; integers, decimals, scientific
   notation, ``a/b``, ``\frac{a}{b}``, mixed numbers, ``+ - * / ^ !``, ``\sqrt`` of perfect
   squares), as structures (tuples, intervals, sets, bare lists, unions, matrices: element by
   element) or as multiple-choice letters. Most answers are decided here (thousands per second).
3. **Symbolic path**: what the fast path cannot decide goes to Math-Verify (``parse`` + ``verify``,
   LaTeX extraction only) in a separate worker process with a wall-clock limit, a memory limit
   (``RLIMIT_AS``, 2 GiB) and a per-request CPU limit. On timeout the worker is SIGKILLed and a new
   one is started; the answer is False. Only a bool crosses the process boundary.

Policy (every choice, also fields of :class:`GradingPolicy`)
------------------------------------------------------------
* Numbers: equal within relative tolerance ``rel_tol = 1e-4`` (upstream harness). Two *integers*
  must be equal exactly (``integers_exact=True``; upstream used the tolerance, which accepts 10001
  for 10000). Exact rational arithmetic, so ``1/2^98`` vs ``1/2^99`` is False (Math-Verify says True).
* Percent: ``%`` / ``\%`` are dropped, and (as upstream) ``gold*100`` and ``gold/100`` are also
  accepted (``percent_scaling=True``): gold ``50\%`` accepts ``50`` and ``0.5``; gold ``0.5``
  accepts ``50\%``. This also accepts 300 for gold 3; set ``percent_scaling=False`` to refuse it.
* Unreduced fractions are accepted (``\frac{2}{4}`` for ``\frac{1}{2}``; ``unreduced_fractions``).
* Mixed numbers: ``1 1/4``, ``1\frac{1}{4}``, ``137 \frac{1}{2}`` (an integer directly followed by a
  proper fraction of integers, as the whole answer) mean 1 + 1/4 (Math-Verify reads ``1 1/4`` as 1).
* Intervals vs inequalities: a gold interval is *not* matched by an inequality (``x<3`` for
  ``(-\infty,3)``); a gold inequality does accept the interval (Math-Verify's rule).
  ``interval_matches_inequality=True`` accepts both directions.
* Several boxes: the last one counts (two boxes are never merged into a set). With
  ``multiple_boxes="join"`` all boxes, comma-joined, are tried as well if the last one is wrong.
* Multiple choice: when the gold is one letter A-E (``C``, ``(C)``, ``\text{(C)}``), the chosen
  letter is compared: the letter at the start of the last box (``\boxed{\mathrm{(D)}\ 1,008,016}``
  -> D), a later ``Answer: D`` / "the answer is (D)" wins over an earlier box; with no box at
  all, the last ``(C)`` in the final 300 characters. A value without its letter is wrong.
* Ignored: ``$``, ``\(\)``, ``\left``/``\right``, spacing (``\!``, ``\,``, ``~``, ``\quad``),
  ``\dfrac``/``\tfrac`` (= ``\frac``), ``\text{...}`` units after a value (``10\text{ cm}``,
  ``864 \mbox{ inches}^2``, ``1.6 \mathrm{~cm}``, ``5 apples``), degrees (``^\circ``, ``°``),
  ``\$``, thousands separators (``1,008,016``, ``10,\!080``) when the whole answer is one number,
  a trailing ``.``, a leading ``x =`` / ``\theta =`` / ``x \in`` (one variable), a leading
  choice label ``(D)`` before a value, a base subscript on a gold integer (``52_8`` accepts ``52``).
  Unicode ``−``, ``√``, ``π``, ``×``, ``·``, ``≤``, ``≥``, ``∞``, ``²`` are read as LaTeX; bidi and
  zero-width characters are removed. ``\sqrt(2)`` means ``\sqrt{2}`` (so ``4\sqrt(2)`` is not 4).
* Word answers (gold ``\text{Evelyn}``, yes/no, even/odd): case-insensitive letter comparison.
* Two closed-form numbers in the worker (``\frac{\pi}{2}`` vs ``1.5708``) are decided by the
  same relative tolerance (30-digit evaluation), not by Math-Verify's 6-decimal rounding.
* Bare comma lists (``1,2``) compare as multisets (order-free), like ``\{1,2\}``; tuples and
  intervals are ordered and their brackets must match (``(3,4]`` is not ``(3,4)``).
* Huge numbers: no integer of more than ~10,000 bits is ever built in process. Integer powers
  beyond that are compared exactly as ``root^exponent`` (root not a perfect power), so
  ``2^{2^{16}}`` equals ``2^{65536}`` and ``4^{32768}`` (True, in microseconds). Answers whose value
  cannot be represented (``9^{9^{9^{9}}}``, ``(10^{10})!``), or containing a numeric exponent above
  100,000, a factorial above 10,000 or a digit run above 2,000 digits, are accepted only on an
  exact or exact-power match and never sent to the CAS. Answers longer than ``max_answer_chars``
  (2,000) after normalisation are compared as strings only.
* Time: each call has a wall limit (``timeout_s``, default 5 s) that bounds the symbolic work;
  the one-time start of the worker (~1 s, at most ``startup_timeout_s``) and waiting for another
  thread's call to finish (calls share one worker, under a lock) are not counted. Past the limit
  the answer is False. Results near the limit can depend on machine load.
* Safety: model text is never passed to ``eval``/``exec``/``sympify``/``parse_expr``; SymPy values
  are never printed or logged; any internal error means False (functions here never raise).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import unicodedata
import warnings
import weakref
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Iterable, Literal, Sequence

__all__ = [
    "DEFAULT_POLICY",
    "Grader",
    "GradingPolicy",
    "answers_match",
    "extract_answer",
    "grade_many",
    "is_correct",
    "normalize_answer",
]


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GradingPolicy:
    """The grading choices (see the module docstring and docs/grading.md)."""

    #: Relative tolerance for numbers that are not both integers (upstream: 1e-4).
    rel_tol: float = 1e-4
    #: Two integers must be exactly equal (upstream compared them with ``rel_tol`` too).
    integers_exact: bool = True
    #: Also accept gold*100 and gold/100 (upstream: yes). Percent signs are always dropped.
    percent_scaling: bool = True
    #: Accept an unreduced fraction (``\frac{2}{4}``) for a reduced gold (``\frac{1}{2}``).
    unreduced_fractions: bool = True
    #: Accept an inequality for a gold interval (the reverse is always accepted).
    interval_matches_inequality: bool = False
    #: "last": only the last box counts; "join": if it fails, also try all boxes comma-joined.
    multiple_boxes: Literal["last", "join"] = "last"
    #: A one-letter gold A-E is graded by the chosen letter.
    multiple_choice: bool = True
    #: Use the Math-Verify worker for what the fast path cannot decide.
    symbolic: bool = True
    #: Longer normalised answers are compared as strings only (never sent to the CAS).
    max_answer_chars: int = 2000

    def __post_init__(self) -> None:
        if not (isinstance(self.rel_tol, (int, float)) and 0 <= self.rel_tol < 1):
            raise ValueError("rel_tol must be in [0, 1)")
        if self.multiple_boxes not in ("last", "join"):
            raise ValueError("multiple_boxes must be 'last' or 'join'")


DEFAULT_POLICY = GradingPolicy()


@lru_cache(maxsize=64)
def _rel(rel_tol: float) -> Fraction:
    return Fraction(repr(float(rel_tol)))


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_BRACE_TOK = re.compile(r"\\.|[{}]", re.S)
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_BARE = re.compile(r"[^\s$]+")
_LAST_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = "the answer is"
_ANSWER_COLON = "answer:"


def _match_brace(s: str, i: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``s[i]`` (escaped braces skipped), or -1."""
    depth = 0
    for m in _BRACE_TOK.finditer(s, i):
        t = m.group()
        if t == "{":
            depth += 1
        elif t == "}":
            depth -= 1
            if depth == 0:
                return m.start()
            if depth < 0:
                return -1
    return -1


def _balanced(s: str) -> bool:
    """Whether the (unescaped) braces of ``s`` are balanced."""
    depth = 0
    for m in _BRACE_TOK.finditer(s):
        t = m.group()
        if t == "{":
            depth += 1
        elif t == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _box_at(s: str, cmd_end: int) -> tuple[str | None, int]:
    """(content, end) of the box whose command ends at ``cmd_end``; content None if unclosed."""
    j = cmd_end
    n = len(s)
    while j < n and s[j] in " \t":
        j += 1
    if j < n and s[j] == "{":
        k = _match_brace(s, j)
        if k < 0:
            return None, n
        return s[j + 1:k], k + 1
    m = _BOX_BARE.match(s, j)
    if m and j > cmd_end:  # "\boxed 5"
        return m.group(), m.end()
    return None, j


def _last_box(s: str) -> tuple[bool, str | None]:
    """(has_box, content of the last box or None if that box is unclosed)."""
    pos = len(s)
    while True:
        i = max(s.rfind("\\boxed", 0, pos), s.rfind("\\fbox", 0, pos))
        if i < 0:
            return False, None
        m = _BOX_CMD.match(s, i)
        if m:
            content, _ = _box_at(s, m.end())
            return True, content
        pos = i


def last_boxed(text: str) -> str | None:
    """Content of the last brace-matched ``\\boxed{}``/``\\fbox{}`` of ``text``; None if there is none
    or it is never closed. (The one box extractor: gold solutions and the embedded checks use it too.)"""
    return _last_box(text)[1]


def _all_boxes(s: str) -> list[str]:
    """Contents of all top-level boxes, left to right (stops at an unclosed one)."""
    out: list[str] = []
    end = 0
    for m in _BOX_CMD.finditer(s):
        if m.start() < end:
            continue
        content, end = _box_at(s, m.end())
        if content is None:
            break
        out.append(content)
    return out


def _answer_tail(text: str) -> str | None:
    text = text[:2000].lstrip(" \t:*\uff1a")
    text = text.lstrip()
    line = text.split("\n", 1)[0]
    line = re.split(r"\.\s", line, maxsplit=1)[0]
    line = line.strip().strip("*").strip()
    line = line.rstrip(".").strip().strip("$").strip()
    return line or None


def extract_answer(completion: str) -> str | None:
    r"""The final answer of a completion, or None (never raises).

    The last brace-matched ``\boxed{}`` / ``\fbox{}``; else the text after the last
    "the answer is"; else after the last ``Answer:``; else the last number.
    """
    try:
        if not isinstance(completion, str) or not completion:
            return None
        has_box, content = _last_box(completion)
        if has_box:
            content = content.strip() if content is not None else None
            return content or None
        low = completion.lower()
        for marker in (_ANSWER_IS, _ANSWER_COLON):
            k = low.rfind(marker)
            if k >= 0:
                tail = _answer_tail(completion[k + len(marker):])
                if tail:
                    return tail
        last = None
        for last in _LAST_NUMBER.finditer(completion):
            pass
        return last.group() if last else None
    except Exception:  # noqa: BLE001
        return None


# Multiple choice ------------------------------------------------------------------------------

_CHOICE_KEY = re.compile(r"\(?([A-E])\)?")
_CHOICE_START = re.compile(r"\(?([A-E])\)?(?![A-Za-z0-9])")
_CHOICE_ANSWER = re.compile(
    r"(?i:answer)(?:\s+(?i:is))?\s*[:\uff1a]?\s*(?:\*\*)?\s*\$?\s*"
    r"(?:\\(?:text|mathrm|textbf|mathbf)\s*\{\s*)?\(?([A-E])\)?(?![A-Za-z0-9])")
_CHOICE_PAREN = re.compile(r"\(([A-E])\)")


def _choice_of_answer(raw: str) -> str | None:
    """The letter an extracted answer starts with (``(D) 1,008,016`` -> D), or None."""
    s = _unwrap_text(raw)
    s = re.sub(r"\\[,;:! ]|[\s$~]", "", s)
    m = _CHOICE_START.match(s)
    return m.group(1) if m else None


def _gold_choice(gold: str) -> str | None:
    m = _CHOICE_KEY.fullmatch(_analyze(gold).key)
    return m.group(1) if m else None


def _extract_choice(completion: str) -> str | None:
    best: tuple[int, str] | None = None
    has_box, content = _last_box(completion)
    if has_box and content:
        letter = _choice_of_answer(content)
        if letter:
            pos = max(completion.rfind("\\boxed"), completion.rfind("\\fbox"))
            best = (pos, letter)
    last = None
    for last in _CHOICE_ANSWER.finditer(completion):
        pass
    if last is not None and (best is None or last.start() > best[0]):
        best = (last.start(), last.group(1))
    if best is not None or has_box:  # a box without a letter: the last box counts
        return best[1] if best is not None else None
    tail_start = max(0, len(completion) - 300)
    last = None
    for last in _CHOICE_PAREN.finditer(completion, tail_start):
        pass
    return last.group(1) if last else None


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-", "\ufe63": "-",
    "\uff0d": "-", "\u00d7": r"\times ", "\u22c5": r"\cdot ", "\u00b7": r"\cdot ",
    "\u2219": r"\cdot ", "\u00f7": r"\div ", "\u221a": r"\sqrt", "\u03c0": r"\pi ",
    "\u221e": r"\infty ", "\u2264": r"\le ", "\u2265": r"\ge ", "\u2260": r"\ne ",
    "\u00b0": r"^\circ ", "\u00b2": "^2", "\u00b3": "^3", "\u00b9": "^1", "\u00bd": r"\frac{1}{2}",
    "\u00bc": r"\frac{1}{4}", "\u00be": r"\frac{3}{4}", "\u2044": "/", "\u2215": "/",
    "\uff0c": ",", "\uff08": "(", "\uff09": ")", "\u222a": r"\cup ", "\u2229": r"\cap ",
    "\u2208": r"\in ", "\u00b1": r"\pm ",
}
_ASCII_CONTROL = {i: " " for i in range(32)}
_ASCII_CONTROL[127] = None

_TEXT_CMD = re.compile(
    r"\\(text|textrm|textbf|textit|textsf|texttt|textnormal|textup|mbox|mathrm|mathbf|mathit"
    r"|mathsf|mathtt|mathnormal|operatorname|rm|bf)\s*\{")
_UNIT_CMDS = {"text", "textrm", "textnormal", "textup", "mbox", "mathrm", "textit", "textsf"}
_POW_AFTER = re.compile(r"\s*\^\s*(?:\{[^{}]*\}|-?\d)")
_UNIT_CONTENT = re.compile(r"[A-Za-z\s/.\-^{}0-9\\()]*")
_SPACING = re.compile(r"(\\\\)|\\[,;:! >]|\\q?quad(?![A-Za-z])|\\hspace\s*\{[^{}]*\}|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)\s*\.|\\(?:left|right|[Bb]igg?[lr]?)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*(?:\{\s*\\circ\s*\}|\\circ)|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])")
_MIXED_TEX = re.compile(r"([-+]?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")
_MIXED_TXT = re.compile(r"([-+]?)(\d+)\s+(\d+)\s*/\s*(\d+)")
_UNIT_WORDS = re.compile(
    r"([-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:\s*/\s*\d+)?)\s*"
    r"([A-Za-z]{2,}(?:\s+[A-Za-z]+)*)(?:\s*\^\s*\{?\d\}?)?")
_NOT_UNIT_WORDS = {"pi", "i", "e", "sqrt", "and", "or", "to", "and/or", "ln", "log", "sin", "cos",
                   "tan", "mod", "choose"}
_AND_OR = re.compile(r"(?<=[\d}])\s+(?:and|or)\s+(?=[-+\d\\.])")
_GREEK = (r"\\(?:alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa"
          r"|lambda|mu|nu|xi|rho|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta"
          r"|Lambda|Xi|Sigma|Phi|Psi|Omega)(?![A-Za-z])")
_VAR_ASSIGN = re.compile(r"(?:[A-Za-z]|" + _GREEK + r")(?:_(?:\{[A-Za-z0-9]+\}|[A-Za-z0-9]))?"
                         r"\s*(?:=|\\in(?![A-Za-z]))")
_CHOICE_LABEL = re.compile(r"\(([A-E])\)\s*(?=\S)")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BASE_SUB = re.compile(r"(\d+)_\{?(\d+)\}?")
_WS = re.compile(r"(\\[A-Za-z]+)?\s+")
_WORD_GOLDS = {"yes", "no", "true", "false", "none", "odd", "even", "neither", "both", "always",
               "never", "impossible", "undefined"}


def _text_groups(s: str) -> list[tuple[int, int, int, str, str]]:
    """(start, end, end_with_power, command, content) of top-level ``\\text{...}``-like groups."""
    out = []
    pos = 0
    for m in _TEXT_CMD.finditer(s):
        if m.start() < pos:
            continue
        j = m.end() - 1
        k = _match_brace(s, j)
        if k < 0:
            break
        end = k + 1
        pm = _POW_AFTER.match(s, end)
        out.append((m.start(), end, pm.end() if pm else end, m.group(1), s[j + 1:k]))
        pos = end
    return out


def _unwrap_text(s: str) -> str:
    for _ in range(8):
        groups = _text_groups(s)
        if not groups:
            return s
        parts, last = [], 0
        for start, end, _pend, cmd, content in groups:
            parts.append(s[last:start])
            parts.append("\\" + content if cmd == "operatorname" and content.isalpha() else content)
            last = end
        parts.append(s[last:])
        s = "".join(parts)
    return s


def _is_unit(cmd: str, content: str) -> bool:
    c = re.sub(r"\\[,;:! ]|~", " ", content).strip()
    if cmd not in _UNIT_CMDS or sum(ch.isalpha() for ch in c) < 2:
        return False
    if _CHOICE_KEY.fullmatch(c):
        return False
    return bool(_UNIT_CONTENT.fullmatch(c))


def _handle_text(s: str) -> tuple[str, bool]:
    """Drop unit-like text groups after a value, turn ``\\text{ and }`` into commas, unwrap the rest.

    Returns (string, whole_answer_was_a_word_in_text).
    """
    groups = _text_groups(s)
    if not groups:
        return s, False
    word = False
    if len(groups) == 1:
        start, end, _pend, cmd, content = groups[0]
        if not s[:start].strip() and not s[end:].strip() and cmd not in ("operatorname",):
            c = content.strip()
            word = bool(c) and bool(re.fullmatch(r"[A-Za-z][A-Za-z\s'\-]*", c)) and len(c) >= 2
    kept, last, dropped = [], 0, False
    for start, end, pend, cmd, content in groups:
        c = re.sub(r"\\[,;:! ]|~", " ", content).strip().lower()
        kept.append(s[last:start])
        if c in ("and", "or", ","):
            kept.append(",")
            last = end
        elif _is_unit(cmd, content):
            dropped = True
            last = pend
        else:
            kept.append(s[start:end])
            last = end
    kept.append(s[last:])
    rest = "".join(kept)
    if dropped:
        core = re.sub(r"[\s$.,;/]|\\cdot|\\times", "", rest)
        if not (re.search(r"[A-Za-z0-9]", core) or "\\" in core):
            rest = s  # only text: keep the words (unwrapped below)
    return _unwrap_text(rest).strip(), word


def _brace_args(s: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\sqrt2`` -> ``\sqrt{2}``, ``\sqrt(2)`` -> ``\sqrt{2}``."""
    if "\\frac" not in s and "\\sqrt" not in s:
        return s
    out: list[str] = []
    i, n = 0, len(s)
    cmd_re = re.compile(r"\\(frac|sqrt)(?![A-Za-z])")
    while i < n:
        m = cmd_re.search(s, i)
        if not m:
            out.append(s[i:])
            break
        out.append(s[i:m.end()])
        j = m.end()
        nargs = 2 if m.group(1) == "frac" else 1
        if nargs == 1:
            k = j
            while k < n and s[k] == " ":
                k += 1
            if k < n and s[k] == "[":  # \sqrt[3]{...}
                close = s.find("]", k)
                if close < 0:
                    out.append(s[j:])
                    break
                out.append(s[j:close + 1])
                j = close + 1
        for _ in range(nargs):
            k = j
            while k < n and s[k] == " ":
                k += 1
            if k >= n:
                j = k
                break
            c = s[k]
            if c == "{":
                e = _match_brace(s, k)
                if e < 0:
                    out.append(s[j:])
                    j = n
                    break
                out.append(s[k:e + 1])
                j = e + 1
            elif c == "(" and nargs == 1:
                e = _match_paren(s, k)
                if e < 0:
                    out.append(s[j:])
                    j = n
                    break
                out.append("{" + s[k + 1:e] + "}")
                j = e + 1
            elif c.isalnum():
                out.append("{" + c + "}")
                j = k + 1
            elif c == "\\":
                mm = re.match(r"\\[A-Za-z]+", s[k:])
                if not mm:
                    j = k
                    break
                out.append("{" + mm.group() + "}")
                j = k + mm.end()
            else:
                j = k
                break
        i = j
    return "".join(out)


def _match_paren(s: str, i: int) -> int:
    depth = 0
    for k in range(i, min(len(s), i + 5000)):
        c = s[k]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return k
    return -1


def _collapse_ws(s: str) -> str:
    """Remove whitespace, keeping one space between a LaTeX command and a following letter."""
    def repl(m: re.Match) -> str:
        cmd = m.group(1) or ""
        nxt = m.string[m.end():m.end() + 1]
        return cmd + (" " if cmd and nxt.isalpha() else "")
    return _WS.sub(repl, s)


def _strip_outer_box(s: str) -> str:
    for _ in range(4):
        m = _BOX_CMD.match(s)
        if not m:
            return s
        content, end = _box_at(s, m.end())
        if content is None or s[end:].strip():
            return s
        s = content.strip()
    return s


_MAX_NORMALIZE_CHARS = 5000


def _normalize(s: str) -> tuple[str, bool, bool]:
    """(key, had_percent, is_word_answer)."""
    if not isinstance(s, str):
        s = str(s)
    if not s.isascii():
        s = "".join(_UNICODE.get(ch, ch) for ch in s)
        s = "".join(ch for ch in s if ch in "\n\t" or unicodedata.category(ch) not in ("Cf", "Cc", "Co", "Cs"))
    s = s.translate(_ASCII_CONTROL).strip()
    if len(s) > _MAX_NORMALIZE_CHARS:  # only cheap, linear steps for huge answers
        return _collapse_ws(s.replace("$", "")), False, False
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[()\[\]]", " ", s).strip()
    s = _strip_outer_box(s)
    s = _LEFT_RIGHT.sub("", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\displaystyle(?![A-Za-z])", "", s)
    s = _SPACING.sub(lambda m: m.group(1) or " ", s)
    s = s.replace("{,}", ",")
    s, word = _handle_text(s)
    s = _DEGREES.sub("", s)
    had_percent = "%" in s
    if had_percent:
        s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\leq(?:slant)?(?![A-Za-z])", r"\\le", s)
    s = re.sub(r"\\geq(?:slant)?(?![A-Za-z])", r"\\ge", s)
    s = re.sub(r"\\neq(?![A-Za-z])", r"\\ne", s)
    s = re.sub(r"\*\*", "^", s)
    s = _brace_args(s)
    s = s.strip().rstrip(".;,").strip()
    m = _CHOICE_LABEL.match(s)
    if m:
        s = s[m.end():]
    if s.count("=") == 1 or (s.count("=") == 0 and "\\in" in s):
        m = _VAR_ASSIGN.match(s)
        if m and s[m.end():].strip() and _balanced(s[m.end():]):
            s = s[m.end():].strip()
    m = _MIXED_TEX.fullmatch(s) or _MIXED_TXT.fullmatch(s)
    if m and 0 < int(m.group(3)) < int(m.group(4)) and len(s) < 200:
        whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
        s = f"{m.group(1)}\\frac{{{whole * den + num}}}{{{den}}}"
    s = _AND_OR.sub(",", s)
    m = _UNIT_WORDS.fullmatch(s)
    if m and m.group(2).split()[0].lower() not in _NOT_UNIT_WORDS:
        s = m.group(1)
    s = _collapse_ws(s)
    s = re.sub(r"\s+\.$", "", s).rstrip(".").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if s.startswith("+") and len(s) > 1 and (s[1].isdigit() or s[1] == "."):
        s = s[1:]
    m = _BASE_SUB.fullmatch(s)
    if m:
        s = f"{m.group(1)}_{m.group(2)}"
    if re.fullmatch(r"[A-Za-z]{2,}", s) and s.lower() in _WORD_GOLDS:
        word = True
    return s, had_percent, word


def normalize_answer(s: str) -> str:
    """The comparison key of an answer (a string; "" for nothing). Never raises."""
    try:
        return _normalize(s)[0]
    except Exception:  # noqa: BLE001
        return ""


# --------------------------------------------------------------------------------------------
# Safe exact evaluation of numeric expressions (no eval, bounded sizes)
# --------------------------------------------------------------------------------------------

_MAX_BITS = 10_000        # never materialise an integer larger than this (about 3,000 digits)
_DANGER_BITS = 200_000    # values estimated beyond this are never handed to the CAS
_MAX_FACTORIAL_DANGER = 10_000
_MAX_EXPONENT_SCAN = 100_000
_MAX_DEPTH = 60
_MAX_TOKENS = 4000


class _NotNumeric(Exception):
    pass


class _TooBig(Exception):
    def __init__(self, danger: bool) -> None:
        super().__init__()
        self.danger = danger


@dataclass(frozen=True)
class _Huge:
    """sign * root**exp with root >= 2 not a perfect power (compared exactly, never expanded)."""

    sign: int
    root: int
    exp: int


def _huge_bits(h: _Huge) -> float:
    return abs(h.exp) * math.log2(h.root)


_TOKEN = re.compile(
    r"\s+|(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|(\\[A-Za-z]+)|(\*\*|[-+*/^!(){}])|(.)",
    re.S)
_MUL_CMDS = {"\\cdot", "\\times", "*"}
_DIV_CMDS = {"\\div", "/"}


def _number(tok: str) -> Fraction:
    mant, _, exp = tok.lower().partition("e")
    if len(mant) > 2000:
        raise _TooBig(True)
    if exp:
        e = int(exp)
        if abs(e) > 3000:
            raise _TooBig(abs(e) > 60_000)
    return Fraction(tok)


def _tokens(s: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for m in _TOKEN.finditer(s):
        num, cmd, op, other = m.groups()
        if num is not None:
            out.append(("n", num))
        elif cmd is not None:
            out.append(("o", cmd))
        elif op is not None:
            out.append(("o", "^" if op == "**" else op))
        elif other is not None:
            raise _NotNumeric()
        if len(out) > _MAX_TOKENS:
            raise _NotNumeric()
    return out


def _fbits(v: Fraction) -> int:
    return max(v.numerator.bit_length(), v.denominator.bit_length())


def _checked(v: Fraction) -> Fraction:
    if _fbits(v) > _MAX_BITS:
        raise _TooBig(_fbits(v) > _DANGER_BITS)
    return v


def _iroot(n: int, k: int) -> int:
    if n < 2:
        return n
    x = 1 << ((n.bit_length() + k - 1) // k)
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


_SMALL_PRIMES = [p for p in range(2, 100) if all(p % q for q in range(2, int(p ** 0.5) + 1))]


def _perfect_power(n: int) -> tuple[int, int]:
    """(r, m) with n == r**m and m maximal (exact for m with prime factors < 100)."""
    m = 1
    changed = True
    while changed and n > 3:
        changed = False
        for p in _SMALL_PRIMES:
            if p > n.bit_length():
                break
            r = _iroot(n, p)
            if r ** p == n:
                n, m, changed = r, m * p, True
                break
    return n, m


def _neg(v):
    if isinstance(v, _Huge):
        return _Huge(-v.sign, v.root, v.exp)
    return -v


def _add(a, b):
    if isinstance(a, _Huge) or isinstance(b, _Huge):
        bits = max(_huge_bits(x) for x in (a, b) if isinstance(x, _Huge))
        raise _TooBig(bits > _DANGER_BITS)
    return _checked(a + b)


def _from_huge(sign: int, root: int, exp: int):
    if exp == 0:
        return Fraction(sign)
    if abs(exp) * math.log2(root) <= _MAX_BITS:
        v = Fraction(root) ** exp
        return v if sign > 0 else -v
    return _Huge(sign, root, exp)


def _mul(a, b, divide: bool = False):
    if isinstance(a, _Huge) or isinstance(b, _Huge):
        if isinstance(b, Fraction) and abs(b) == 1:
            return a if b > 0 else _neg(a)
        if isinstance(a, Fraction) and abs(a) == 1:
            if divide:
                return _Huge(b.sign * int(a), b.root, -b.exp)
            return b if a > 0 else _neg(b)
        if isinstance(a, _Huge) and isinstance(b, _Huge) and a.root == b.root:
            return _from_huge(a.sign * b.sign, a.root, a.exp - b.exp if divide else a.exp + b.exp)
        bits = max(_huge_bits(x) for x in (a, b) if isinstance(x, _Huge))
        raise _TooBig(bits > _DANGER_BITS)
    if divide:
        if b == 0:
            raise _NotNumeric()
        return _checked(a / b)
    return _checked(a * b)


def _pow(b, e):
    if isinstance(e, _Huge):
        raise _TooBig(True)
    if e.denominator != 1:
        raise _NotNumeric()
    k = e.numerator
    if isinstance(b, _Huge):
        exp = b.exp * k
        if exp.bit_length() > _MAX_BITS:
            raise _TooBig(True)
        return _from_huge(b.sign ** (k % 2) if b.sign < 0 else 1, b.root, exp)
    if b == 0:
        if k < 0:
            raise _NotNumeric()
        return Fraction(1 if k == 0 else 0)
    if abs(b) == 1:
        return Fraction(1) if (b > 0 or k % 2 == 0) else Fraction(-1)
    est = abs(k) * max(math.log2(abs(b.numerator)) if b.numerator not in (0, 1, -1) else 0.0,
                       math.log2(b.denominator) if b.denominator > 1 else 0.0)
    if est <= _MAX_BITS:
        return b ** k
    if k.bit_length() > _MAX_BITS:
        raise _TooBig(True)
    if b.denominator == 1 or abs(b.numerator) == 1:
        base = abs(b.numerator) if b.denominator == 1 else b.denominator
        invert = b.denominator != 1
        root, m = _perfect_power(base)
        if root >= 2:
            sign = -1 if (b < 0 and k % 2) else 1
            return _Huge(sign, root, (-1 if invert else 1) * m * k)
    raise _TooBig(est > _DANGER_BITS)


def _factorial(v):
    if isinstance(v, _Huge):
        raise _TooBig(True)
    if v.denominator != 1 or v < 0:
        raise _NotNumeric()
    n = v.numerator
    if n > _MAX_FACTORIAL_DANGER:
        raise _TooBig(True)
    if math.lgamma(n + 1) / math.log(2) > _MAX_BITS:
        raise _TooBig(False)
    return Fraction(math.factorial(n))


def _sqrt(v):
    if isinstance(v, _Huge) or v < 0:
        raise _NotNumeric()
    rn, rd = math.isqrt(v.numerator), math.isqrt(v.denominator)
    if rn * rn == v.numerator and rd * rd == v.denominator:
        return Fraction(rn, rd)
    raise _NotNumeric()


class _Parser:
    def __init__(self, toks: list[tuple[str, object]]) -> None:
        self.t = toks
        self.i = 0

    def peek(self):
        return self.t[self.i][1] if self.i < len(self.t) else None

    def take(self, val=None):
        if self.i >= len(self.t):
            raise _NotNumeric()
        kind, v = self.t[self.i]
        if val is not None and (kind != "o" or v != val):
            raise _NotNumeric()
        self.i += 1
        return kind, v

    def expr(self, d: int):
        if d > _MAX_DEPTH:
            raise _NotNumeric()
        v = self.term(d)
        while self.peek() in ("+", "-"):
            _, op = self.take()
            w = self.term(d)
            v = _add(v, w if op == "+" else _neg(w))
        return v

    def term(self, d: int):
        v = self.unary(d)
        while True:
            p = self.peek()
            if p in _MUL_CMDS:
                self.take()
                v = _mul(v, self.unary(d))
            elif p in _DIV_CMDS:
                self.take()
                v = _mul(v, self.unary(d), divide=True)
            else:
                return v

    def unary(self, d: int):
        if d > _MAX_DEPTH:
            raise _NotNumeric()
        p = self.peek()
        if p == "-":
            self.take()
            return _neg(self.unary(d + 1))
        if p == "+":
            self.take()
            return self.unary(d + 1)
        return self.power(d)

    def power(self, d: int):
        b = self.postfix(d)
        if self.peek() == "^":
            self.take()
            return _pow(b, self.exponent(d + 1))
        return b

    def exponent(self, d: int):
        if d > _MAX_DEPTH:
            raise _NotNumeric()
        p = self.peek()
        if p in ("-", "+"):
            self.take()
            v = self.exponent(d + 1)
            return _neg(v) if p == "-" else v
        if p in ("{", "("):
            v = self.group(d)
        else:
            kind, tok = self.take()
            if kind != "n":
                raise _NotNumeric()
            v = _number(tok)
        while self.peek() == "!":
            self.take()
            v = _factorial(v)
        if self.peek() == "^":
            self.take()
            v = _pow(v, self.exponent(d + 1))
        return v

    def postfix(self, d: int):
        v = self.atom(d)
        while self.peek() == "!":
            self.take()
            v = _factorial(v)
        return v

    def group(self, d: int):
        kind, tok = self.take()
        close = {"{": "}", "(": ")"}.get(tok) if kind == "o" else None
        if close is None:
            raise _NotNumeric()
        v = self.expr(d + 1)
        self.take(close)
        return v

    def atom(self, d: int):
        if d > _MAX_DEPTH:
            raise _NotNumeric()
        p = self.peek()
        if p in ("{", "("):
            return self.group(d)
        kind, tok = self.take()
        if kind == "n":
            return _number(tok)
        if tok == "\\frac":
            num = self.group(d)
            den = self.group(d)
            return _mul(num, den, divide=True)
        if tok == "\\sqrt":
            return _sqrt(self.group(d))
        raise _NotNumeric()


def _evaluate(s: str):
    """Exact value (Fraction or _Huge) of a purely numeric expression."""
    toks = _tokens(s)
    if not toks:
        raise _NotNumeric()
    p = _Parser(toks)
    v = p.expr(0)
    if p.i != len(toks):
        raise _NotNumeric()
    return v


_EXP_GROUP = re.compile(r"\^\s*(\{|\d+)")
_FACT_NUM = re.compile(r"(\d+)\s*!")
_LONG_DIGITS = re.compile(r"\d{2001}")


def _danger_scan(key: str) -> bool:
    """True if handing this answer to SymPy risks a huge computation."""
    if _LONG_DIGITS.search(key):
        return True
    for m in _EXP_GROUP.finditer(key):
        if m.group(1) == "{":
            k = _match_brace(key, m.start(1))
            if k < 0:
                continue
            inner = key[m.start(1) + 1:k]
        else:
            inner = m.group(1)
        try:
            v = _evaluate(inner)
        except _TooBig:
            return True
        except Exception:  # noqa: BLE001 - symbolic exponent
            continue
        if isinstance(v, _Huge) or abs(v) > _MAX_EXPONENT_SCAN:
            return True
    for m in _FACT_NUM.finditer(key):
        if len(m.group(1)) > 6 or int(m.group(1)) > _MAX_FACTORIAL_DANGER:
            return True
    for i in [i for i, c in enumerate(key) if c == "!"][:50]:
        j = i - 1
        while j >= 0 and key[j] == " ":
            j -= 1
        if j < 0 or key[j] not in ")}":
            continue
        depth, k = 0, j
        while k >= 0:
            if key[k] in ")}":
                depth += 1
            elif key[k] in "({":
                depth -= 1
                if depth == 0:
                    break
            k -= 1
        if k < 0:
            continue
        try:
            v = _evaluate(key[k + 1:j])
        except _TooBig:
            return True
        except Exception:  # noqa: BLE001
            continue
        if isinstance(v, _Huge) or abs(v) > _MAX_FACTORIAL_DANGER:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Fast comparison
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Analysis:
    key: str
    percent: bool
    word: bool
    value: object  # Fraction | _Huge | None
    danger: bool


@lru_cache(maxsize=16384)
def _analyze_cached(s: str) -> _Analysis:
    key, percent, word = _normalize(s)
    value, danger = None, False
    if key and len(key) <= 4000:
        try:
            value = _evaluate(key)
        except _TooBig as e:
            danger = e.danger
        except (_NotNumeric, ValueError, ZeroDivisionError, OverflowError, RecursionError):
            pass
    elif len(key) > 4000:
        danger = bool(_LONG_DIGITS.search(key))
    return _Analysis(key, percent, word, value, danger)


def _analyze(s: str) -> _Analysis:
    if len(s) > 20000:
        return _analyze_cached.__wrapped__(s)
    return _analyze_cached(s)


def _num_close(p: Fraction, g: Fraction, policy: GradingPolicy) -> bool:
    if p == g:
        return True
    if policy.integers_exact and p.denominator == 1 and g.denominator == 1:
        return False
    return abs(p - g) <= _rel(policy.rel_tol) * max(abs(p), abs(g))


def _values_equal(p, g, policy: GradingPolicy) -> bool:
    if isinstance(p, _Huge) or isinstance(g, _Huge):
        return p == g
    golds = [g]
    if policy.percent_scaling:
        golds += [g * 100, g / 100]
    return any(_num_close(p, c, policy) for c in golds)


_UNREDUCED = re.compile(r"-?(?:\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))")


def _is_unreduced(key: str) -> bool:
    m = _UNREDUCED.fullmatch(key)
    if not m:
        return False
    a, b = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return math.gcd(int(a), int(b)) > 1


_SPLIT_TOK = re.compile(r"\\[{}]|\\\\|\\[A-Za-z]+|\\.|.", re.S)
_OPEN = {"(", "[", "{", "\\{"}
_CLOSE = {")", "]", "}", "\\}"}
_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)


def _split_top(s: str, sep: str) -> list[str] | None:
    """Split at top-level ``sep`` tokens; None if the brackets are unbalanced."""
    parts, depth, last = [], 0, 0
    for m in _SPLIT_TOK.finditer(s):
        t = m.group()
        if t in _OPEN:
            depth += 1
        elif t in _CLOSE:
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and t == sep:
            parts.append(s[last:m.start()])
            last = m.end()
    if depth != 0:
        return None
    parts.append(s[last:])
    return parts


def _single_group(s: str, open_len: int) -> bool:
    """Whether the bracket opening at 0 closes exactly at the end of ``s``."""
    depth = 0
    for m in _SPLIT_TOK.finditer(s):
        t = m.group()
        if t in _OPEN:
            depth += 1
        elif t in _CLOSE:
            depth -= 1
            if depth == 0:
                return m.end() == len(s)
    return False


@lru_cache(maxsize=4096)
def _structure(key: str):
    if len(key) > 4000:
        return None
    m = _MATRIX.fullmatch(key)
    if m:
        kind = "det" if m.group(1).startswith(("v", "V")) else "matrix"
        rows = _split_top(m.group(2), "\\\\")
        if rows is None:
            return None
        rows = [r for r in rows if r.strip()]
        cells = [_split_top(r, "&") for r in rows]
        if any(c is None for c in cells):
            return None
        return (kind, tuple(len(c) for c in cells), tuple(x.strip() for c in cells for x in c))
    if key.startswith("\\{") and key.endswith("\\}") and _single_group(key, 2):
        parts = _split_top(key[2:-2], ",")
        if parts is not None:
            return ("set", None, tuple(p for p in parts if p))
    union = _split_top(key, "\\cup")
    if union is not None and len(union) > 1:
        return ("union", None, tuple(union))
    if key[:1] in "([" and key[-1:] in ")]" and _single_group(key, 1):
        parts = _split_top(key[1:-1], ",")
        if parts is not None and len(parts) > 1:
            return ("seq", key[0] + key[-1], tuple(parts))
        return None
    parts = _split_top(key, ",")
    if parts is not None and len(parts) > 1:
        return ("set", None, tuple(parts))
    return None


def _perfect_matching(n: int, ok) -> bool:
    match_of: list[int] = [-1] * n

    def augment(i: int, seen: list[bool]) -> bool:
        for j in range(n):
            if ok(i, j) and not seen[j]:
                seen[j] = True
                if match_of[j] < 0 or augment(match_of[j], seen):
                    match_of[j] = i
                    return True
        return False

    return all(augment(i, [False] * n) for i in range(n))


def _struct_match(ps, gs, policy: GradingPolicy, depth: int):
    pkind, pshape, pel = ps
    gkind, gshape, gel = gs
    if pkind != gkind:
        return None
    if len(pel) != len(gel):
        return False
    if pkind in ("matrix", "det") and pshape != gshape:
        return False
    if pkind == "seq" and pshape != gshape:
        return False
    if pkind in ("matrix", "det", "seq"):
        undecided = False
        for a, b in zip(pel, gel):
            r = _fast_match(_analyze(a), _analyze(b), policy, depth + 1)
            if r is False:
                return False
            if r is None:
                undecided = True
        return None if undecided else True
    n = len(pel)
    if n > 40:
        return None
    res = [[_fast_match(_analyze(a), _analyze(b), policy, depth + 1) for b in gel] for a in pel]
    if _perfect_matching(n, lambda i, j: res[i][j] is True):
        return True
    if not _perfect_matching(n, lambda i, j: res[i][j] is not False):
        return False
    return None


def _letters(s: str) -> str:
    return "".join(ch for ch in s if ch.isalpha()).casefold()


def _fast_match(pa: _Analysis, ga: _Analysis, policy: GradingPolicy, depth: int = 0):
    """True / False when decided without SymPy, None when undecided."""
    if not pa.key or not ga.key:
        return False
    if pa.key == ga.key:
        return True
    if ga.word:
        return bool(_letters(pa.key)) and _letters(pa.key) == _letters(ga.key)
    mb = _BASE_SUB.fullmatch(ga.key)
    if mb and pa.key.isdigit():
        return pa.key == mb.group(1)
    if pa.value is not None and ga.value is not None:
        ok = _values_equal(pa.value, ga.value, policy)
        if ok and not policy.unreduced_fractions and _is_unreduced(pa.key):
            return False
        return ok
    if pa.danger or ga.danger:
        return False
    if pa.value is not None and isinstance(pa.value, _Huge) and ga.value is None:
        return False
    if depth < 4:
        ps, gs = _structure(pa.key), _structure(ga.key)
        if ps is not None and gs is not None:
            return _struct_match(ps, gs, policy, depth)
    return None


# --------------------------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------------------------

_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
_BOOT = (
    "import sys;sys.path[:]=[p for p in sys.path if p not in ('','.')];"
    "import importlib.util as u;s=u.spec_from_file_location('_asft_grading_worker',sys.argv[1]);"
    "m=u.module_from_spec(s);s.loader.exec_module(m);sys.exit(m.main(sys.argv[2:]))"
)
_LIVE_WORKERS: "weakref.WeakSet[_Worker]" = weakref.WeakSet()
_MAX_START_FAILURES = 3


class _Worker:
    """One Math-Verify child process; not thread-safe (the Grader serialises calls)."""

    def __init__(self, memory_limit_bytes: int, startup_timeout_s: float) -> None:
        self.memory_limit_bytes = int(memory_limit_bytes)
        self.startup_timeout_s = float(startup_timeout_s)
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.ready = False
        self.next_id = 0
        self.owner_pid = os.getpid()
        self.start_failures = 0
        self.disabled = False
        self.restarts = 0
        _LIVE_WORKERS.add(self)

    # lifecycle ------------------------------------------------------------------------------
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's process without touching it."""
        proc, self.proc = self.proc, None
        self.buf, self.ready = b"", False
        self.owner_pid = os.getpid()
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                try:
                    if f is not None:
                        f.close()
                except Exception:  # noqa: BLE001
                    pass
            proc.returncode = -1  # never wait for a process that is not ours

    def spawn(self) -> None:
        if os.name != "posix":
            self.disabled = True
            return
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONWARNINGS="ignore")
        self.buf, self.ready = b"", False
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _WORKER_FILE, "--memory", str(self.memory_limit_bytes)],
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
        except Exception:  # noqa: BLE001
            pass
        try:
            proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            pass
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        if self.owner_pid != os.getpid():
            self.forget_after_fork()
            return
        self.kill()

    def restart(self) -> None:
        self.kill()
        self.restarts += 1
        try:
            self.spawn()
        except Exception:  # noqa: BLE001
            self.proc = None

    # I/O ------------------------------------------------------------------------------------
    def _read_line(self, deadline: float) -> bytes | None:
        """A line from the worker; None on timeout; raises EOFError if it died."""
        import select

        assert self.proc is not None and self.proc.stdout is not None
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
                self._start_failed()
                return False
            if self.disabled or self.proc is None:
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
        self.ready = True
        self.start_failures = 0
        return True

    def _start_failed(self) -> None:
        self.kill()
        self.start_failures += 1
        if self.start_failures >= _MAX_START_FAILURES:
            self.disabled = True
            warnings.warn("asft.eval.grading: the Math-Verify worker could not be started; symbolic "
                          "comparisons are graded False", RuntimeWarning, stacklevel=3)

    def compare(self, pred: str, gold: str, policy: GradingPolicy, timeout_s: float) -> bool:
        """Math-Verify verdict within ``timeout_s`` (start-up excluded); False on any failure."""
        if not self.ensure_ready():
            return False
        if timeout_s <= 0:
            return False
        self.next_id += 1
        rid = self.next_id
        deadline = time.monotonic() + timeout_s
        inner = max(0.01, timeout_s * 0.9 - 0.05)
        req = json.dumps({"i": rid, "p": pred, "g": gold, "t": inner, "rel": policy.rel_tol,
                          "iex": policy.integers_exact, "pct": policy.percent_scaling,
                          "isr": policy.interval_matches_inequality}) + "\n"
        assert self.proc is not None and self.proc.stdin is not None
        try:
            data = req.encode("utf-8", "replace")
            fd = self.proc.stdin.fileno()
            while data:
                written = os.write(fd, data)
                data = data[written:]
            while True:
                line = self._read_line(deadline)
                if line is None:  # wall limit: kill whatever it is doing, start a fresh one
                    self.restart()
                    return False
                parts = line.split()
                if len(parts) == 2 and parts[0] == str(rid).encode():
                    return parts[1] == b"1"
        except (EOFError, OSError, ValueError):
            self.restart()
            return False


def _close_all_workers() -> None:
    for w in list(_LIVE_WORKERS):
        try:
            w.close()
        except Exception:  # noqa: BLE001
            pass


atexit.register(_close_all_workers)


# --------------------------------------------------------------------------------------------
# Grader
# --------------------------------------------------------------------------------------------

_LIVE_GRADERS: "weakref.WeakSet[Grader]" = weakref.WeakSet()


class Grader:
    """A grader owning one lazily started Math-Verify worker process.

    Thread-safe (symbolic comparisons are serialised on the one worker). Use as a context
    manager or call :meth:`close`; workers are also killed at interpreter exit.
    """

    def __init__(self, *, policy: GradingPolicy = DEFAULT_POLICY, timeout_s: float = 5.0,
                 memory_limit_bytes: int = 2 << 30, startup_timeout_s: float = 60.0) -> None:
        self.policy = policy
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._worker = _Worker(memory_limit_bytes, startup_timeout_s)
        _LIVE_GRADERS.add(self)

    # context manager ------------------------------------------------------------------------
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
        return self._worker.pid()

    # grading --------------------------------------------------------------------------------
    def is_correct(self, completion: str, gold: str, policy: GradingPolicy | None = None, *,
                   timeout_s: float | None = None) -> bool:
        """Whether the final answer of ``completion`` equals ``gold``. Never raises."""
        try:
            policy = policy or self.policy
            t0 = time.monotonic()
            timeout = self.timeout_s if timeout_s is None else float(timeout_s)
            if not isinstance(completion, str) or gold is None:
                return False
            gold = _gold_str(gold)
            if policy.multiple_choice:
                letter = _gold_choice(gold)
                if letter is not None:
                    chosen = _extract_choice(completion)
                    if chosen is not None:
                        return chosen == letter
            pred = extract_answer(completion)
            if pred is None:
                return False
            ok = self._match(pred, gold, policy, t0, timeout)
            if not ok and policy.multiple_boxes == "join":
                boxes = _all_boxes(completion)
                if len(boxes) > 1:
                    ok = self._match(", ".join(boxes), gold, policy, t0, timeout)
            return ok
        except Exception:  # noqa: BLE001
            return False

    def answers_match(self, pred: str, gold: str, *, policy: GradingPolicy | None = None,
                      timeout_s: float | None = None) -> bool:
        """Whether two already extracted answers are equivalent. Never raises."""
        try:
            policy = policy or self.policy
            timeout = self.timeout_s if timeout_s is None else float(timeout_s)
            if pred is None or gold is None:
                return False
            return self._match(_gold_str(pred), _gold_str(gold), policy, time.monotonic(), timeout)
        except Exception:  # noqa: BLE001
            return False

    def grade_many(self, pairs: Iterable[tuple[str, str]], *, policy: GradingPolicy | None = None,
                   timeout_s: float | None = None) -> list[bool]:
        """``[is_correct(c, g) for c, g in pairs]`` on this grader's one worker."""
        return [self.is_correct(c, g, policy, timeout_s=timeout_s) for c, g in pairs]

    def _match(self, pred: str, gold: str, policy: GradingPolicy, t0: float, timeout: float) -> bool:
        if policy.multiple_choice:
            letter = _gold_choice(gold)
            if letter is not None:
                return _choice_of_answer(pred) == letter
        pa, ga = _analyze(pred), _analyze(gold)
        fast = _fast_match(pa, ga, policy)
        if fast is not None:
            return fast
        if not policy.symbolic:
            return False
        if len(pa.key) > policy.max_answer_chars or len(ga.key) > policy.max_answer_chars:
            return False
        if not (_balanced(pa.key) and _balanced(ga.key)):
            return False
        if _danger_scan(pa.key) or _danger_scan(ga.key):
            return False
        return self._symbolic(pa.key, ga.key, policy, timeout - (time.monotonic() - t0))

    def _symbolic(self, pred_key: str, gold_key: str, policy: GradingPolicy, timeout: float) -> bool:
        """Math-Verify on two normalised answers in the worker (no fast path, no danger scan)."""
        if timeout <= 0:
            return False
        with self._lock:
            return self._worker.compare(pred_key, gold_key, policy, timeout)


def _gold_str(gold) -> str:
    if isinstance(gold, str):
        return gold
    if isinstance(gold, bool):
        return str(gold)
    if isinstance(gold, float) and gold.is_integer():
        return str(int(gold))
    if isinstance(gold, (int, float, Fraction)):
        return str(gold)
    if isinstance(gold, Sequence) and gold and isinstance(gold[0], str):
        return gold[0]
    return str(gold)


def _after_fork_in_child() -> None:
    global _DEFAULT
    for g in list(_LIVE_GRADERS):
        g._lock = threading.Lock()
    for w in list(_LIVE_WORKERS):
        w.forget_after_fork()
    _DEFAULT = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------------------------
# Module-level API (one lazily created default Grader)
# --------------------------------------------------------------------------------------------

_DEFAULT: Grader | None = None
_DEFAULT_LOCK = threading.Lock()


def _default() -> Grader:
    global _DEFAULT
    g = _DEFAULT
    if g is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = Grader()
            g = _DEFAULT
    return g


def is_correct(completion: str, gold: str, policy: GradingPolicy = DEFAULT_POLICY, *,
               timeout_s: float = 5.0) -> bool:
    r"""Whether the final answer of ``completion`` equals ``gold`` (see the module docstring).

    Never raises; bounded in time (``timeout_s`` of symbolic work per call) and memory.
    """
    try:
        return _default().is_correct(completion, gold, policy, timeout_s=timeout_s)
    except Exception:  # noqa: BLE001
        return False


def answers_match(pred: str, gold: str, *, timeout_s: float = 5.0,
                  policy: GradingPolicy = DEFAULT_POLICY) -> bool:
    """Whether two extracted answers are equivalent (normalisation, numbers, then Math-Verify)."""
    try:
        return _default().answers_match(pred, gold, policy=policy, timeout_s=timeout_s)
    except Exception:  # noqa: BLE001
        return False


def grade_many(pairs: Iterable[tuple[str, str]], *, timeout_s: float = 5.0,
               policy: GradingPolicy = DEFAULT_POLICY) -> list[bool]:
    """Grade ``(completion, gold)`` pairs with one shared worker process; a list of bools."""
    return _default().grade_many(pairs, policy=policy, timeout_s=timeout_s)
