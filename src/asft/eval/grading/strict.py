r"""The ``strict`` grading policy: Math-Verify, plus the few rules it gets wrong (docs/grading.md).

``extract`` and ``fast`` are pure Python (no CAS) and safe in any process. ``grade`` is the whole
decision; it is called only inside the sandbox worker (``_worker.py``) and imports Math-Verify
lazily. ``grade`` calls ``fast`` first, so the parent's pre-check (``fast``) can never disagree with
the worker: whatever ``fast`` decides *is* the policy's verdict.

What comes from Math-Verify: extraction from unboxed text (``parse`` with
``LatexExtractionConfig(boxed_match_priority=0)`` then ``ExprExtractionConfig()``), LaTeX
normalisation and parsing (latex2sympy2-extended) and symbolic comparison (``verify``). What this
module adds: the last box counts (never several boxes merged into a set); multiple-choice letters;
plain-text mixed numbers; Unicode minus, pi, sqrt, bidi and zero-width characters; ``\sqrt(2)``;
``\mathrm{e}``; exact comparison of integer powers (``2^{2^{16}}`` = ``2^{65536}``) and no CAS for
power towers, huge factorials or exponents; numbers compared by relative tolerance 1e-4 (integers
exactly, tiny and huge magnitudes included); percent signs.
"""

from __future__ import annotations

import math
import re
import unicodedata
from fractions import Fraction

VERSION = 1
DESCRIPTION = ("Math-Verify parse/verify (last box first, then final-answer forms, LaTeX, plain "
               "expressions) plus: the last box counts, multiple-choice letters, mixed numbers, "
               "Unicode, exact huge powers, numbers within relative 1e-4 (integers exact), percent.")

REL_TOL = Fraction(1, 10_000)
MAX_ANSWER_CHARS = 2000       # longer answers are compared as exact strings only
UNBOXED_TAIL_CHARS = 10_000   # without a box or an answer marker, Math-Verify reads this much
_MAX_BITS = 100_000           # integer powers up to this size are compared exactly

# --------------------------------------------------------------------------------------------
# Text cleaning (Unicode) and boxes
# --------------------------------------------------------------------------------------------

_UNICODE = str.maketrans({
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-", "\ufe63": "-",
    "\uff0d": "-", "\u00d7": r"\times ", "\u22c5": r"\cdot ", "\u00b7": r"\cdot ",
    "\u00f7": r"\div ", "\u221a": r"\sqrt", "\u03c0": r"\pi ", "\u221e": r"\infty ",
    "\u2264": r"\le ", "\u2265": r"\ge ", "\u2260": r"\ne ", "\u00b0": r"^\circ ", "\u00b2": "^2",
    "\u00b3": "^3", "\u00bd": r"\frac{1}{2}", "\u00bc": r"\frac{1}{4}", "\u00be": r"\frac{3}{4}",
    "\u2044": "/", "\u2215": "/", "\uff0c": ",", "\uff08": "(", "\uff09": ")", "\u222a": r"\cup ",
    "\u2229": r"\cap ", "\u2208": r"\in ", "\u00b1": r"\pm ", "\uff1a": ":",
})


def clean(text: str) -> str:
    """Unicode math characters as LaTeX; bidi, zero-width and control characters removed."""
    if text.isascii():
        return text.replace("\x00", "")
    text = text.translate(_UNICODE)
    return "".join(ch for ch in text if ch in "\n\t"
                   or unicodedata.category(ch) not in ("Cf", "Cc", "Co", "Cs"))


_BRACE_TOK = re.compile(r"\\.|[{}]", re.S)
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _match_brace(s: str, i: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``s[i]`` (escaped braces skipped), or -1."""
    depth = 0
    for m in _BRACE_TOK.finditer(s, i):
        if m.group() == "{":
            depth += 1
        elif m.group() == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def _balanced(s: str) -> bool:
    depth = 0
    for m in _BRACE_TOK.finditer(s):
        depth += {"{": 1, "}": -1}.get(m.group(), 0)
        if depth < 0:
            return False
    return depth == 0


def last_box(text: str) -> tuple[bool, str | None]:
    r"""(has a box, content of the last ``\boxed{}``/``\fbox{}``; None when it is never closed)."""
    pos = len(text)
    while True:
        i = max(text.rfind("\\boxed", 0, pos), text.rfind("\\fbox", 0, pos))
        if i < 0:
            return False, None
        m = _BOX_CMD.match(text, i)
        if m:
            j = m.end()
            while j < len(text) and text[j] in " \t":
                j += 1
            if j < len(text) and text[j] == "{":
                k = _match_brace(text, j)
                return True, (text[j + 1:k] if k >= 0 else None)
            bare = re.match(r"[^\s$]+", text[j:j + 200]) if j > m.end() else None  # "\boxed 5"
            return True, (bare.group() if bare else None)
        pos = i


# --------------------------------------------------------------------------------------------
# Extraction (pure Python; what samples.jsonl records and what grade() compares)
# --------------------------------------------------------------------------------------------

_MARKER = re.compile(r"final answer is|the answer is|answer\s*:", re.I)
_INLINE_MATH = re.compile(r"\$\$(.+?)\$\$|\$([^$\n]+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)
_LAST_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _marker_tail(text: str) -> str | None:
    """The answer after the last "final answer is" / "the answer is" / "Answer:", or None."""
    last = None
    for last in _MARKER.finditer(text[-UNBOXED_TAIL_CHARS:]):
        pass
    if last is None:
        return None
    tail = text[-UNBOXED_TAIL_CHARS:][last.end():last.end() + 2000].lstrip(" \t:*")
    tail = tail.lstrip().split("\n", 1)[0]
    tail = re.split(r"(?<!\d)\.\s|\.\s+(?=[A-Z])|\. I hope", tail, maxsplit=1)[0]
    tail = tail.strip().strip("*").strip().rstrip(".").strip()
    if tail.startswith("$") and tail.endswith("$") and len(tail) > 1:
        tail = tail.strip("$").strip()
    return tail or None


def _answer_text(text: str) -> tuple[bool, str | None]:
    """(found an answer place, the answer): the last box, unless a "final answer is" follows it;
    else the text after the last answer marker; (False, None) when neither is there."""
    has_box, content = last_box(text)
    if has_box:
        end = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
        if re.search(r"final answer is", text[end:], re.I):
            tail = _marker_tail(text)
            if tail:
                return True, tail
        return True, content
    tail = _marker_tail(text)
    return (True, tail) if tail else (False, None)


def extract(completion: str) -> str | None:
    r"""The answer ``grade`` compares: the last box; else the text after the last final-answer
    marker; else the last inline math; else the last number (bounded, pure Python)."""
    if not isinstance(completion, str) or not completion:
        return None
    text = clean(completion)
    found, answer = _answer_text(text)
    if found:
        return answer.strip() or None if answer is not None else None
    window = text[-UNBOXED_TAIL_CHARS:]
    last = None
    for last in _INLINE_MATH.finditer(window):
        pass
    if last is not None:
        return next(g for g in last.groups() if g is not None).strip() or None
    for last in _LAST_NUMBER.finditer(window):
        pass
    return last.group() if last is not None else None


# --------------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------------

_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}")
_CHOICE_START = re.compile(r"\(?([A-E])\)?(?![A-Za-z0-9])")
_CHOICE_ANSWER = re.compile(
    r"(?i:answer)(?:\s+(?i:is))?\s*[:]?\s*(?:\*\*)?\s*\$?\s*"
    r"(?:\\(?:text|mathrm|textbf|mathbf)\s*\{\s*)?\(?([A-E])\)?(?![A-Za-z0-9])")
_CHOICE_PAREN = re.compile(r"\(([A-E])\)")


def _unwrap(s: str) -> str:
    for _ in range(4):
        s2 = _TEXT_WRAP.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    return s


def gold_letter(gold: str) -> str | None:
    """The letter of a multiple-choice gold (``C``, ``(C)``, ``\\text{(C)}``), else None."""
    s = re.sub(r"[\s$]|\\[,;:! ]", "", _unwrap(gold))
    m = re.fullmatch(r"\(?([A-E])\)?", s)
    return m.group(1) if m else None


def chosen_letter(completion: str) -> str | None:
    r"""The letter a completion chose: at the start of the last box (``\boxed{\mathrm{(D)}\ 1,008}``),
    or a later ``Answer: D`` / "the answer is (D)"; with no box, the last ``(C)`` near the end."""
    best: tuple[int, str] | None = None
    has_box, content = last_box(completion)
    if has_box and content:
        m = _CHOICE_START.match(re.sub(r"[\s$~]|\\[,;:! ]", "", _unwrap(content)))
        if m:
            best = (max(completion.rfind("\\boxed"), completion.rfind("\\fbox")), m.group(1))
    last = None
    for last in _CHOICE_ANSWER.finditer(completion[-UNBOXED_TAIL_CHARS:]):
        pass
    if last is not None:
        pos = len(completion) - len(completion[-UNBOXED_TAIL_CHARS:]) + last.start()
        if best is None or pos > best[0]:
            best = (pos, last.group(1))
    if best is not None or has_box:
        return best[1] if best is not None else None
    for last in _CHOICE_PAREN.finditer(completion, max(0, len(completion) - 300)):
        pass
    if last is not None:
        return last.group(1)
    m = re.fullmatch(r"\(?([A-E])\)?\.?", re.sub(r"[\s$*]|\\[,;:! ]", "", _unwrap(completion[-200:])))
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------
# Answer preparation (policy rewrites before Math-Verify) and the pure-Python numbers
# --------------------------------------------------------------------------------------------

_MIXED = re.compile(r"([-+]?)(\d+)\s*(?:\s(\d+)\s*/\s*(\d+)|\\[dt]?frac\s*\{(\d+)\}\s*\{(\d+)\})")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|~")
_PERCENT = re.compile(r"\\?%|\\text\{\s*\\?%\s*\}|\s*percent\b")


def _rewrite(s: str) -> str:
    s = re.sub(r"\\sqrt\s*\(([^()]{1,200})\)", r"\\sqrt{\1}", s)
    return re.sub(r"\\(?:mathrm|text|operatorname)\s*\{\s*e\s*\}", "e", s)


def prepare(answer: str) -> tuple[str, bool]:
    r"""(answer with the policy's rewrites, had a percent sign). Mixed numbers ``1 1/4``,
    ``1\frac{1}{4}`` (an integer then a proper fraction, as the whole answer) become
    ``\frac{5}{4}``; ``\sqrt(2)`` is ``\sqrt{2}``; ``\mathrm{e}`` is ``e``; ``%`` is dropped."""
    s = answer.strip()
    s = re.sub(r"(?<!\\)\$", "", s).strip()
    s = re.sub(r"\\[()\[\]]", " ", s).strip() if s.startswith(("\\(", "\\[")) else s
    s = _rewrite(s)
    pct = bool(_PERCENT.search(s))
    if pct:
        s = _PERCENT.sub("", s).strip()
    m = re.fullmatch(r"(\(+)([^()]{1,300})(\)+)", s)
    if m and len(m.group(1)) == len(m.group(3)) and simple_number(m.group(2)) is not None:
        s = m.group(2).strip()  # ((1)) is 1
    m = _MIXED.fullmatch(s.rstrip(".").strip())
    if m:
        whole = int(m.group(2))
        num, den = (int(m.group(3)), int(m.group(4))) if m.group(3) else (int(m.group(5)), int(m.group(6)))
        if 0 < num < den:
            s = f"{m.group(1)}\\frac{{{whole * den + num}}}{{{den}}}"
    return s, pct


_SIMPLE = re.compile(
    r"(?P<sign>[-+]?)(?:\\[dt]?frac\{(?P<fn>\d{1,300})\}\{(?P<fd>\d{1,300})\}|(?P<n>\d{1,300})\s*/\s*(?P<d>\d{1,300})"
    r"|(?P<int>\d{1,3}(?:,\d{3})+|\d{1,600})(?P<dec>\.\d{0,300})?|(?P<dec2>\.\d{1,300}))")


def simple_number(answer: str) -> Fraction | None:
    """The value of a plain number (``-12``, ``1,008,016``, ``0.5``, ``3/4``, ``\\frac{3}{4}``)."""
    s = _SPACING.sub("", answer).replace("{,}", ",").replace("\\$", "").strip().rstrip(".")
    if re.search(r",\s", s):
        return None  # "32, 349" is a list, not a thousands separator
    s = s.replace(" ", "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    m = _SIMPLE.fullmatch(s)
    if not m:
        return None
    sign = -1 if m.group("sign") == "-" else 1
    if m.group("fn") is not None or m.group("n") is not None:
        num = int(m.group("fn") or m.group("n"))
        den = int(m.group("fd") or m.group("d"))
        return None if den == 0 else sign * Fraction(num, den)
    text = (m.group("int") or "0").replace(",", "") + (m.group("dec") or m.group("dec2") or "")
    return sign * Fraction(text.rstrip(".") or "0")


_INT_LITERAL = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)")


def is_integer_literal(answer: str) -> bool:
    """Whether an answer is written as an integer (``-256``, ``1,008,016``; not ``27.0``)."""
    return bool(_INT_LITERAL.fullmatch(_SPACING.sub("", answer).replace(" ", "")))


def numbers_equal(pred: Fraction, gold: Fraction, pred_pct: bool, gold_pct: bool,
                  exact: bool = False) -> bool:
    """The numeric policy: a gold written as an integer is matched exactly (``exact``), any
    other gold within relative 1e-4; a percent sign on either side also accepts the value over
    100 (gold ``50\\%`` accepts ``0.5``; answer ``50\\%`` accepts gold ``0.5``)."""
    candidates = [(pred, gold)]
    if gold_pct:
        candidates.append((pred, gold / 100))
    if pred_pct:
        candidates.append((pred / 100, gold))
    for i, (p, g) in enumerate(candidates):
        if p == g or (not (exact and i == 0) and abs(p - g) <= REL_TOL * max(abs(p), abs(g))):
            return True
    return False


# Integer powers: value = root ** exp with root not a perfect power (never expanded) -----------

_POWER = re.compile(r"(\d{1,50})\s*\^\s*(?:\{(.*)\}|(\d))")


def _iroot(n: int, k: int) -> int:
    x = 1 << (n.bit_length() // k + 1)
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def _perfect_power(n: int) -> tuple[int, int]:
    """``(root, k)`` with ``root ** k == n`` and root not a perfect power (n <= 2,000 digits)."""
    bits = n.bit_length()
    if n < 4:
        return n, 1
    log2n = math.log2(n)
    for k in range(bits, 1, -1):
        r = _iroot(n, k) if bits / k > 50 else round(2 ** (log2n / k))
        for c in (r - 1, r, r + 1):
            if c > 1 and c ** k == n:
                root, e = _perfect_power(c)
                return root, e * k
    return n, 1


def _power(s: str, depth: int = 0) -> tuple[int, int] | None:
    """``(root, exp)`` of an integer power tower like ``2^{2^{16}}`` or ``65536``; ``(0, -1)`` when
    its value is too large to represent; None when ``s`` is not such a tower."""
    s = s.replace(" ", "")
    if depth > 8:
        return None
    if re.fullmatch(r"\d{1,2000}", s):
        n = int(s)
        return (n, 1) if n < 2 else _perfect_power(n)
    m = _POWER.fullmatch(s)
    if not m:
        return None
    base = _power(m.group(1), depth + 1)
    exp = _power(m.group(2) if m.group(2) is not None else m.group(3), depth + 1)
    if base is None or exp is None:
        return None
    if base[1] < 0 or exp[1] < 0:
        return (0, -1)
    if exp[1] * math.log2(max(exp[0], 2)) > 64:
        return (0, -1)  # an exponent beyond 2^64: never built
    e = exp[0] ** exp[1]
    return (base[0], 1) if base[0] < 2 else (base[0], base[1] * e)


def powers_equal(pred: str, gold: str) -> bool | None:
    """Exact verdict when both answers are integer powers/towers, else None."""
    p, g = _power(pred), _power(gold)
    if p is None or g is None:
        return None
    if p[1] < 0 or g[1] < 0:
        return pred.replace(" ", "") == gold.replace(" ", "")
    return p == g


_DIGITS = re.compile(r"\d{2001}")
_EXPONENT = re.compile(r"\^\s*(?:\{([^{}]*)\}|(\d+))")
_FACTORIAL = re.compile(r"(\d+)\s*!|[)}]\s*!")


def dangerous(answer: str) -> bool:
    """Whether handing ``answer`` to the CAS risks an unbounded computation (power towers, huge
    exponents or factorials, 2,000-digit numbers): such answers are compared as strings only."""
    if _DIGITS.search(answer) or re.search(r"\^\s*(?:\{[^{}]*|\d+\s*)\^", answer):
        return True
    for m in _EXPONENT.finditer(answer):
        value = simple_number(m.group(1) or m.group(2) or "")
        if value is not None and abs(value) > 10_000:
            return True
    for m in _FACTORIAL.finditer(answer):
        if m.group(1) is None or len(m.group(1)) > 4 or int(m.group(1)) > 1000:
            return True
    return False


# --------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------

def _gold_answer(gold: str) -> str:
    gold = clean(gold).strip()
    has_box, content = last_box(gold)
    return content.strip() if has_box and content is not None else gold


def fast(completion: str, gold: str) -> bool | None:
    """The verdict when pure Python can decide it (multiple choice, missing answers, plain numbers,
    integer powers, too-long answers), else None. ``grade`` starts with this."""
    text, gold_s = clean(completion), _gold_answer(gold)
    if not gold_s:
        return False
    letter = gold_letter(gold_s)
    if letter is not None:
        return chosen_letter(text) == letter
    found, pred_s = _answer_text(text)
    if not found:  # Math-Verify reads the unboxed completion; an identical last formula is right
        last = None
        for last in _INLINE_MATH.finditer(text[-UNBOXED_TAIL_CHARS:]):
            pass
        formula = next((g for g in last.groups() if g is not None), None) if last is not None else None
        same = formula is not None and _squash(prepare(formula)[0]) == _squash(prepare(gold_s)[0])
        return True if same else None
    if pred_s is None or not pred_s.strip():
        return False  # the last box is never closed or empty: no answer
    pred_s = pred_s.strip()
    if len(pred_s) > MAX_ANSWER_CHARS or len(gold_s) > MAX_ANSWER_CHARS or not _balanced(pred_s):
        return pred_s == gold_s
    pred_p, pred_pct = prepare(pred_s)
    gold_p, gold_pct = prepare(gold_s)
    p, g = simple_number(pred_p), simple_number(gold_p)
    if p is not None and g is not None:
        return numbers_equal(p, g, pred_pct, gold_pct, is_integer_literal(gold_p))
    verdict = powers_equal(pred_p, gold_p)
    if verdict is not None:
        return verdict
    if dangerous(pred_p) or dangerous(gold_p):
        return _squash(pred_p) == _squash(gold_p)
    return True if _squash(pred_p) == _squash(gold_p) else None


def _squash(s: str) -> str:
    return re.sub(r"\s|\\[,;:! ]", "", s)


def _numeric(pred, gold, pred_pct: bool, gold_pct: bool, exact: bool) -> bool | None:
    """Two closed-form numbers (SymPy) decided by the numeric policy at 40 digits; else None."""
    import sympy

    if not (isinstance(pred, sympy.Expr) and isinstance(gold, sympy.Expr)):
        return None
    if pred.free_symbols or gold.free_symbols or not (pred.is_number and gold.is_number):
        return None
    if pred.is_Integer and gold.is_Integer:
        return numbers_equal(Fraction(int(pred)), Fraction(int(gold)), pred_pct, gold_pct, True)
    values = []
    for v in (pred, gold):
        re_, im_ = sympy.N(v, 40).as_real_imag()
        if not (re_.is_Number and im_.is_Number) or not (re_.is_finite and im_.is_finite):
            return False if v.has(sympy.zoo, sympy.nan) else None
        values.append((Fraction(str(sympy.Float(re_, 40))), Fraction(str(sympy.Float(im_, 40)))))
    (pr, pi), (gr, gi) = values
    if pi == 0 and gi == 0:
        return numbers_equal(pr, gr, pred_pct, gold_pct, exact)
    return abs(complex(pr - gr, pi - gi)) <= float(REL_TOL) * max(abs(complex(pr, pi)), abs(complex(gr, gi)))


def grade(completion: str, gold: str) -> bool:
    """The whole decision (in the worker: may take seconds; the worker bounds time and memory)."""
    verdict = fast(completion, gold)
    if verdict is not None:
        return verdict
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    latex = [LatexExtractionConfig(boxed_match_priority=0)]
    both = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    def read(s: str, configs) -> list:
        return [x for x in parse(s, configs, fallback_mode="no_fallback", parsing_timeout=None)
                if not isinstance(x, str)]

    text = clean(completion)
    gold_p, gold_pct = prepare(_gold_answer(gold))
    gold_v = read("\\boxed{" + gold_p + "}", latex) or read(gold_p, both)
    has_box, _ = last_box(text)
    found, answer = _answer_text(text)
    pred_pct = False
    if found:
        pred_p, pred_pct = prepare(answer or "")
        pred_v = read("\\boxed{" + pred_p + "}", latex)
        if not has_box or not pred_v:
            pred_v = read(pred_p, both) or pred_v
    else:
        pred_v = read(_rewrite(text[-UNBOXED_TAIL_CHARS:]), both)
    if not gold_v or not pred_v:
        return False
    numeric = _numeric(pred_v[0], gold_v[0], pred_pct, gold_pct, is_integer_literal(gold_p))
    if numeric is not None:
        return numeric
    return bool(verify(gold_v, pred_v, timeout_seconds=None))
