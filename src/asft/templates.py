"""Prompt formats, registered by name; training and evaluation share them.

`alpaca` is the upstream ASFT training template (train_v2.py); at evaluation the upstream harness
appends a newline to it (prompt type `alpaca` in math_evaluation). `cot` is the fork's greedy
evaluation prompt. `plain` puts the response right after the instruction (the embedded tasks).
`chat` uses the tokenizer's own chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
COT = "Question: {instruction}\nAnswer:"

#: Stop strings of the upstream harness, per evaluation prompt type.
STOP_STRINGS = {
    "alpaca": ["</s>", "<|im_end|>", "<|endoftext|>"],
    "cot": ["</s>", "<|im_end|>", "<|endoftext|>", "\n\nQuestion:"],
    "plain": ["</s>", "<|im_end|>", "<|endoftext|>"],
    "chat": ["</s>", "<|im_end|>", "<|endoftext|>"],
}


def _chat(instruction: str, tokenizer: Any) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat' needs a tokenizer with a chat_template")
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


_TRAIN: dict[str, Callable[[str, Any], str]] = {
    "plain": lambda instruction, _: instruction,
    "alpaca": lambda instruction, _: ALPACA.format(instruction=instruction),
    "chat": _chat,
}
_EVAL: dict[str, Callable[[str, Any], str]] = {
    "plain": _TRAIN["plain"],
    "alpaca": lambda instruction, _: ALPACA.format(instruction=instruction) + "\n",
    "chat": _chat,
    "cot": lambda instruction, _: COT.format(instruction=instruction),
}


def training_prompt(template: str, instruction: str, tokenizer: Any = None) -> str:
    """The prompt part of a training example (its tokens are masked from the loss)."""
    try:
        return _TRAIN[template](instruction, tokenizer)
    except KeyError:
        raise ValueError(f"unknown training template '{template}'; known: {', '.join(sorted(_TRAIN))}") from None


def eval_prompt(template: str, question: str, tokenizer: Any = None) -> str:
    """The prompt given to the model at evaluation."""
    try:
        return _EVAL[template](question, tokenizer)
    except KeyError:
        raise ValueError(f"unknown eval template '{template}'; known: {', '.join(sorted(_EVAL))}") from None
