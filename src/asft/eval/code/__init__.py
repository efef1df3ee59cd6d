"""Code benchmarks (HumanEval(+), MBPP(+)) scored by EvalPlus, with model code run only in a sandbox.

`data`: the shipped EvalPlus files and their tasks; `prompts`: EvalPlus's prompts, stop strings and
answer extraction; `sandbox` and `worker`: the subprocess with its limits, where EvalPlus's correctness
check runs; `scoring`: the score stage's `execute` method (pass@1 and per-sample verdicts). docs/code.md.
"""
