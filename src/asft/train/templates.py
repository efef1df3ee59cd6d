"""Prompt formats, registered by name; training and evaluation share them.

`alpaca` is the upstream ASFT training template (train_v2.py); at evaluation the upstream harness
appends a newline to it (prompt type `alpaca` in math_evaluation). `cot` is the fork's greedy
evaluation prompt. `plain` puts the response right after the instruction (the embedded tasks).
`chat` uses the tokenizer's own chat template. `choice` is upstream's multiple-choice prompt
(eval/medeval/vllm_medical_test.py), rendered from a problem's structured options (`choice_prompt`).

An alpaca row's `input` (context for the instruction), where it is non-empty: the `alpaca` template
becomes Stanford Alpaca's `prompt_input` (tatsu-lab/stanford_alpaca train.py, PROMPT_DICT; upstream
ASFT's train_v2.py keeps only `prompt_no_input`, whose rows have no input); `plain` and `chat` take
the instruction and the input joined by one newline as the user's text, as LLaMA-Factory's alpaca
converter does (src/llamafactory/data/converter.py: `"\n".join([prompt, query])`). A row without
input gets the prompt it always had, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from string import ascii_uppercase
from typing import Any

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
#: Stanford Alpaca's PROMPT_DICT["prompt_input"], byte for byte: the prompt of a row with a non-empty input.
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
COT = "Question: {instruction}\nAnswer:"
CHOICE = "choice"

#: Stop strings of the upstream harness, per evaluation prompt type.
STOP_STRINGS = {
    "alpaca": ["</s>", "<|im_end|>", "<|endoftext|>"],
    "cot": ["</s>", "<|im_end|>", "<|endoftext|>", "\n\nQuestion:"],
    "plain": ["</s>", "<|im_end|>", "<|endoftext|>"],
    "chat": ["</s>", "<|im_end|>", "<|endoftext|>"],
    "choice": ["</s>", "<|im_end|>", "<|endoftext|>", "\n\nQuestion:"],
}


def choice_prompt(stem: str, options: Sequence[str]) -> str:
    """Upstream's multiple-choice prompt, byte for byte: no stripping, options lettered A, B, C, ... in order.

    Question: {stem}\n\nOptions:\nA. {option}\n...\n\nAnswer:
    """
    if not 0 < len(options) <= len(ascii_uppercase):
        raise ValueError(f"a multiple-choice prompt needs 1 to 26 options, got {len(options)}")
    prompt = f"Question: {stem}\n\nOptions:\n"
    for letter, text in zip(ascii_uppercase, options):
        prompt += f"{letter}. {text}\n"
    return prompt + "\nAnswer:"


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


def user_text(instruction: str, input_text: str = "") -> str:
    """The user's text of an alpaca row: the instruction, and a non-empty input after one newline
    (LLaMA-Factory's alpaca converter)."""
    return f"{instruction}\n{input_text}" if input_text else instruction


def training_prompt(template: str, instruction: str, tokenizer: Any = None, input_text: str = "") -> str:
    """The prompt part of a training example (its tokens are masked from the loss); `input_text` is an
    alpaca row's input (empty: none)."""
    if template not in _TRAIN:
        raise ValueError(f"unknown training template '{template}'; known: {', '.join(sorted(_TRAIN))}")
    if input_text and template == "alpaca":
        return ALPACA_INPUT.format(instruction=instruction, input=input_text)
    return _TRAIN[template](user_text(instruction, input_text), tokenizer)


def eval_prompt(template: str, question: str, tokenizer: Any = None) -> str:
    """The prompt given to the model at evaluation (`choice`: see `problem_prompt`)."""
    if template == CHOICE:
        raise ValueError("template 'choice' renders a problem's options: use problem_prompt(template, problem)")
    try:
        return _EVAL[template](question, tokenizer)
    except KeyError:
        raise ValueError(f"unknown eval template '{template}'; known: {', '.join(sorted(_EVAL))}") from None


def problem_prompt(template: str, problem: Any, tokenizer: Any = None) -> str:
    """The evaluation prompt of a benchmark problem (asft.eval.benchmarks.Problem)."""
    if template != CHOICE:
        return eval_prompt(template, problem.question, tokenizer)
    if problem.choices is None:
        raise ValueError("template 'choice' needs a multiple-choice benchmark; this problem has no options")
    return choice_prompt(problem.choices.stem, problem.choices.options)
