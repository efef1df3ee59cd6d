"""Typed settings of the `rl` stage: GRPO or DAPO (TRL's GRPOTrainer) from the base model or a trained run.

`ALGORITHMS` is the one place that says what each algorithm is in TRL's terms (its GRPOConfig fields),
with where each value comes from; the plan copies them into `RLSettings`, whose `key_payload()` is the
stage's content key, and the runner (asft.train.rl) hands them to GRPOConfig as they are. Everything
the config does not set is TRL 1.16's GRPOConfig default (docs/rl.md lists each value and its source).
No torch import: the workflow builds these at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from asft.core.settings import Runtime, StageSettings
from asft.eval.settings import PolicyRef

Algorithm = Literal["grpo", "dapo"]
#: TRL's GRPOConfig.loss_type values that these settings may carry.
LossType = Literal["grpo", "dapo", "dr_grpo", "bnpo"]


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm as TRL's GRPOConfig fields, and the source of each value (for docs/rl.md)."""

    loss_type: LossType
    beta: float  # KL coefficient to the start model (0: no reference model is loaded)
    epsilon: float  # lower clipping bound of the importance ratio
    epsilon_high: float | None  # upper clipping bound (None: epsilon, symmetric)
    mask_truncated_completions: bool  # completions cut at max_completion_length leave the loss
    sources: dict[str, str]


ALGORITHMS: dict[str, AlgorithmSpec] = {
    # GRPO as DeepSeekMath (Shao et al. 2024) states it: sequence-mean token losses, KL coefficient 0.04,
    # symmetric clip 0.2 (TRL's default epsilon).
    "grpo": AlgorithmSpec(
        loss_type="grpo", beta=0.04, epsilon=0.2, epsilon_high=None, mask_truncated_completions=False,
        sources={"loss_type": "GRPO paper (DeepSeekMath): per-sequence mean", "beta": "GRPO paper (DeepSeekMath)",
                 "epsilon": "TRL default", "epsilon_high": "TRL default (= epsilon)",
                 "mask_truncated_completions": "TRL default"}),
    # DAPO as TRL documents it (DAPO paper, Yu et al. 2025): token-level loss over the accumulated batch,
    # clip-higher 0.28, no KL term, overlong completions masked. TRL has no dynamic sampling (DAPO's
    # filter of all-equal groups); such a group has zero advantage and adds nothing to the gradient.
    "dapo": AlgorithmSpec(
        loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28, mask_truncated_completions=True,
        sources={"loss_type": "DAPO paper, TRL docs", "beta": "DAPO paper, TRL docs", "epsilon": "DAPO paper",
                 "epsilon_high": "DAPO paper, TRL docs", "mask_truncated_completions": "DAPO paper, TRL docs"}),
}


class RewardSettings(StageSettings):
    """The reward: the grading policy's verdict on a math answer, or the chosen letter of multiple choice
    (asft.train.rewards)."""

    kind: Literal["grade", "letter"]
    policy: PolicyRef | None = None  # grade: the grading policy (its version enters the key); letter: None

    @model_validator(mode="after")
    def _policy_fits(self) -> RewardSettings:
        if (self.kind == "grade") != (self.policy is not None):
            raise ValueError("rl reward: 'grade' needs a grading policy, 'letter' takes none")
        return self


def check_rl_batches(global_batch_size: int, per_device_batch_size: int, num_generations: int) -> None:
    """A batch of completions splits into per-device batches and into whole groups of one prompt's completions."""
    if global_batch_size % per_device_batch_size:
        raise ValueError(f"rl.global_batch_size: {global_batch_size} is not a multiple of "
                         f"rl.per_device_batch_size ({per_device_batch_size})")
    if global_batch_size % num_generations:
        raise ValueError(f"rl.global_batch_size: {global_batch_size} completions do not split into groups of "
                         f"rl.num_generations ({num_generations})")


class RLSettings(StageSettings):
    """One RL run: the algorithm in TRL's terms, sampling, optimisation, the reward and the seed."""

    algorithm: Algorithm
    loss_type: LossType
    beta: float = Field(ge=0)
    epsilon: float = Field(gt=0)
    epsilon_high: float | None = Field(None, gt=0)
    mask_truncated_completions: bool
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = Field(1, ge=1)
    num_generations: int = Field(ge=2)  # completions per prompt (a group)
    max_completion_length: int = Field(ge=1)
    temperature: float = Field(gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    template: Literal["plain", "alpaca", "chat"]  # the tokenize stage's prompt format
    lr: float = Field(gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)  # only without max_steps
    global_batch_size: int = Field(ge=2)  # completions per optimizer step, all devices
    per_device_batch_size: int = Field(ge=1)  # completions per forward pass; accumulation fills the rest
    max_prompts: int | None = Field(None, ge=1)  # the first N rows of the train set (None: all)
    precision: Literal["fp32", "bf16"] = "fp32"
    reward: RewardSettings
    seed: int = 0

    @model_validator(mode="after")
    def _batches_fit(self) -> RLSettings:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("rl: give max_steps or epochs, not both")
        check_rl_batches(self.global_batch_size, self.per_device_batch_size, self.num_generations)
        return self


    @classmethod
    def for_algorithm(cls, algorithm: str, **fields) -> RLSettings:
        """The settings of a run of `algorithm`: its TRL fields from `ALGORITHMS`, the rest from `fields`."""
        spec = ALGORITHMS[algorithm]
        return cls(algorithm=algorithm, loss_type=spec.loss_type, beta=spec.beta, epsilon=spec.epsilon,
                   epsilon_high=spec.epsilon_high, mask_truncated_completions=spec.mask_truncated_completions,
                   **fields)


class RLRuntime(Runtime):
    """How an RL run goes, not what it computes: outside the key."""

    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(100, ge=1)  # a checkpoint (resume point) every N steps
    gradient_checkpointing: bool = False
    use_vllm: bool = False  # generation by vLLM (colocated; GPU only)
