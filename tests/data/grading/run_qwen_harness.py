#!/usr/bin/env python3
r"""Compute the expected ``qwen_harness`` verdicts by running the REAL harness, once, in a sandbox.

The harness is the math evaluation folder the ASFT paper's numbers were graded with: upstream ASFT's
``eval/math_evaluation/`` (zhuchichi56/ASFT), itself a copy of QwenLM/Qwen2.5-Math ``evaluation/``
(``parser.py``, ``grader.py`` and the bundled ``latex2sympy`` are the same; upstream only adds the
``math_oai`` data name). Nothing of the harness is committed to this repository: point this script at
a checkout of that folder outside the tree (e.g. under /tmp) and at a throwaway virtual environment
holding the harness's dependencies (sympy 1.12, antlr4-python3-runtime 4.11.1, regex, word2number,
pebble, numpy, ...; see PROVENANCE_qwen_harness.md for the exact recipe).

For each case ``{"id", "completion", "gold", ...}`` of the given JSONL files it does what the harness
does for a MATH-style (``math`` / ``math_oai``) sample:

* gold: ``parse_ground_truth`` for ``math``: the gold is the last ``\boxed{}`` of the solution, so
  ``extract_answer("\\boxed{" + gold + "}", "math")`` then ``strip_string``;
* prediction: ``run_execute``: ``extract_answer(completion.rstrip(), "math")`` then ``strip_string``;
* ``math_eval.py``'s choice fix-up: gold in A-E and prediction not -> ``choice_answer_clean(completion)``;
  gold all of A-E (``is_multi_choice``) and prediction not -> keep only its A-E characters;
* ``evaluate.py``: ``math_equal(pred, gold)`` in a ``pebble.ProcessPool`` with ``timeout=3``; a timeout
  counts as False.

The harness evaluates model text (sympy ``parse_expr`` calls ``eval``), so it runs here in a child
process: a fresh temporary working directory and HOME, no network namespace (``unshare -n`` when
available), an address-space limit, a CPU-time limit, and an overall wall-clock limit.

Usage::

    python tests/data/grading/run_qwen_harness.py \
        --harness /tmp/qh/asft --python /tmp/qh/venv/bin/python \
        --harness-id "zhuchichi56/ASFT@<commit> eval/math_evaluation/" \
        tests/data/grading/cases_qwen.jsonl tests/data/grading/cases.jsonl

writes ``tests/data/grading/qwen_harness_verdicts.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Runs inside the sandboxed child, with the harness folder and its latex2sympy on sys.path.
INNER = r'''
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
cases = json.load(open(sys.argv[1]))
from pebble import ProcessPool
from concurrent.futures import TimeoutError
import parser as hp
import grader as hg

def is_multi_choice(answer):          # math_eval.py is_multi_choice
    for c in answer:
        if c not in ["A", "B", "C", "D", "E"]:
            return False
    return True

out = {}
params = []
for c in cases:
    rec = {"pred": None, "gold": None, "error": None}
    try:
        gold = hp.extract_answer("\\boxed{" + c["gold"] + "}", "math")
        gold = hp.strip_string(gold, skip_unit=False)
        rec["gold"] = gold
        code = c["completion"].rstrip()
        pred = hp.extract_answer(code, "math")
        pred = hp.strip_string(pred, skip_unit=False)
        rec["pred"] = pred
        if gold in ["A", "B", "C", "D", "E"] and pred not in ["A", "B", "C", "D", "E"]:
            pred = hp.choice_answer_clean(code)
        elif is_multi_choice(gold) and not is_multi_choice(pred):
            pred = "".join([ch for ch in pred if ch in ["A", "B", "C", "D", "E"]])
        rec["pred_final"] = pred
        params.append((c["id"], pred, gold))
    except Exception as e:  # a step of the harness raised: recorded, verdict False
        rec["error"] = "%s: %s" % (type(e).__name__, str(e)[:200])
    out[c["id"]] = rec

ids = [p[0] for p in params]
with ProcessPool(max_workers=int(sys.argv[3])) as pool:
    future = pool.map(hg.math_equal_process, params, timeout=3)
    it = future.result()
    k = 0
    while True:
        try:
            r = next(it)
            out[ids[k]]["verdict"] = bool(r)
        except StopIteration:
            break
        except TimeoutError:
            out[ids[k]]["verdict"] = False
            out[ids[k]]["timeout"] = True
        except Exception as e:
            out[ids[k]]["verdict"] = False
            out[ids[k]]["error"] = "math_equal raised %s" % type(e).__name__
        k += 1
for rec in out.values():
    rec.setdefault("verdict", False)
json.dump(out, open(sys.argv[2], "w"), indent=1, sort_keys=True)
'''


def load_cases(paths):
    cases, seen = [], {}
    for p in paths:
        for n, line in enumerate(Path(p).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            c = json.loads(line)
            if c["id"] in seen:
                raise SystemExit(f"duplicate id {c['id']!r} in {p}:{n} (also in {seen[c['id']]})")
            seen[c["id"]] = f"{p}:{n}"
            cases.append({"id": c["id"], "completion": c["completion"], "gold": str(c["gold"])})
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--harness", required=True, help="folder holding the harness's parser.py, grader.py, latex2sympy/")
    ap.add_argument("--python", required=True, help="python of the throwaway venv with the harness's deps")
    ap.add_argument("--harness-id", required=True, help='e.g. "zhuchichi56/ASFT@<commit> eval/math_evaluation/"')
    ap.add_argument("--out", default=str(HERE / "qwen_harness_verdicts.json"))
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sandbox-root", default="/var/tmp", help="where the temporary run folder goes (not /tmp)")
    ap.add_argument("--wall", type=int, default=1800, help="overall wall-clock limit, seconds")
    ap.add_argument("cases", nargs="+")
    args = ap.parse_args()

    harness = Path(args.harness).resolve()
    cases = load_cases(args.cases)
    # Outside /tmp: inside the sandbox a private, empty tmpfs is mounted over /tmp, so that what
    # the harness's eval of model text writes there (the hostile cases write /tmp/asft_pwned) is
    # lost with the sandbox.
    with tempfile.TemporaryDirectory(prefix="qwen_harness_run_", dir=args.sandbox_root) as tmp:
        tmpd = Path(tmp)
        # The harness is copied so that nothing (no __pycache__) is written into the checkout.
        shutil.copytree(harness, tmpd / "h", ignore=shutil.ignore_patterns("data", "__pycache__", "*.jar"))
        (tmpd / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
        (tmpd / "inner.py").write_text(INNER, encoding="utf-8")
        work = tmpd / "cwd"
        work.mkdir()
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(work),
            "TMPDIR": str(work),
            "PYTHONPATH": f"{tmpd / 'h'}:{tmpd / 'h' / 'latex2sympy'}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
        }
        cmd = [args.python, "-B", str(tmpd / "inner.py"), str(tmpd / "cases.json"),
               str(tmpd / "out.json"), str(args.workers)]
        unshare = shutil.which("unshare")
        private_tmp = "mount -t tmpfs tmpfs /tmp && exec \"$@\""
        if unshare and subprocess.run([unshare, "-r", "-m", "-n", "sh", "-c", private_tmp, "sh", "true"],
                                      capture_output=True).returncode == 0:
            # user + mount + network namespaces: no network, a private /tmp
            cmd = [unshare, "-r", "-m", "-n", "sh", "-c", private_tmp, "sh"] + cmd
            sandbox = "unshare -r -m -n, private tmpfs /tmp"
        else:
            sandbox = "no namespaces available: temporary cwd/HOME and rlimits only"
        proc = subprocess.run(cmd, cwd=work, env=env, timeout=args.wall, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"harness run failed with exit status {proc.returncode}")
        res = json.loads((tmpd / "out.json").read_text(encoding="utf-8"))
        left = sorted(p.name for p in work.iterdir())

    doc = {
        "harness": args.harness_id,
        "generated": datetime.date.today().isoformat(),
        "how": "tests/data/grading/run_qwen_harness.py; see PROVENANCE_qwen_harness.md",
        "cases_files": [os.path.relpath(Path(p).resolve(), HERE.parents[2]) for p in args.cases],
        "verdicts": {i: res[i]["verdict"] for i in sorted(res)},
        # the harness's prediction string (extract_answer(completion, "math") then strip_string)
        "extracted": {i: res[i]["pred"] for i in sorted(res)},
        # the gold as the harness compares it (parse_ground_truth for math)
        "gold_parsed": {i: res[i]["gold"] for i in sorted(res)},
        "sandbox": sandbox,
        "timeouts": sorted(i for i in res if res[i].get("timeout")),
        "errors": {i: res[i]["error"] for i in sorted(res) if res[i].get("error")},
    }
    Path(args.out).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n_true = sum(doc["verdicts"].values())
    print(f"{len(doc['verdicts'])} verdicts ({n_true} true), {len(doc['timeouts'])} timeouts, "
          f"{len(doc['errors'])} errors -> {args.out}")
    if left:
        print(f"files the harness left in its working directory (deleted): {left}")
    print("sandbox:", sandbox)


if __name__ == "__main__":
    main()
