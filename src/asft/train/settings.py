"""Typed settings of the training side's stages: model, data, tokenize, train and merge.

Each is one frozen model: the plan builds it from the config, its `key_payload()` is what the stage's
content key hashes, and the stage's runner receives it as it is (asft.core.settings). Runtime models
hold what changes how a stage runs but not what it computes; they stay out of the keys.
No torch import: the workflow builds these at parse time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from asft.core.settings import Runtime, StageSettings
from asft.embedded.spec import EmbeddedBaseSpec
from asft.eval.settings import BenchmarkRef, EvalContext, PolicyRef
from asft.train.modes import ensure_plugin, get_mode

# --- model ---------------------------------------------------------------------------------------


class _ModelSettings(StageSettings):
    missing_pad_token: Literal["add", "eos"] = "add"
    special_tokens: dict[str, str] = Field(default_factory=dict)

    # Tokenizer fixes enter the key only when they differ from the default, so keys made before them hold.
    key_omits = {"missing_pad_token": "add", "special_tokens": {}}


class EmbeddedModel(_ModelSettings):
    """The tiny base model the workflow pre-trains itself."""

    source: Literal["embedded"] = "embedded"
    embedded: EmbeddedBaseSpec = Field(default_factory=EmbeddedBaseSpec)


class HubModel(_ModelSettings):
    """A Hugging Face model id at a revision, through the hub cache (or a local mirror folder)."""

    source: Literal["hub"] = "hub"
    id: str
    revision: str = "main"
    local_path: str | None = None


class LocalModel(_ModelSettings):
    """A folder with config.json, weights and tokenizer."""

    source: Literal["local"] = "local"
    path: str


ModelSettings = Annotated[EmbeddedModel | HubModel | LocalModel, Field(discriminator="source")]


# --- data ----------------------------------------------------------------------------------------


class _DataSettings(StageSettings):
    size: int | None = None
    subsample_seed: int | None = None  # only with a size: otherwise the seed changes nothing


class EmbeddedData(_DataSettings):
    """A generated task's fixed train split."""

    source: Literal["embedded"] = "embedded"
    task: str
    split_seed: int = 0


#: Row layouts of a train set's file (docs/data.md): `alpaca` rows hold prompt/response (and an optional
#: input) columns; `messages` rows a list of {role, content} turns; `sharegpt` rows a list of {from, value}.
DataFormat = Literal["alpaca", "messages", "sharegpt"]


class _TableData(_DataSettings):
    """The columns a file-backed train set reads; what is new since the first keys enters them only when set."""

    format: DataFormat = "alpaca"
    prompt_field: str = "instruction"
    response_field: str = "response"
    input_field: str | None = "input"  # alpaca: joined to the prompt where a row holds non-empty text in it
    messages_field: str | None = None  # messages/sharegpt: the conversation column (null: messages/conversations)

    key_omits = {"format": "alpaca", "input_field": "input", "messages_field": None}


class HubData(_TableData):
    """A file of a Hugging Face dataset repository, checked against its sha256."""

    source: Literal["hub"] = "hub"
    repo: str
    filename: str
    revision: str = "main"
    sha256: str | None = None
    local_path: str | None = None


class HubDataset(_TableData):
    """`datasets.load_dataset(dataset, config, split=split, revision=revision)`: a hub id, or a local dataset
    folder through the same call."""

    source: Literal["hub_dataset"] = "hub_dataset"
    dataset: str
    config: str | None = None
    split: str = "train"
    revision: str = "main"

    key_omits = {**_TableData.key_omits, "config": None}


class LocalData(_TableData):
    """A local .jsonl/.json/.parquet file, or a folder holding `filename`."""

    source: Literal["local"] = "local"
    path: str
    sha256: str | None = None
    filename: str | None = None

    key_omits = {**_TableData.key_omits, "filename": None}  # absent unless a folder is given, so older keys hold


DataSettings = Annotated[EmbeddedData | HubData | HubDataset | LocalData, Field(discriminator="source")]


# --- tokenize --------------------------------------------------------------------------------------


class TokenizeSettings(StageSettings):
    template: Literal["plain", "alpaca", "chat"] = "plain"
    max_length: int = Field(64, ge=8)
    overlong: Literal["truncate", "drop"] = "truncate"
    prompt_boundary: Literal["exact", "upstream"] = "exact"

    key_omits = {"prompt_boundary": "exact"}  # absent means exact, so keys made before the option hold


class TokenizeRuntime(Runtime):
    num_proc: int = Field(1, ge=1)


# --- train -----------------------------------------------------------------------------------------


class LoraSettings(StageSettings):
    r: int
    alpha: float
    dropout: float
    target_modules: list[str]


class ModeSource(StageSettings):
    """Where a user's loss mode comes from (a config plugin, asft.train.modes.load_plugin): its name and
    the sha256 of its code enter the train key, so editing the plugin re-trains its modes."""

    plugin: str
    sha256: str
    path: str | None = None  # where the job loads it from: not in the key (keys do not depend on folders)

    def key_payload(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "sha256": self.sha256}


class ProbeSettings(StageSettings):
    """One benchmark measured during training (train.eval_every), prompted and scored as its eval stage
    would: greedy generation graded by `policy`, or the option letter from the next-token log-probabilities."""

    benchmark: BenchmarkRef
    context: EvalContext = Field(default_factory=EvalContext)
    template: Literal["plain", "alpaca", "chat", "cot", "choice"] = "plain"
    scoring: Literal["generate", "choice_logprobs"] = "generate"
    max_new_tokens: int = Field(32, ge=1)
    stop: list[str] = Field(default_factory=list)
    policy: PolicyRef | None = None  # the grading policy of `generate`; None for choice_logprobs


class DynamicsSettings(StageSettings):
    """Training dynamics (the paper's Figure 1): every `every` optimizer steps, and at the first and the last,
    the accuracy on each benchmark's first `limit` problems and the KL from the base on the first one's gold
    text (asft.eval.dynamics)."""

    every: int = Field(ge=1)
    limit: int | None = Field(None, ge=1)
    benchmarks: list[ProbeSettings] = Field(min_length=1)

    def key_payload(self) -> dict[str, Any]:
        return {**super().key_payload(), "benchmarks": [probe.key_payload() for probe in self.benchmarks]}


class TrainSettings(StageSettings):
    """One training run: the loss mode, its hyper-parameters, the optimisation and the seed."""

    mode: str
    hparams: dict[str, float] = Field(default_factory=dict)
    kl_weight: float = 0.0  # 0 for a mode without a KL term (the registry decides: see `for_mode`)
    kl_direction: Literal["ref_policy", "policy_ref"] | None = None  # None for a mode without a KL term
    normalize: Literal["upstream", "microbatch_mean", "global_tokens"] = "microbatch_mean"
    seed: int = 0
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings | None = None
    max_steps: int | None = None
    epochs: float | None = None  # only without max_steps
    global_batch_size: int
    per_device_batch_size: int
    lr: float
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float | None = None
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    # bf16_mixed: full fine-tuning in mixed bf16 (fp32 master weights); `bf16` is then a LoRA run's
    # bf16 base. Before bf16_pure existed full fine-tuning in "bf16" stepped bf16 weights: the
    # distinct name keeps such runs from ever being reused.
    precision: Literal["fp32", "bf16", "bf16_mixed", "bf16_pure"] = "fp32"
    mode_source: ModeSource | None = None  # a mode of a config plugin; None for asft's own modes
    dynamics: DynamicsSettings | None = None  # train.eval_every: evaluate during training (None: never)

    key_omits = {"warmup_ratio": None, "mode_source": None, "dynamics": None}  # absent unless set, so older keys hold
    key_value_names = {"normalize": {"microbatch_mean": "microbatch_tokens"}}  # its name in older keys

    @classmethod
    def for_mode(cls, mode: str, *, kl_weight: float, kl_direction: str, hparams: dict[str, float],
                 **fields: Any) -> TrainSettings:
        """The settings of a run of `mode`: the registry decides, here only, whether the KL settings
        belong to it (they enter only the runs whose loss has a KL term, so changing kl_weight leaves
        sft and dft untouched) and fills in the mode's hyper-parameter defaults."""
        spec = get_mode(mode)
        source = None if spec.source is None else ModeSource(**vars(spec.source))
        return cls(mode=mode, hparams={**spec.defaults, **hparams}, kl_weight=kl_weight if spec.uses_kl else 0.0,
                   kl_direction=kl_direction if spec.uses_kl else None, mode_source=source, **fields)

    @model_validator(mode="after")
    def _plugin_loaded(self) -> TrainSettings:
        """A plugin's mode exists wherever these settings are read (the train job, a torchrun worker):
        its plugin is loaded here and checked against the sha256 of the key."""
        if self.mode_source is not None:
            source = self.mode_source
            ensure_plugin(self.mode, source.plugin, source.sha256, source.path)
        return self


class TrainRuntime(Runtime):
    implementation: Literal["chunked", "full"] = "chunked"
    chunk_size: int = Field(256, ge=1)
    save_steps: int = Field(100, ge=1)
    logging_steps: int = Field(10, ge=1)
    deepspeed: str | None = None  # an absolute path (the plan resolves repository-relative ones)
    gradient_checkpointing: bool = False
    num_processes: int = Field(1, ge=1)
    report_to: tuple[Literal["tensorboard", "wandb", "mlflow", "trackio"], ...] = ()  # trackers (asft.train.tracking)


# --- merge -----------------------------------------------------------------------------------------


class MergeSettings(StageSettings):
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
