"""The stage table: the one place that lists the workflow's stages.

For each stage: its name (the folder under `results/`), the Snakemake rule that makes it, its
semantic version (bumped when the same settings would give other results: Snakemake cannot see
library edits), its typed settings and runtime models, its runner, the resources group of the
config it runs with, and the files a complete artifact of it holds for Snakemake. The plan, the
content keys, the job dispatch, `asft status`, `asft verify` and `asft plan`'s cost estimate are
views over this table. Adding a stage is one entry here, its settings model, its runner and its
rule file.

No torch import: runners are named as "module:function" and imported only by the job that runs one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import TypeAdapter, ValidationError

from asft.core.names import did_you_mean
from asft.core.settings import Runtime
from asft.eval.settings import GenerateRuntime, GenerateSettings, ScoreRuntime, ScoreSettings
from asft.train.settings import (
    DataSettings,
    MergeSettings,
    ModelSettings,
    TokenizeRuntime,
    TokenizeSettings,
    TrainRuntime,
    TrainSettings,
)
from asft.train.rl_settings import RLRuntime, RLSettings


@dataclass(frozen=True)
class Stage:
    name: str  # folder under results/
    rule: str  # the Snakemake rule that makes it (rules/<file>.smk)
    version: int  # enters every key of the stage
    settings: Any  # its settings model (a StageSettings class, or a union of them by `source`)
    runtime: type[Runtime] | None  # what changes how it runs, not what it computes
    runner: str  # "module:function", function(StageJob) -> stats
    resources: str  # the field of config `resources` its jobs run with
    outputs: tuple[str, ...]  # files of a complete artifact that the rule declares
    summary: str  # one line for users

    @cached_property
    def _adapter(self) -> TypeAdapter:
        return TypeAdapter(self.settings)

    def parse_settings(self, data: Mapping[str, Any]) -> Any:
        """The stage's settings model from its JSON form (a node file); errors name the stage."""
        try:
            return self._adapter.validate_python(data)
        except ValidationError as error:
            raise ValueError(f"{self.name} settings do not validate: {error}") from None

    def parse_runtime(self, data: Mapping[str, Any] | None) -> Runtime | None:
        return None if self.runtime is None else self.runtime.model_validate(data or {})

    def load_runner(self) -> Callable[..., dict[str, Any]]:
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)


#: Bump a version when the stage's outputs would change for the same settings.
STAGES: tuple[Stage, ...] = (
    Stage("model", "download_model", 1, ModelSettings, None, "asft.train.models:run_model_stage", "download",
          ("manifest.json",), "the base model's weights and tokenizer (pre-trained, downloaded or copied)"),
    Stage("data", "download_data", 1, DataSettings, None, "asft.train.data:run_data_stage", "download",
          ("manifest.json",), "a training set: fetched, checked against its sha256, subsampled"),
    # tokenize 2: chat targets end with the end-of-turn markup; Llama-style BOS masked
    Stage("tokenize", "tokenize", 2, TokenizeSettings, TokenizeRuntime, "asft.train.data:run_tokenize_stage",
          "tokenize", ("manifest.json",), "input ids and labels (the prompt masked) of a training set"),
    Stage("train", "train", 1, TrainSettings, TrainRuntime, "asft.train.launch:run_train_stage", "train",
          ("manifest.json", "curves.png"), "one training run (train set, mode, seed): adapter or weights"),
    Stage("merge", "merge", 1, MergeSettings, None, "asft.train.merge:run_merge_stage", "merge",
          ("manifest.json",), "a LoRA adapter folded into its base model"),
    Stage("rl", "rl", 1, RLSettings, RLRuntime, "asft.train.rl:run_rl_stage", "rl",
          ("manifest.json", "curves.png"), "one RL run (GRPO or DAPO) from the base model or a trained run: weights"),
    # generate + score were one `eval` stage until grading became its own step (re-scoring regenerates nothing)
    Stage("generate", "generate", 1, GenerateSettings, GenerateRuntime, "asft.eval.generate:run_generate_stage",
          "eval", ("manifest.json",), "one model's samples on one benchmark (completions, or next-token choices)"),
    Stage("score", "score", 1, ScoreSettings, ScoreRuntime, "asft.eval.score:run_score_stage", "score",
          ("manifest.json",), "one generation's samples judged by a grading policy: accuracy, pass@1, pass@n"),
)

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
_BY_NAME = {stage.name: stage for stage in STAGES}
_BY_RULE = {stage.rule: stage for stage in STAGES}


def get_stage(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        hint = did_you_mean(name, STAGE_NAMES)
        raise ValueError(f"unknown stage '{name}'{hint}; known: {', '.join(STAGE_NAMES)}") from None


def stage_of_rule(rule: str) -> Stage:
    try:
        return _BY_RULE[rule]
    except KeyError:
        raise ValueError(f"rule '{rule}' makes no stage artifact; stage rules: {', '.join(_BY_RULE)}") from None
