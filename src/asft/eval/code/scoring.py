"""Score method `execute`: each code sample run against its task's tests by EvalPlus, in the sandbox.

The program is EvalPlus's `sanitize` of the sample (asft.eval.code.prompts), checked by
`evalplus.evaluate.check_correctness` in a sandbox worker. A sample is correct as EvalPlus counts it:
suite `base` when the original tests pass, suite `plus` when the original and the extra tests pass.
Greedy decoding gives one sample per task, so the score stage's accuracy is pass@1.
"""

from __future__ import annotations

import json
from typing import Any

from asft.eval.code.data import checked_file, get_dataset, read_tasks
from asft.eval.code.prompts import extract_solution
from asft.eval.code.sandbox import KILLED, Sample, SandboxLimits, check_batch
from asft.eval.settings import ExecuteSettings

PASS = "pass"  # EvalPlus's verdict of a passing suite
BATCH_SIZE = 200  # samples per worker process


def is_correct(verdict: dict[str, Any], suite: str) -> bool:
    return verdict["base"] == PASS and (suite == "base" or verdict["plus"] == PASS)


def wall_seconds(n_samples: int, settings: ExecuteSettings) -> float:
    """A batch's wall-clock limit: EvalPlus bounds each suite's run by its own timeout (at most 60 s + 2),
    so this is a backstop for what escapes it; the ground truth and start-up get 120 s."""
    suites = 2 if settings.suite == "plus" else 1
    return 120.0 + n_samples * suites * 65.0


def execute(rows: list[dict[str, Any]], settings: ExecuteSettings, handle: Any,
            limits: SandboxLimits | None = None) -> tuple[list[tuple[int, int, bool]], dict[str, Any]]:
    """Verdicts of the samples `rows` (samples.jsonl rows, gold = the EvalPlus task id); writes graded rows."""
    dataset = get_dataset(settings.dataset)
    data_file = checked_file(settings.dataset, settings.local_file, settings.local_sha256)
    tasks = {task["task_id"]: task for task in read_tasks(data_file)}
    samples = []
    for index, row in enumerate(rows):
        task = tasks.get(row["gold"])
        if task is None:
            raise ValueError(f"sample of problem {row['problem']}: task '{row['gold']}' is not in {data_file}")
        samples.append(Sample(index, task["task_id"], extract_solution(
            row["prompt"], row["completion"], task["entry_point"], prefix_prompt=settings.prefix_prompt)))
    verdicts: dict[int, dict[str, Any]] = {}
    sandbox: dict[str, Any] = {}
    killed: list[int] = []
    for start in range(0, len(samples), BATCH_SIZE):
        batch = samples[start: start + BATCH_SIZE]
        batch_limits = limits or SandboxLimits(wall_seconds=wall_seconds(len(batch), settings),
                                               memory_mb=settings.memory_mb)
        result = check_batch(dataset.name, settings.suite, batch, data_file=data_file,
                             override_env=dataset.override_env, limits=batch_limits,
                             min_time_limit=settings.min_time_limit,
                             gt_time_limit_factor=settings.gt_time_limit_factor)
        verdicts.update(result.verdicts)
        sandbox = result.sandbox or sandbox
        killed += result.killed
    out = []
    for sample, row in zip(samples, rows, strict=True):
        verdict = verdicts[sample.index]
        correct = is_correct(verdict, settings.suite)
        out.append((row["problem"], row["sample"], correct))
        handle.write(json.dumps({"problem": row["problem"], "sample": row["sample"], "task_id": sample.task_id,
                                 "extracted": sample.solution, "base": verdict["base"], "plus": verdict["plus"],
                                 "gold": row["gold"], "correct": correct}, ensure_ascii=False) + "\n")
    return out, {"sandbox": sandbox, "killed_at_time_limit": len(killed),
                 "execution": {"dataset": settings.dataset, "suite": settings.suite,
                               "data_file": str(data_file), "killed_verdict": KILLED}}
