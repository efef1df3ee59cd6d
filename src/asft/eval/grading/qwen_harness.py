r"""``qwen_harness``: the decisions of the harness that graded the ASFT paper's published numbers.

That harness is upstream ASFT's ``eval/math_evaluation/`` (zhuchichi56/ASFT), a copy of
QwenLM/Qwen2.5-Math ``evaluation/``: ``parser.py`` (``extract_answer``, ``strip_string``),
``grader.py`` (``math_equal``, ``symbolic_equal``), ``math_eval.py`` (the choice fix-up) and
``evaluate.py`` (3 s per comparison). Each function below names the one it mirrors. The string
steps are re-written line for line. The symbolic step is NOT run the harness's way (the harness
hands model text to sympy ``parse_expr``, which calls ``eval``): expressions are parsed with
``latex2sympy2_extended`` only, shaped to behave like the ``sympy.parsing.latex.parse_latex``
the harness tries first, and compared with ``==``, ``equals``, ``simplify`` and ``N`` on parsed
values. No model text reaches ``eval``/``exec``/``sympify``/``parse_expr``; parsed values are never
printed or ``str()``-ed. See docs/grading.md ("The qwen_harness policy").

Bounds (the harness has none): completions longer than ``MAX_COMPLETION_CHARS`` are cut to their
last ``MAX_COMPLETION_CHARS`` characters before extraction; answers longer than
``MAX_ANSWER_CHARS`` (10,000) are compared as strings only; the symbolic step is skipped (False)
for answers over ``MAX_SYMBOLIC_CHARS`` or holding a power tower, a numeric exponent over 10,000,
a digit run over 1,000 digits or a factorial of a number over 1,000; in the main thread with no
timer armed, each symbolic comparison gets ``SYMBOLIC_TIMEOUT_S`` (3 s, as ``evaluate.py``).
"""

from __future__ import annotations

import math
import re

VERSION = 1
DESCRIPTION = ("The Qwen2.5-Math harness used by upstream ASFT (math_evaluation/): its extraction, "
               "strip_string and math_equal, symbolic step without evaluating text")

MAX_COMPLETION_CHARS = 200_000
MAX_ANSWER_CHARS = 10_000
MAX_SYMBOLIC_CHARS = 2_000
SYMBOLIC_TIMEOUT_S = 3.0
_CHOICES = ["A", "B", "C", "D", "E"]


# ---------------------------------------------------------------- parser.py: string normalisation

def _fix_fracs(string: str) -> str:
    """parser.py ``_fix_fracs``: ``\\frac12`` -> ``\\frac{1}{2}``."""
    substrs = string.split("\\frac")
    new_str = substrs[0]
    if len(substrs) > 1:
        for substr in substrs[1:]:
            new_str += "\\frac"
            if len(substr) > 0 and substr[0] == "{":
                new_str += substr
            else:
                if len(substr) < 2:
                    return string
                a, b = substr[0], substr[1]
                if b != "{":
                    new_str += "{" + a + "}{" + b + "}" + substr[2:]
                else:
                    new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def _int_str(s: str):
    """``str(int(s))`` as the harness computes it (``int`` accepts spaces, ``_``, a sign)."""
    return str(int(s))


def _fix_a_slash_b(string: str) -> str:
    """parser.py ``_fix_a_slash_b``: ``a/b`` of two integers -> ``\\frac{a}{b}``."""
    parts = string.split("/")
    if len(parts) != 2:
        return string
    a, b = parts
    try:
        if "sqrt" not in a:
            a = _int_str(a)
        if "sqrt" not in b:
            b = _int_str(b)
        if string != "{}/{}".format(a, b):
            return string
        return "\\frac{" + a + "}{" + b + "}"
    except Exception:
        return string


def _fix_sqrt(string: str) -> str:
    """parser.py ``_fix_sqrt``."""
    return re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", string)


_W2N = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "million": 1000000, "billion": 1000000000, "point": ".",
}
_W2N_DECIMALS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _w2n_formation(words):
    """word2number ``number_formation``."""
    n = [_W2N[w] for w in words]
    if len(n) == 4:
        return (n[0] * n[1]) + n[2] + n[3]
    if len(n) == 3:
        return n[0] * n[1] + n[2]
    if len(n) == 2:
        return n[0] * n[1] if 100 in n else n[0] + n[1]
    return n[0]


def _word_to_num(sentence: str):
    """word2number 1.1 ``w2n.word_to_num`` (raises on no number word, as it does)."""
    sentence = sentence.replace("-", " ").lower()
    if sentence.isdigit():
        return int(sentence)
    clean = [w for w in sentence.strip().split() if w in _W2N]
    if not clean:
        raise ValueError("no number word")
    if any(clean.count(w) > 1 for w in ("thousand", "million", "billion", "point")):
        raise ValueError("redundant")
    decimals = []
    if clean.count("point") == 1:
        decimals = clean[clean.index("point") + 1:]
        clean = clean[:clean.index("point")]
    bi = clean.index("billion") if "billion" in clean else -1
    mi = clean.index("million") if "million" in clean else -1
    ti = clean.index("thousand") if "thousand" in clean else -1
    if (ti > -1 and (ti < mi or ti < bi)) or (mi > -1 and mi < bi):
        raise ValueError("malformed")
    total = 0
    if len(clean) > 0:
        if len(clean) == 1:
            total += _W2N[clean[0]]
        else:
            if bi > -1:
                total += _w2n_formation(clean[0:bi]) * 1000000000
            if mi > -1:
                total += _w2n_formation(clean[bi + 1:mi] if bi > -1 else clean[0:mi]) * 1000000
            if ti > -1:
                if mi > -1:
                    tm = _w2n_formation(clean[mi + 1:ti])
                elif bi > -1 and mi == -1:
                    tm = _w2n_formation(clean[bi + 1:ti])
                else:
                    tm = _w2n_formation(clean[0:ti])
                total += tm * 1000
            if ti > -1 and ti != len(clean) - 1:
                hundreds = _w2n_formation(clean[ti + 1:])
            elif mi > -1 and mi != len(clean) - 1:
                hundreds = _w2n_formation(clean[mi + 1:])
            elif bi > -1 and bi != len(clean) - 1:
                hundreds = _w2n_formation(clean[bi + 1:])
            elif ti == -1 and mi == -1 and bi == -1:
                hundreds = _w2n_formation(clean)
            else:
                hundreds = 0
            total += hundreds
    if len(decimals) > 0:
        if all(d in _W2N_DECIMALS for d in decimals):
            total += float("0." + "".join(str(_W2N[d]) for d in decimals))
    return total


def _convert_word_number(text: str) -> str:
    """parser.py ``convert_word_number``."""
    try:
        return str(_word_to_num(text))
    except Exception:
        return text


# parser.py ``unit_texts`` (units mainly from MathQA), in its order, then each with "s" appended.
_UNIT_TEXTS = [
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile", "q .",
    "monkey", "prime", "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb", "tile", "per", "dm",
    "lt", "gain", "ab", "way", "west", "a .", "b .", "c .", "d .", "e .", "f .", "g .", "h .", "t",
    "a", "h", "no change", "men", "soldier", "pie", "bc", "excess", "st", "inches", "noon",
    "percent", "by", "gal", "kmh", "c", "acre", "rise", "a . m", "th", "π r 2", "sq", "mark", "l",
    "toy", "coin", "sq . m", "gallon", "° f", "profit", "minw", "yr", "women", "feet", "am", "pm",
    "hr", "cu cm", "square", "v â € ™", "are", "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm",
    "number", "kmph", "day", "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt",
    "sq inch", "mp", "∏ cm ³", "hectare", "more", "sec", "unit", "cu . m", "cm 2", "rs .", "rs",
    "kg", "g", "month", "km", "m", "cm", "mm", "apple", "liter", "loss", "yard", "pure", "year",
    "increase", "decrease", "d", "less", "Surface", "litre", "pi sq m", "s .", "metre", "meter",
    "inch",
]
_UNIT_TEXTS = _UNIT_TEXTS + [t + "s" for t in _UNIT_TEXTS]
# The harness builds r"(^|\W)" + unit + r"($|\W)" without escaping: "q ." etc. keep "." as any char.
_UNIT_RES = [re.compile(r"(^|\W)" + u + r"($|\W)") for u in _UNIT_TEXTS]
# Any of them: a string none matches is left as it is by the loop, so the loop is skipped (same
# result, and most answers are numbers: 2,000 regex passes saved per call).
_ANY_UNIT = re.compile(r"(^|\W)(?:" + "|".join(_UNIT_TEXTS) + r")($|\W)")


def strip_string(string: str, skip_unit: bool = False) -> str:
    """parser.py ``strip_string``, step for step (including its quirks: ``\\pm`` loses ``pm`` as a
    unit word, ``and`` is deleted everywhere, ``\\sec`` loses ``sec``, a ``j`` without ``i`` becomes
    ``i``)."""
    string = str(string).strip()
    string = string.replace("\n", "")
    string = string.rstrip(".")
    string = string.replace("\\!", "")
    string = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", string)
    string = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", string)
    string = string.replace("bmatrix", "pmatrix")
    string = string.replace("tfrac", "frac")
    string = string.replace("dfrac", "frac")
    string = string.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    string = string.replace("\\left", "")
    string = string.replace("\\right", "")
    string = string.replace("\\{", "{")
    string = string.replace("\\}", "}")
    _string = re.sub(r"\\text{.*?}$", "", string).strip()
    if _string != "" and _string != string:
        string = _string
    if not skip_unit and _ANY_UNIT.search(string):
        for _ in range(2):
            for unit_re in _UNIT_RES:
                _string = unit_re.sub(r"\1\2", string)
                if _string != "":
                    string = _string
    string = string.replace("^{\\circ}", "")
    string = string.replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = string.replace("$", "")
    string = string.replace("\\(", "").replace("\\)", "")
    string = _convert_word_number(string)
    string = re.sub(r"\\text\{(.*?)\}", r"\1", string)
    for key in ["x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"]:
        string = string.replace(key, "")
    string = string.replace("\\emptyset", r"{}")
    string = string.replace("(-\\infty,\\infty)", "\\mathbb{R}")
    string = string.replace("\\%", "")
    string = string.replace("%", "")
    string = string.replace(" .", " 0.")
    string = string.replace("{.", "{0.")
    if (
        string.startswith("{") and string.endswith("}") and string.isalnum()
        or string.startswith("(") and string.endswith(")") and string.isalnum()
        or string.startswith("[") and string.endswith("]") and string.isalnum()
    ):
        string = string[1:-1]
    string = string.replace("infinity", "\\infty")
    if "\\infty" not in string:
        string = string.replace("inf", "\\infty")
    string = string.replace("+\\inity", "\\infty")
    string = string.replace("and", "")
    string = string.replace("\\mathbf", "")
    string = re.sub(r"\\mbox{.*?}", "", string)
    if "j" in string and "i" not in string:
        string = string.replace("j", "i")
    # same result as the harness's r"(\d+)\.0*([^\d])" and r"(\d+)\.0*$"; the look-behind only
    # skips start positions inside a digit run (which cannot match), so that long digit runs are
    # linear, not quadratic
    string = re.sub(r"(?<!\d)(\d+)\.0*([^\d])", r"\1\2", string)
    string = re.sub(r"(?<!\d)(\d+)\.0*$", r"\1", string)
    if len(string) == 0:
        return string
    if string[0] == ".":
        string = "0" + string
    if len(string.split("=")) == 2:
        if len(string.split("=")[0]) <= 2:
            string = string.split("=")[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    string = _fix_a_slash_b(string)
    return string


# ---------------------------------------------------------------- parser.py: answer extraction

def _choice_answer_clean(pred: str) -> str:
    """grader.py ``choice_answer_clean`` (the one ``math_equal`` and ``math_eval.py`` use)."""
    pred = pred.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    tmp = re.findall(r"\b(A|B|C|D|E)\b", pred.upper())
    pred = tmp[-1] if tmp else pred.strip().strip(".")
    return pred.rstrip(".").rstrip("/")


def extract_answer(pred_str: str, data_name: str = "math") -> str:
    """parser.py ``extract_answer`` for the MATH-style data names (``use_last_number=True``)."""
    pred_str = pred_str.replace("\u043a\u0438", "")
    if "final answer is $" in pred_str and "$. I hope" in pred_str:
        pred = pred_str.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in pred_str:
        ans = pred_str.split("boxed")[-1]
        if len(ans) == 0:
            return ""
        if ans[0] == "{":
            stack, a = 1, []
            for c in ans[1:]:
                if c == "{":
                    stack += 1
                elif c == "}":
                    stack -= 1
                    if stack == 0:
                        break
                a.append(c)
            pred = "".join(a)
        else:
            pred = ans.split("$")[0].strip()
    elif "he answer is" in pred_str:
        pred = pred_str.split("he answer is")[-1].strip()
    elif "final answer is" in pred_str:
        pred = pred_str.split("final answer is")[-1].strip()
    elif "答案是" in pred_str:
        pred = pred_str.split("答案是")[1].strip().split("\n\n")[0].strip()
    else:
        nums = re.findall(r"-?\d*\.?\d+", pred_str.replace(",", ""))
        pred = nums[-1] if nums else ""
    pred = re.sub(r"\n\s*", "", pred)
    if pred != "" and pred[0] == ":":
        pred = pred[1:]
    if pred != "" and pred[-1] == ".":
        pred = pred[:-1]
    if pred != "" and pred[-1] == "/":
        pred = pred[:-1]
    if len(pred) > MAX_ANSWER_CHARS:
        return pred  # bound (not in the harness): not normalised, so compared as a string only
    return strip_string(pred, skip_unit=data_name in ["carp_en", "minerva_math"])


def extract(completion: str) -> str | None:
    """The harness's prediction for a completion: ``run_execute`` = ``extract_answer(completion,
    "math")`` then ``strip_string`` again (``""`` when nothing was found, as the harness)."""
    try:
        text = str(completion).rstrip()[-MAX_COMPLETION_CHARS:]
        return _strip_bounded(extract_answer(text, "math"))
    except Exception:
        return None


def _strip_bounded(answer: str) -> str:
    """``strip_string`` (the second one, of ``run_execute`` / ``parse_ground_truth``), skipped for
    answers over ``MAX_ANSWER_CHARS``."""
    return answer if len(answer) > MAX_ANSWER_CHARS else strip_string(answer, skip_unit=False)


def parse_gold(gold: str) -> str:
    """``parse_ground_truth`` for ``math``/``math_oai``: the gold is the last ``\\boxed{}`` of the
    solution, so ``extract_answer`` of the boxed gold, then ``strip_string``."""
    return _strip_bounded(extract_answer("\\boxed{" + str(gold)[:MAX_COMPLETION_CHARS] + "}", "math"))


# ---------------------------------------------------------------- grader.py: math_equal

def _parse_digits(num):
    """grader.py ``parse_digits`` (Python ``float``: accepts ``1_0``, ``inf``, ``nan``, spaces)."""
    num = str(num).replace(",", "")
    try:
        return float(num)
    except Exception:
        if num.endswith("%"):
            num = num[:-1]
            if num.endswith("\\"):
                num = num[:-1]
            try:
                return float(num) / 100
            except Exception:
                pass
    return None


def _is_digit(num) -> bool:
    return _parse_digits(num) is not None


def _numeric_equal(prediction: float, reference: float) -> bool:
    """grader.py ``numeric_equal``."""
    return math.isclose(reference, prediction, rel_tol=1e-4)


def _str_to_pmatrix(input_str: str) -> str:
    """grader.py ``str_to_pmatrix``."""
    input_str = input_str.strip()
    out = []
    for m in re.findall(r"\{.*,.*\}", input_str):
        m = m.strip("{}")
        out.append(r"\begin{pmatrix}" + m.replace(",", "\\") + r"\end{pmatrix}")
    return ", ".join(out)


_BRACKETED = re.compile(r"(\(|\[).+(\)|\])", re.S)


def math_equal(prediction, reference, include_percentage: bool = True, is_close: bool = True,
               _depth: int = 0) -> bool:
    """grader.py ``math_equal`` (``timeout=False``, as ``evaluate.py`` calls it)."""
    if prediction is None or reference is None:
        return False
    if str(prediction.strip().lower()) == str(reference.strip().lower()):
        return True
    if reference in _CHOICES and _choice_answer_clean(prediction) == reference:
        return True
    if len(prediction) > MAX_ANSWER_CHARS or len(reference) > MAX_ANSWER_CHARS or _depth > 20:
        return False  # bound (not in the harness): long answers are compared as strings only
    try:
        if _is_digit(prediction) and _is_digit(reference):
            p = _parse_digits(prediction)
            r = _parse_digits(reference)
            gt_result = [r / 100, r, r * 100] if include_percentage else [r]
            for item in gt_result:
                try:
                    if is_close:
                        if _numeric_equal(p, item):
                            return True
                    elif item == p:
                        return True
                except Exception:
                    continue
            return False
    except Exception:
        pass
    if not prediction and prediction not in [0, False]:
        return False
    reference = str(reference).strip()
    prediction = str(prediction).strip()
    if "pmatrix" in prediction and "pmatrix" not in reference:
        reference = _str_to_pmatrix(reference)
    pred_str, ref_str = prediction, reference
    if (
        prediction.startswith("[") and prediction.endswith("]") and not reference.startswith("(")
    ) or (
        prediction.startswith("(") and prediction.endswith(")") and not reference.startswith("[")
    ):
        pred_str = pred_str.strip("[]()")
        ref_str = ref_str.strip("[]()")
    for s in ["{", "}", "(", ")"]:
        ref_str = ref_str.replace(s, "")
        pred_str = pred_str.replace(s, "")
    if pred_str.lower() == ref_str.lower():
        return True
    if _BRACKETED.match(prediction) is not None and _BRACKETED.match(reference) is not None:
        pred_parts = prediction[1:-1].split(",")
        ref_parts = reference[1:-1].split(",")
        if len(pred_parts) == len(ref_parts):
            if all(math_equal(pred_parts[i], ref_parts[i], include_percentage, is_close, _depth + 1)
                   for i in range(len(pred_parts))):
                return True
    begins = ("\\begin{pmatrix}", "\\begin{bmatrix}")
    ends = ("\\end{pmatrix}", "\\end{bmatrix}")
    if (prediction.startswith(begins) and prediction.endswith(ends)
            and reference.startswith(begins) and reference.endswith(ends)):
        cut = slice(len("\\begin{pmatrix}"), -len("\\end{pmatrix}"))
        pred_lines = [ln.strip() for ln in prediction[cut].split("\\\\") if ln.strip()]
        ref_lines = [ln.strip() for ln in reference[cut].split("\\\\") if ln.strip()]
        matched = True
        if len(pred_lines) == len(ref_lines):
            for pred_line, ref_line in zip(pred_lines, ref_lines):
                pp, rp = pred_line.split("&"), ref_line.split("&")
                if len(pp) == len(rp):
                    if not all(math_equal(pp[i], rp[i], include_percentage, is_close, _depth + 1)
                               for i in range(len(pp))):
                        matched = False
                        break
                else:
                    matched = False
                if not matched:
                    break
        else:
            matched = False
        if matched:
            return True
    if prediction.count("=") == 1 and reference.count("=") == 1:
        p = prediction.split("=")
        p = f"{p[0].strip()} - ({p[1].strip()})"
        r = reference.split("=")
        r = f"{r[0].strip()} - ({r[1].strip()})"
        if symbolic_equal(p, r) or symbolic_equal(f"-({p})", r):
            return True
    elif prediction.count("=") == 1 and len(prediction.split("=")[0].strip()) <= 2 and "=" not in reference:
        if math_equal(prediction.split("=")[1], reference, include_percentage, is_close, _depth + 1):
            return True
    elif reference.count("=") == 1 and len(reference.split("=")[0].strip()) <= 2 and "=" not in prediction:
        if math_equal(prediction, reference.split("=")[1], include_percentage, is_close, _depth + 1):
            return True
    return symbolic_equal(prediction, reference)


# ---------------------------------------------------------------- grader.py: symbolic_equal, safely

_MAX_POWER_DIGITS = 2_000_000  # a power is built only if its value has at most ~this many digits


def _group_end(s: str, i: int) -> int:
    """Index of the bracket closing the one at ``s[i]`` (or ``len(s)``)."""
    op = s[i]
    cl = {"{": "}", "(": ")", "[": "]"}[op]
    depth = 0
    for j in range(i, len(s)):
        depth += s[j] == op
        depth -= s[j] == cl
        if depth == 0:
            return j
    return len(s)


def _small_exponent(body: str):
    """The value of an exponent made of digits only (``16``) or of one small digit power
    (``2^{16}``, ``2^16``), when it is at most 10**7; None otherwise."""
    body = body.strip()
    if re.fullmatch(r"-?\d{1,8}", body):
        v = abs(int(body))
        return v if v <= 10**7 else None
    m = re.fullmatch(r"(\d{1,3})\^\{?(\d{1,2})\}?", body)
    if m and int(m.group(2)) <= 24:
        v = int(m.group(1)) ** int(m.group(2))
        return v if v <= 10**7 else None
    return None


def _too_big(s: str) -> bool:
    """True for text whose value could be huge or slow to build: refused before any parsing (the
    harness would try to build it). Never built here: an integer of more than about 2 million
    digits, a power tower of more than two levels, a factorial over 1000 or of a bracket."""
    if len(s) > MAX_SYMBOLIC_CHARS:
        return True
    if re.search(r"\d{1001}", s):
        return True
    for m in re.finditer(r"\^", s):
        j = m.end()
        while j < len(s) and s[j] == " ":
            j += 1
        if j >= len(s):
            continue
        if s[j] in "{(":
            end = _group_end(s, j)
            body = s[j + 1:end]
        else:
            body = re.match(r"-?\d+|\\?[A-Za-z]+|.", s[j:]).group(0)
            end = j + len(body) - 1
        if s[end + 1:].lstrip().startswith("^"):
            return True  # a^b^c
        if "!" in body or "**" in body:
            return True
        if not re.search(r"\d", body):
            continue  # a symbolic exponent
        before = s[:m.start()].rstrip()
        e = _small_exponent(body)
        if e is None:
            if "^" in body or re.search(r"\d{6}", body):
                return True
            nums = [int(x) for x in re.findall(r"\d+", body)]
            e = sum(nums) * max(1, len(nums))  # a rough bound for a small expression
        base = re.search(r"(\d+)\s*$", before)
        if base is None and e > 1000:
            return True  # (x+1)^{99999}, (2^{10})^{5000}: slow to expand or huge
        if (len(base.group(1)) if base else 3) * e > _MAX_POWER_DIGITS:
            return True
    for m in re.finditer(r"(\d+)\s*!", s):
        if len(m.group(1)) > 4 or int(m.group(1)) > 1000:
            return True
    if re.search(r"[)}\]]\s*!", s):
        return True  # a factorial of a bracketed expression: its size is unknown
    return False


def _top_level_prefix(s: str) -> str:
    """The part of ``s`` that sympy's ``parse_latex`` reads: it stops, without an error, at a comma
    outside any bracket (``7,5,3`` reads as 7; ``10,080`` as 10080), at a closing bracket that
    closes nothing (``\\frac{\\pi}{2})+`` reads as pi/2) and at ``\\sqrt(`` (``4\\sqrt(2)`` as 4)."""
    depth = 0
    for i, ch in enumerate(s):
        if depth == 0 and s.startswith("\\sqrt(", i):
            return s[:i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                return s[:i]
            depth -= 1
        elif ch == "," and depth == 0:
            # parse_latex reads "10,080" as one number: a comma between digit groups is kept
            if not (i > 0 and s[i - 1].isdigit() and re.match(r"\d{3}(?!\d)", s[i + 1:])):
                return s[:i]
    return s


def _as_symbols(expr):
    """``parse_latex`` reads ``\\pi``, ``e`` and ``i`` as plain symbols: do the same."""
    import sympy

    subs = {}
    atoms = expr.atoms(sympy.NumberSymbol, sympy.core.numbers.ImaginaryUnit, sympy.core.numbers.Exp1)
    for a in atoms:
        if a == sympy.pi:
            subs[a] = sympy.Symbol("pi")
        elif a == sympy.E:
            subs[a] = sympy.Symbol("e")
        elif a == sympy.I:
            subs[a] = sympy.Symbol("i")
    if subs:
        expr = expr.xreplace(subs)
    if expr.has(sympy.exp):  # latex2sympy2_extended reads e^{x} as exp(x)
        e = sympy.Symbol("e")
        expr = expr.replace(sympy.exp, lambda arg: sympy.Pow(e, arg))
    return expr


def _evaluated(expr):
    """latex2sympy2_extended builds some sums and products unevaluated, so that ``a == b`` depends
    on the order of terms; the harness compares ``str(a) == str(b)``, which does not. Rebuild with
    evaluation (sizes are bounded by :func:`_too_big` beforehand)."""
    import sympy

    if isinstance(expr, sympy.MatrixBase):
        return expr.applyfunc(_evaluated)
    if isinstance(expr, sympy.Basic) and expr.args and not isinstance(expr, sympy.UnevaluatedExpr):
        try:
            return expr.func(*[_evaluated(a) for a in expr.args])
        except Exception:
            return expr
    return expr


# parse_latex reads "4\frac{2}{3}" as 4 * 2/3; latex2sympy2_extended as the mixed number 4 + 2/3
# whatever its configuration says: make the product explicit.
_MIXED = re.compile(r"(\d)(\s*)(\\[dt]?frac)")


_NUM = r"\s*[-+]?\s*(?:\d+\.?\d*|\.\d+)\s*"
_NUM_LIST = re.compile(_NUM + r"(?:," + _NUM + r")*,?")


def _number_literal(t: str):
    """What sympy ``parse_expr`` gives for a Python literal made of numbers only, computed without
    evaluating anything: ``{1,2}`` -> a set, ``(1,2)`` / ``1,2`` -> a tuple, ``3`` -> a number
    (exact ``Fraction`` values; equality between two literals is all the harness does with them).
    None for any other text."""
    from fractions import Fraction

    t = t.strip()
    kind = tuple
    if t[:1] == "{" and t[-1:] == "}":
        kind, t = frozenset, t[1:-1]
    elif t[:1] == "(" and t[-1:] == ")":
        t = t[1:-1]
        if "," not in t:
            kind = None
    if not t.strip() or not _NUM_LIST.fullmatch(t) or len(t) > 500:
        return None
    vals = [Fraction(x.replace(" ", "")) for x in t.split(",") if x.strip()]
    if kind is None or ("," not in t and kind is tuple):
        return _Literal(vals[0]) if len(vals) == 1 else None
    return _Literal(kind(vals))


class _Literal:
    """A parse_expr literal: compares equal only to an equal literal."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Literal) and type(self.value) is type(other.value) and self.value == other.value

    __hash__ = None


def _parse(s: str):
    """grader.py ``symbolic_equal._parse``, without ``parse_expr``: the first of
    ``parse_latex(s.replace('\\\\\\\\', '\\\\'))``, ``parse_latex(s)``, ``latex2sympy(...)`` that
    succeeds, emulated with latex2sympy2_extended; the string itself when none does."""
    if not s.isascii():
        return s  # neither parse_latex, parse_expr nor the bundled latex2sympy reads "−5" or "π"
    variants = [s.replace("\\\\", "\\"), s]
    for t in variants:  # parse_latex
        if "\\begin" in t:
            continue  # sympy's parse_latex has no matrices
        t = _top_level_prefix(t)
        v = _latex_value(t) if t.strip() else None
        if v is not None:
            return _evaluated(_as_symbols(v))
    for t in variants:  # parse_expr, only for literals of numbers (it evaluates any other text)
        lit = _number_literal(t)
        if lit is not None:
            return lit
    for t in variants:  # the bundled latex2sympy
        v = _latex_value(t)
        if v is not None:
            return _evaluated(v)
    return s


def _latex_value(t: str):
    """latex2sympy2_extended's value of `t` read as the harness's parsers read it (a mixed number is a
    product), or None when it fails or gives what they do not produce (intervals, sets, tuples)."""
    import sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy

    cfg = ConversionConfig(interpret_as_mixed_fractions=False, interpret_simple_eq_as_assignment=False,
                           interpret_contains_as_eq=False, lowercase_symbols=False)
    try:
        v = latex2sympy(_MIXED.sub(r"\1\\cdot \3", t), normalization_config=None, conversion_config=cfg)
    except Exception:
        return None
    if isinstance(v, (sympy.Basic, sympy.MatrixBase)) and not isinstance(v, (sympy.Set, sympy.Tuple)):
        return v
    return None


class _Timeout(BaseException):
    pass


def _with_deadline(fn, seconds: float):
    """Run ``fn`` with a SIGALRM deadline when that is possible without disturbing anyone (main
    thread, no handler installed, no timer armed); otherwise just run it (the package's worker has
    its own timer and kill)."""
    import signal
    import threading

    usable = (threading.current_thread() is threading.main_thread()
              and hasattr(signal, "setitimer")
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        return fn()

    def _raise(signum, frame):  # noqa: ARG001
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, _raise)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return False
    finally:
        signal.signal(signal.SIGALRM, old)


def symbolic_equal(a: str, b: str) -> bool:
    """grader.py ``symbolic_equal`` on values parsed without evaluating text."""
    if _too_big(a) or _too_big(b):
        return False
    try:
        return bool(_with_deadline(lambda: _symbolic_equal(a, b), SYMBOLIC_TIMEOUT_S))
    except _Timeout:
        return False
    except Exception:
        return False


def _symbolic_equal(a_text: str, b_text: str) -> bool:
    import sympy

    a = _parse(a_text)
    b = _parse(b_text)
    if isinstance(a, _Literal) or isinstance(b, _Literal):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        # the harness compares str(a) == str(b); a parsed value never prints as unparsed text here
        return isinstance(a, str) and isinstance(b, str) and a == b
    try:  # direct equal (the harness also compares str(a) == str(b): never done on model values)
        if a == b:
            return True
    except Exception:
        pass
    try:  # simplify equal
        if a.equals(b) or sympy.simplify(a - b) == 0:
            return True
    except Exception:
        pass
    try:  # equation equal
        if (abs(a.lhs - a.rhs)).equals(abs(b.lhs - b.rhs)):
            return True
    except Exception:
        pass
    try:
        if _numeric_equal(float(sympy.N(a)), float(sympy.N(b))):
            return True
    except Exception:
        pass
    try:  # matrix
        if a.shape == b.shape:
            _a = a.applyfunc(lambda x: round(x, 3))
            _b = b.applyfunc(lambda x: round(x, 3))
            if _a.equals(_b):
                return True
    except Exception:
        pass
    return False


# ---------------------------------------------------------------- the whole decision

def _is_multi_choice(answer: str) -> bool:
    """math_eval.py ``is_multi_choice`` (True for the empty string, as there)."""
    return all(c in _CHOICES for c in answer)


def grade(completion: str, gold: str) -> bool:
    """The harness's verdict for one completion of a MATH-style benchmark: ``parse_ground_truth``
    on the gold, ``run_execute`` on the completion, ``math_eval.py``'s choice fix-up, then
    ``math_equal``. Any internal error is False."""
    try:
        return bool(math_equal(*_compared(completion, gold)))
    except Exception:
        return False


def _compared(completion: str, gold: str) -> tuple[str, str]:
    """(prediction, reference) as ``math_equal`` receives them."""
    code = str(completion).rstrip()[-MAX_COMPLETION_CHARS:]
    gt = parse_gold(gold)
    pred = _strip_bounded(extract_answer(code, "math"))
    if gt in _CHOICES and pred not in _CHOICES:
        pred = _choice_answer_clean(code)
    elif _is_multi_choice(gt) and not _is_multi_choice(pred):
        pred = "".join(c for c in pred if c in _CHOICES)
    return pred, gt


def fast(completion: str, gold: str) -> bool | None:
    """The verdict where ``math_equal`` decides before any CAS (equal strings, a choice letter, two
    numbers), else None (the worker runs ``grade``, which takes the same path first). Pure Python: the
    package calls it in the parent process, so most samples need no worker round trip."""
    try:
        pred, gt = _compared(completion, gold)
        if pred is None or gt is None:
            return None
        if pred.strip().lower() == gt.strip().lower() or (gt in _CHOICES and _choice_answer_clean(pred) == gt):
            return True
        if max(len(pred), len(gt)) <= MAX_ANSWER_CHARS and _is_digit(pred) and _is_digit(gt):
            return bool(math_equal(pred, gt))
    except Exception:
        return None
    return None
