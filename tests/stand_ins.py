"""Stand-ins for GPU-only libraries: they record what our code asks of them and answer as told."""

from __future__ import annotations

import types
from collections.abc import Callable


def vllm_stand_in(calls: dict, respond: Callable[[str], list[types.SimpleNamespace]]) -> types.SimpleNamespace:
    """A `vllm` module whose LLM records its arguments in `calls` and answers each prompt with
    `respond(prompt)`: that prompt's request outputs (objects with `.text`, `.logprobs`, ...)."""

    class SamplingParams:
        def __init__(self, **kwargs):
            calls["params"] = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def generate(self, prompts, params):
            calls["prompts"] = prompts
            return [types.SimpleNamespace(outputs=respond(p)) for p in prompts]

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)
