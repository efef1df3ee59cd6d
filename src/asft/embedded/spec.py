"""What determines the embedded base model: one frozen, validated spec, used by the config (the
`model.embedded` section), the model stage's key and the pre-training itself. No torch import."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from asft.embedded.tasks import TASKS


class EmbeddedBaseSpec(BaseModel):
    """The tiny base model the workflow pre-trains itself (asft.embedded.pretrain): architecture,
    pre-training data mixture and optimisation."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    hidden_size: int = Field(128, ge=8, description="Width of the tiny Qwen2 model.")
    num_layers: int = Field(2, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads (head dim = hidden_size / num_heads).")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")
    intermediate_size: int = Field(512, ge=8, description="MLP width.")
    max_positions: int = Field(64, ge=16, description="Longest sequence the model handles (the longest example "
                               "is 34 tokens).")
    tie_embeddings: bool = Field(True, description="Share input embedding and LM head (525,952 parameters).")
    task_mix: dict[str, float] = Field(
        default_factory=lambda: {"add": 0.46, "sub": 0.46, "mul": 0.08},
        description="Pre-training task mixture (task name -> probability).",
    )
    steps: int = Field(1000, ge=1, description="Pre-training optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Pre-training batch size.")
    lr: float = Field(3e-3, gt=0, description="Peak pre-training learning rate.")
    warmup: int = Field(100, ge=0, description="Linear warm-up steps (if >= steps, the whole run warms up).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    split_seed: int = Field(0, ge=0, description="Seed of the fixed train/test split of every task.")
    seed: int = Field(0, ge=0, description="Initialisation and sampling seed of pre-training.")

    @field_validator("task_mix")
    @classmethod
    def _known_tasks(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)} in task_mix; known: {', '.join(TASKS)}")
        if any(w < 0 or not math.isfinite(w) for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"task_mix weights must be finite, >= 0 and not all 0: {mix!r}")
        return {task: float(mix[task]) for task in TASKS if task in mix}  # one order, whatever the file's

    @model_validator(mode="after")
    def _heads_divide(self) -> EmbeddedBaseSpec:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        return self
