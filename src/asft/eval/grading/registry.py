"""The grading policies' versions and descriptions, readable without importing any policy module
(the workflow reads them at parse time, where SymPy must not be imported). A test checks that each
policy module's ``VERSION`` equals the number here: bump both when a policy's verdicts change."""

from __future__ import annotations

POLICY_INFO: dict[str, tuple[int, str]] = {
    "strict": (1, "Math-Verify parse/verify plus the documented policy: the last box counts, "
                  "multiple-choice letters, mixed numbers, Unicode, exact huge powers, numbers "
                  "within relative 1e-4 (integers exact), percent signs (docs/grading.md)."),
    "qwen_harness": (1, "The Qwen2.5-Math evaluation harness's grading (the published numbers' "
                        "grader), reimplemented without evaluating model text (docs/grading.md)."),
}
