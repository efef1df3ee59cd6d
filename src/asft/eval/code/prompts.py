"""EvalPlus's prompts, stop strings and answer extraction, per evaluation template.

`plain` is EvalPlus's base-model form (`evalplus.codegen` for a model without a chat template): the
task's prompt, stripped, plus a newline; the completion continues it; generation stops at EvalPlus's
EOS strings plus the direct-completion ones of the dataset (`\\ndef `, `\\nassert`, ...); the solution is
the prompt plus the completion. `alpaca` and `chat` are EvalPlus's instruction form
(`evalplus.provider.utility.make_raw_chat_prompt`): its instruction asks for a self-contained script in
a markdown block around the stripped prompt, and the response is opened with its response prefix and
`` ```python `` so the completion is the code; it stops at the closing fence; the solution is the
completion. `chat` uses the tokenizer's chat template exactly as EvalPlus does; `alpaca` puts the same
instruction and response opening in the upstream training template. Either way the code is what
EvalPlus's `sanitize` extracts (the entry point and what it reaches).
"""

from __future__ import annotations

from typing import Any

#: The instruction form's texts, as evalplus.codegen (0.3.1) sets them for a plain run.
INSTRUCTION_PREFIX = ("Please provide a self-contained Python script that solves the following problem in a "
                      "markdown code block:")
RESPONSE_PREFIX = ("Below is a Python script with a self-contained function that solves the problem and passes "
                   "corresponding tests:")
CODE_TEMPLATES = ("plain", "alpaca", "chat")


def task_prompt(task: dict[str, Any]) -> str:
    """EvalPlus's prompt of a task (codegen: `task["prompt"].strip() + "\\n"`)."""
    return task["prompt"].strip() + "\n"


def continues_prompt(template: str) -> bool:
    """Whether the completion continues the task prompt (base-model form) or is the whole answer."""
    return template == "plain"


def code_prompt(template: str, prompt: str, tokenizer: Any = None) -> str:
    """What the model is given for the task prompt `prompt` (see the module docstring)."""
    if template == "plain":
        return prompt
    if template == "chat":
        from evalplus.provider.utility import make_raw_chat_prompt

        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat_template")
        return make_raw_chat_prompt(prompt, INSTRUCTION_PREFIX, RESPONSE_PREFIX, tokenizer)
    if template == "alpaca":
        from asft.train.templates import eval_prompt

        instruction = f"{INSTRUCTION_PREFIX}\n```\n{prompt.strip()}\n```\n"
        return eval_prompt("alpaca", instruction) + f"{RESPONSE_PREFIX}\n```python\n"
    raise ValueError(f"template '{template}' has no code form; code benchmarks take {', '.join(CODE_TEMPLATES)}")


def code_stop(dataset: str, template: str) -> list[str]:
    """EvalPlus's stop strings: its EOS list, plus the direct-completion ones (plain) or the closing fence."""
    from evalplus.provider.utility import EOS, extra_eos_for_direct_completion

    extra = extra_eos_for_direct_completion(dataset) if continues_prompt(template) else ["\n```\n"]
    return [*EOS, *extra]


def extract_solution(prompt: str, completion: str, entry_point: str, *, prefix_prompt: bool) -> str:
    """The program EvalPlus runs: `sanitize` of prompt + completion (base form) or of the completion."""
    from evalplus.sanitize import sanitize

    return sanitize(prompt + completion if prefix_prompt else completion, entrypoint=entry_point)
