"""The score stage's `judge` method: AlpacaEval 2's win rates of one generation.

The generation's `model_outputs.json` and the shipped reference outputs (the same first N
instructions, in order) go to alpaca-eval's own annotator (`asft.eval.judge.annotator`), which asks
the judge only about pairs its cache does not hold. The cache is alpaca-eval's `caching_path`, one file
per judge key under `JudgeRuntime.cache_dir` (default results/judge_cache/<judge key>/annotations.json),
outside the score artifact: deleting or re-running a score asks nothing twice. Jobs that share a judge
take turns on its cache file (a lock beside it).

The win rates are alpaca-eval's: `get_length_controlled_winrate` (AlpacaEval 2's length-controlled win
rate, a GLM fitted on the annotations, regularised towards the package's calibration data `df_gamed.csv`
of the hub dataset tatsu-lab/alpaca_eval, which it downloads or finds in the HF cache; its sha256 is
recorded), with the raw win rate, their standard errors and the counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asft.core.files import sha256_file
from asft.eval.judge.annotator import api_key, pointed_annotator
from asft.eval.judge.outputs import MODEL_OUTPUTS, read_model_outputs
from asft.eval.judge.reference import load_reference
from asft.eval.settings import JudgeRuntime, JudgeSettings

CACHE_FILE = "annotations.json"
CALIBRATION = {"repo_id": "tatsu-lab/alpaca_eval", "filename": "df_gamed.csv", "repo_type": "dataset"}
METRICS = ("length_controlled_winrate", "lc_standard_error", "win_rate", "standard_error", "discrete_win_rate",
           "n_wins", "n_wins_base", "n_draws", "n_total")


def judge_key(settings: JudgeSettings) -> str:
    """The judge's content key: its cache folder's name (the verdicts of one judge, whatever the endpoint)."""
    payload = json.dumps(settings.key_payload(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_path(settings: JudgeSettings, runtime: JudgeRuntime) -> Path:
    return Path(runtime.cache_dir) / judge_key(settings) / CACHE_FILE


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached(path: Path) -> int:
    try:
        return len(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return 0
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"judge cache {path} is damaged ({error}); delete it (its judgements are asked "
                         "again)") from None


def references_for(outputs: list[dict[str, str]], settings: JudgeSettings) -> list[dict[str, str]]:
    """The reference outputs of the outputs' instructions, which must be the evaluation set's first N, in order."""
    references = load_reference(sha256=settings.reference_sha256)
    if len(outputs) > len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} AlpacaEval instructions")
    for index, (row, ref) in enumerate(zip(outputs, references)):
        if row["instruction"] != ref.instruction:
            raise ValueError(f"{MODEL_OUTPUTS}: row {index}'s instruction is not AlpacaEval's instruction {index} "
                             f"({ref.instruction[:60]!r}...)")
    return [ref.as_row() for ref in references[: len(outputs)]]


def calibration_file() -> dict[str, str]:
    """alpaca-eval's length-control calibration file, fetched as the package fetches it (HF cache honoured)."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(**CALIBRATION))
    except Exception as error:  # offline without a cached copy, or the hub unreachable
        raise RuntimeError(
            f"the length-controlled win rate needs alpaca-eval's calibration file {CALIBRATION['filename']} of the "
            f"hub dataset {CALIBRATION['repo_id']} ({type(error).__name__}: {error}). Offline: put it in the HF "
            "cache (HF_HOME) first; docs/alpacaeval.md") from None
    return {"source": f"{CALIBRATION['repo_id']} (hub dataset) {CALIBRATION['filename']}", "sha256": sha256_file(path)}


def win_rates(annotations: list[dict[str, Any]]) -> tuple[dict[str, float], list[float]]:
    """alpaca-eval's metrics of the annotations, and each pair's length-controlled preference."""
    import pandas as pd
    from alpaca_eval.metrics import get_length_controlled_winrate

    frame = pd.DataFrame(annotations)
    metrics = get_length_controlled_winrate(frame, save_weights_dir=None)  # adds glm_preference to the frame
    plain = {name: (float(metrics[name]) if name not in ("n_wins", "n_wins_base", "n_draws", "n_total")
                    else int(metrics[name])) for name in METRICS}
    return plain, [float(p) for p in frame["glm_preference"]]


@contextlib.contextmanager
def _endpoint(settings: JudgeSettings, runtime: JudgeRuntime, log: Path) -> Iterator[str | None]:
    if runtime.serve:
        from asft.eval.judge.serve import local_judge_server

        with local_judge_server(settings.model, tensor_parallel=runtime.serve_tensor_parallel, log=log) as url:
            yield url
    else:
        yield runtime.base_url


def run_judge(settings: JudgeSettings, runtime: JudgeRuntime, *, samples_dir: Path, graded: Any,
              log_dir: Path) -> dict[str, Any]:
    """Judge the generation in `samples_dir`; writes one graded row per instruction to `graded` and returns
    what scores.json holds of it (accuracy = the length-controlled win rate, in %)."""
    outputs = read_model_outputs(samples_dir / MODEL_OUTPUTS)
    references = references_for(outputs, settings)
    calibration = calibration_file()  # before any request: a missing file fails the job before it costs anything
    cache = cache_path(settings, runtime)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with _endpoint(settings, runtime, log_dir / "judge_server.log") as base_url, _locked(cache):
        key = api_key(runtime.api_key_env, base_url)
        before = _cached(cache)
        with pointed_annotator(settings.annotator, settings.model, base_url=base_url, key=key,
                               concurrency=runtime.concurrency, max_retries=runtime.max_retries,
                               timeout_s=runtime.timeout_s, caching_path=cache) as judge:
            annotations = judge.annotate_head2head(outputs_1=references, outputs_2=outputs, is_ordered=True)
        judged_now = _cached(cache) - before
    missing = [i for i, a in enumerate(annotations) if a.get("preference") is None
               or (isinstance(a["preference"], float) and math.isnan(a["preference"]))]
    if missing:
        raise RuntimeError(f"the judge gave no verdict on {len(missing)} of {len(annotations)} instructions (first: "
                           f"{missing[:5]}) after {runtime.max_retries} retries each; the others are cached: run "
                           "the same command again")
    metrics, lc_preferences = win_rates(annotations)
    for index, (row, annotation, lc) in enumerate(zip(outputs, annotations, lc_preferences, strict=True)):
        preference = float(annotation["preference"])  # 1: the reference is better, 2: the model's output
        graded.write(json.dumps({
            "problem": index, "sample": 0, "dataset": row["dataset"], "preference": round(preference, 6),
            "lc_preference": round(lc, 6), "output_length": len(row["output"]),
            "reference_length": len(references[index]["output"]), "correct": preference > 1.5,
        }, ensure_ascii=False) + "\n")
    return {
        "accuracy": metrics["length_controlled_winrate"],
        **metrics,
        "avg_length": int(sum(len(r["output"]) for r in outputs) / len(outputs)),
        "judge": {"annotator": settings.annotator, "model": settings.model, "key": judge_key(settings),
                  "endpoint": "local vLLM server" if runtime.serve else (runtime.base_url or "OpenAI API"),
                  "new_verdicts": judged_now, "cached_verdicts": len(annotations) - judged_now, "cache": str(cache)},
        "lc_calibration": calibration,
        "grading": {"method": "judge", "annotator": settings.annotator, "model": settings.model,
                    "reference": settings.reference, "package": settings.package},
    }
