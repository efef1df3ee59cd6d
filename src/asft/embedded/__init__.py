"""The embedded default: a tiny Qwen2 base model and three arithmetic tasks, built in code.

A CPU-sized stand-in for the paper's setup (``shared/notes/embedded-default.md``): a ~526K
parameter Qwen2 pre-trained on add/sub (and a little mul) with single-operation chain of thought
and ``\\boxed{}`` answers; fine-tuning on mul then shows forgetting of add/sub, which ASFT's KL
anchor reduces. Nothing here downloads anything.
"""

from .pretrain import (
    EmbeddedBaseSpec,
    build_model,
    encode_examples,
    extract_boxed,
    generate_responses,
    pretrain,
    quick_accuracy,
)
from .tasks import N_TEST, TASKS, Example, all_problems, solve, split
from .tokenizer import build_tokenizer

__all__ = [
    "N_TEST",
    "TASKS",
    "EmbeddedBaseSpec",
    "Example",
    "all_problems",
    "build_model",
    "build_tokenizer",
    "encode_examples",
    "extract_boxed",
    "generate_responses",
    "pretrain",
    "quick_accuracy",
    "solve",
    "split",
]
