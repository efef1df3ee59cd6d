"""Typed, validated workflow configuration.

One source of truth: these frozen pydantic models. `config/schema.yaml` (the JSON schema Snakemake
validates at parse time) is generated from them by `asft schema`, and a test checks it is current.
Every field says what it is for; unknown keys are errors that name the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from asft.core.names import did_you_mean
from asft.embedded.spec import EmbeddedBaseSpec
from asft.train.modes import DEFAULT_KL_DIRECTION

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ModelConfig(_Strict):
    """The base model to fine-tune."""

    source: Literal["embedded", "hub", "local"] = Field(
        "embedded", description="embedded: built by the workflow; hub: Hugging Face id; local: a folder."
    )
    id: str | None = Field(None, description="Hub id, e.g. Qwen/Qwen2.5-7B (source hub).")
    revision: str = Field("main", description="Hub revision (branch, tag or commit).")
    local_path: str | None = Field(None, description="Folder with config.json, weights and tokenizer.")
    embedded: EmbeddedBaseSpec = Field(default_factory=EmbeddedBaseSpec, description="Embedded recipe.")
    missing_pad_token: Literal["add", "eos"] = Field(
        "add",
        description="A tokenizer without a pad token (Llama-2): add: add '[PAD]' and resize the embeddings, the new "
        "rows set to the mean of the others (upstream train_v2.py); eos: pad with the eos token (TRL's choice).",
    )
    special_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="Special tokens to set on the tokenizer in the model stage, e.g. {bos_token: '</s>'} "
        "(upstream train_v2.py sets bos, eos and unk to '</s>' for Llama-2).",
    )

    @field_validator("special_tokens")
    @classmethod
    def _special_token_names(cls, tokens: dict[str, str]) -> dict[str, str]:
        known = ("bos_token", "eos_token", "unk_token", "pad_token")
        for name, value in tokens.items():
            if name not in known:
                hint = did_you_mean(name, known)
                raise ValueError(f"unknown special token '{name}'{hint}; known: {', '.join(known)}")
            if not value:
                raise ValueError(f"{name}: the token text is empty")
        return tokens

    @model_validator(mode="after")
    def _source_fields(self) -> ModelConfig:
        if self.source == "hub" and not self.id:
            raise ValueError("model.id: required when model.source is 'hub'")
        if self.source == "local" and not self.local_path:
            raise ValueError("model.local_path: required when model.source is 'local'")
        return self


class TrainSetConfig(_Strict):
    """One training set; every (train set, mode, seed) is one training run."""

    name: str = Field(description="Short label used in the table, e.g. numina_cot_10k.")
    source: Literal["embedded", "hub", "hub_dataset", "local"] = Field(
        "embedded", description="embedded: generated task; hub: a file of a dataset repo; hub_dataset: "
        "datasets.load_dataset(dataset, config, split, revision); local: a .jsonl/.json/.parquet file."
    )
    task: str | None = Field(None, description="Embedded task name (add, sub, mul).")
    repo: str | None = Field(None, description="Hub dataset repository, e.g. chichi56/ASFT.")
    filename: str | None = Field(
        None, description="File inside the dataset repository (source hub), or inside the folder `path` (source local)."
    )
    dataset: str | None = Field(
        None, description="source hub_dataset: a hub dataset id (e.g. tatsu-lab/alpaca), or a local dataset folder "
        "(data files, or a saved dataset) loaded by the same datasets.load_dataset call."
    )
    config: str | None = Field(None, description="source hub_dataset: the dataset's configuration (subset) name.")
    split: str = Field("train", description="source hub_dataset: the split to train on.")
    revision: str = Field("main", description="Hub revision of the dataset repository (sources hub, hub_dataset).")
    path: str | None = Field(
        None,
        description="Local .jsonl/.json/.parquet file, or a folder holding `filename` (source local); with source hub, "
        "a local mirror read instead of the hub.",
    )
    sha256: str | None = Field(
        None, description="Expected sha256 of the file (checked; null: the published one for the paper's "
        "chichi56/ASFT files, none otherwise)."
    )
    format: Literal["alpaca", "messages", "sharegpt"] = Field(
        "alpaca", description="Row layout: alpaca (prompt_field, response_field and an optional input_field); "
        "messages ([{role, content}] turns in messages_field); sharegpt ([{from, value}] turns, from human/gpt/"
        "system). Conversations need tokenize.template: chat; every assistant turn is learned."
    )
    prompt_field: str = Field("instruction", description="Row field holding the prompt.")
    response_field: str = Field("response", description="Row field holding the target response.")
    input_field: str | None = Field(
        "input", description="format alpaca: row field holding an optional input, joined to the prompt where "
        "non-empty (Stanford Alpaca's prompt_input; null: never)."
    )
    messages_field: str | None = Field(
        None, description="format messages/sharegpt: row field holding the turns (null: messages, resp. conversations)."
    )
    size: int | None = Field(None, ge=1, description="Subsample this many rows (null: all).")
    subsample_seed: int = Field(0, ge=0, description="Seed of the subsample.")

    @model_validator(mode="after")
    def _source_fields(self) -> TrainSetConfig:
        needed = {"embedded": ["task"], "hub": ["repo", "filename"], "hub_dataset": ["dataset"],
                  "local": ["path"]}[self.source]
        for field in needed:
            if getattr(self, field) in (None, ""):
                raise ValueError(f"train_sets[{self.name}].{field}: required when source is '{self.source}'")
        return self


class TokenizeConfig(_Strict):
    template: Literal["plain", "alpaca", "chat"] = Field(
        "plain", description="Prompt format: plain (prompt+response), alpaca (upstream ASFT), chat (model's template)."
    )
    max_length: int = Field(64, ge=8, description="Longest tokenized example (prompt + response + eos).")
    overlong: Literal["truncate", "drop"] = Field(
        "truncate", description="Longer examples: truncate (keep the first max_length tokens, as upstream) or drop."
    )
    prompt_boundary: Literal["exact", "upstream"] = Field(
        "exact",
        description="exact: prompt and response tokenized apart, every response token a label; upstream: "
        "tokenize them joined and mask len(tokenize(prompt)) tokens (train_v2.py; a token merged across the "
        "boundary is masked).",
    )
    num_proc: int = Field(1, ge=1, description="Tokenizer processes (datasets.map num_proc); not part of the key.")


#: Other names accepted for a setting's value; each resolves to the canonical one (and so to the same key).
KL_DIRECTION_ALIASES = {"forward": "ref_policy", "reverse": "policy_ref"}
NORMALIZE_ALIASES = {"microbatch_tokens": "microbatch_mean"}  # its name before `upstream` existed


class LossConfig(_Strict):
    kl_weight: float = Field(0.05, ge=0, description="Weight of the KL anchor in sft+kl and asft (paper: 0.05).")
    kl_direction: Literal["ref_policy", "policy_ref", "forward", "reverse"] = Field(
        DEFAULT_KL_DIRECTION,
        description="ref_policy (alias forward): KL(ref||policy), the paper's forward KL (eq. 6, Figure 2) and what "
        "upstream computes; policy_ref (alias reverse): KL(policy||ref), the paper's reverse-KL ablation.",
    )
    normalize: Literal["upstream", "microbatch_mean", "global_tokens", "microbatch_tokens"] = Field(
        "microbatch_mean",
        description="upstream: each micro-batch's token mean, summed over the accumulation steps (train_v2.py under "
        "the HF Trainer: the exact upstream gradient, grad_accum times microbatch_mean's); microbatch_mean: the "
        "same means averaged over the accumulation steps (microbatch_tokens is an old name of it); global_tokens: "
        "divide by the response tokens of the whole accumulated batch, all devices (TRL/Unsloth).",
    )

    @field_validator("kl_direction")
    @classmethod
    def _canonical_direction(cls, value: str) -> str:
        return KL_DIRECTION_ALIASES.get(value, value)

    @field_validator("normalize")
    @classmethod
    def _canonical_normalize(cls, value: str) -> str:
        return NORMALIZE_ALIASES.get(value, value)
    implementation: Literal["chunked", "full"] = Field(
        "chunked", description="chunked: lean hidden-state loss; full: materialise logits (ZeRO-3). Not in the key."
    )
    chunk_size: int = Field(256, ge=1, description="Rows per chunk of the chunked loss. Not in the key.")
    hparams: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per-mode hyper-parameters, e.g. {sft-topk: {keep: 0.7}}."
    )


class LoraConfig(_Strict):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters.",
    )


class TrainConfig(_Strict):
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters or full fine-tuning.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (method lora).")
    max_steps: int | None = Field(300, ge=1, description="Optimizer steps (null: use epochs).")
    epochs: float = Field(1.0, gt=0, description="Epochs when max_steps is null.")
    global_batch_size: int = Field(32, ge=1, description="Examples per optimizer step over all devices.")
    per_device_batch_size: int = Field(32, ge=1, description="Micro-batch per device; accumulation fills the rest.")
    lr: float = Field(4e-3, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field("cosine", description="Schedule.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps (0 when warmup_ratio is set).")
    warmup_ratio: float | None = Field(
        None, gt=0, lt=1, description="Warm-up as a fraction of the optimizer steps, rounded up (the paper: 0.1); "
        "null: warmup_steps decides."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clip.")
    precision: Literal["fp32", "bf16", "bf16_pure"] = Field(
        "fp32",
        description="fp32; bf16: mixed precision (bf16 compute, trainable weights and AdamW states in fp32; a LoRA "
        "base is loaded in bf16); bf16_pure: weights, gradients and AdamW states in bf16, as upstream's full "
        "fine-tuning (under DeepSpeed, a config with bf16_master_weights_and_grads, e.g. "
        "config/deepspeed/zero3_bf16_pure.json). bf16 needs a GPU.",
    )
    deepspeed: str | None = Field(None, description="DeepSpeed config file (e.g. config/deepspeed/zero3.json).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    num_processes: int | None = Field(
        None, ge=1, description="Training processes (torchrun); null: one per GPU of resources.train.gpus. "
        "Not in the key."
    )
    save_steps: int = Field(100, ge=1, description="Checkpoint every N steps (resume point). Not in the key.")
    logging_steps: int = Field(10, ge=1, description="Log metrics every N steps. Not in the key.")
    report_to: list[Literal["none", "tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list, description="Experiment trackers the HF Trainer logs to (none, the default: only "
        "metrics.jsonl). tensorboard writes into the run's artifact (<artifact>/tensorboard/); wandb, mlflow and "
        "trackio read their own environment variables (docs/tracking.md). Its package must be installed. Not in "
        "the key."
    )

    eval_every: int | None = Field(
        None, ge=1, description="Training dynamics (the paper's Figure 1): every N optimizer steps, and at the first "
        "and the last, the accuracy on eval_benchmarks and the KL from the base, logged into metrics.jsonl beside the "
        "loss and plotted in the run's dynamics.png (docs/dynamics.md); null: never. In the train key only when set; "
        "not with DeepSpeed."
    )
    eval_benchmarks: list[str] | None = Field(
        None, description="Benchmarks measured with eval_every (any registered one): multiple-choice ones by the "
        "chosen letter (template choice), the others by greedy generation with the eval template, graded by the "
        "first grading policy; the KL from the base is on the first one's gold text. null: table.target then "
        "table.retention."
    )
    eval_limit: int | None = Field(64, ge=1, description="eval_every: the first N problems of each benchmark (null: all).")

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, names: list[str]) -> list[str]:
        from asft.train.tracking import check_report_to

        return check_report_to(names)


class JudgeConfig(_Strict):
    """The judge of AlpacaEval (benchmark alpaca_eval): an alpaca-eval annotator on an OpenAI-compatible endpoint."""

    annotator: str = Field(
        "weighted_alpaca_eval_gpt4_turbo",
        description="alpaca-eval annotator config (its prompt and answer parser, as the installed package ships them); "
        "it must call openai_completions. In the key.",
    )
    model: str | None = Field(
        None, description="The judge model the endpoint is asked for; null: the annotator's own (gpt-4-1106-preview "
        "for weighted_alpaca_eval_gpt4_turbo), or `serve`'s model. In the key.",
    )
    serve: str | None = Field(
        None, description="Start a local vLLM OpenAI server of this judge model (hub id or folder) in the score job "
        "(GPU); the model enters the key. Excludes base_url.",
    )
    base_url: str | None = Field(
        None, description="An OpenAI-compatible endpoint (e.g. http://host:8000/v1); null: the OpenAI API. Not in the key.",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="The environment variable holding the endpoint's key (never written anywhere); a "
        "local endpoint without a key gets 'EMPTY'. Not in the key.",
    )
    concurrency: int = Field(4, ge=1, description="Requests in flight per score job. Not in the key.")
    max_retries: int = Field(6, ge=0, description="Retries per request on 429, 5xx and timeouts. Not in the key.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds per request. Not in the key.")
    serve_tensor_parallel: int = Field(1, ge=1, description="GPUs of the local judge server (serve). Not in the key.")
    cache_dir: str = Field(
        "results/judge_cache", description="Judgements kept across runs, one folder per judge key: a re-score asks "
        "nothing twice. Not in the key.",
    )

    @field_validator("annotator")
    @classmethod
    def _known_annotator(cls, name: str) -> str:
        from asft.eval.judge.annotator import annotator_config  # reads the package's config files, imports nothing

        annotator_config(name)
        return name

    @model_validator(mode="after")
    def _one_endpoint(self) -> JudgeConfig:
        if self.serve and self.base_url:
            raise ValueError("eval.judge: give serve (a local server of the judge) or base_url (an endpoint), not both")
        if self.serve and self.model and self.model != self.serve:
            raise ValueError(f"eval.judge.model: '{self.model}' differs from the served judge '{self.serve}'")
        return self


class EvalConfig(_Strict):
    protocol: Literal["custom", "paper", "paper_medical", "fork_cot_greedy"] = Field(
        "custom", description="paper | paper_medical | fork_cot_greedy: a named preset of scoring, template, "
        "n_samples, temperature, top_p and max_new_tokens (asft.eval.protocols), which then override those fields; "
        "custom: the fields below."
    )
    scoring: Literal["generate", "choice_logprobs"] = Field(
        "generate",
        description="generate: sample completions and grade the extracted answer; choice_logprobs: multiple choice, "
        "the option letter with the highest next-token log-probability after the prompt (upstream "
        "eval/medeval/vllm_medical_test.py; hf: one forward pass, vllm: logprobs of one token).",
    )
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: batched generate (CPU/GPU); vllm: GPU.")
    grading: list[str] | None = Field(
        None,
        description="Grading policies of generated answers (asft.eval.grading: strict, qwen_harness), the first the "
        "table's main numbers, the others shown beside them; null: the protocol's (paper: qwen_harness, else strict). "
        "A change re-runs only scoring and the table, never generation.",
    )
    include_path: list[str] = Field(
        default_factory=list,
        description="Folders of YAML benchmarks: each *.yaml there names a jsonl file and its fields (task, "
        "data_file, doc_to_text, doc_to_target, doc_to_choice, version, display; docs/extending.md), registered "
        "like the built-in benchmarks before eval.benchmarks is checked.",
    )
    benchmarks: list[str] = Field(
        default_factory=lambda: ["embedded_mul", "embedded_add", "embedded_sub"],
        description="Registered benchmark names (asft.eval.benchmarks; asft ls benchmarks).",
    )
    template: Literal["plain", "alpaca", "chat", "cot", "choice"] = Field(
        "plain", description="Prompt format; choice: upstream's multiple-choice prompt "
        "'Question: ...\\n\\nOptions:\\nA. ...\\n\\nAnswer:' (multiple-choice benchmarks)."
    )
    n_samples: int = Field(1, ge=1, description="Completions per problem (avg@n).")
    temperature: float = Field(0.0, ge=0, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(32, ge=1, description="Generation budget per completion.")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings.")
    seed: int = Field(0, ge=0, description="Sampling seed.")
    drift: bool = Field(True, description="Also measure mean per-token KL(base || model) on gold solutions.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N problems (smoke runs).")
    benchmark_files: dict[str, str] = Field(
        default_factory=dict,
        description="Local jsonl copies of hub benchmarks (name -> path), rows in the hub's format; "
        "their sha256 enters the eval key.",
    )
    batch_size: int = Field(256, ge=1, description="Prompts per generate call. Not in the key.")
    tensor_parallel: int = Field(1, ge=1, description="vLLM tensor parallel size. Not in the key.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The judge of judged benchmarks (alpaca_eval).")

    @field_validator("include_path")
    @classmethod
    def _yaml_benchmarks(cls, folders: list[str]) -> list[str]:
        from asft.eval.benchmarks import load_include_path

        try:
            load_include_path(folders)
        except ValueError as error:
            raise ValueError(f"eval.include_path: {error}") from None
        return folders

    @field_validator("grading")
    @classmethod
    def _known_policies(cls, policies: list[str] | None) -> list[str] | None:
        from asft.eval.grading import policy_version  # light: the policy table, not the graders

        if policies is not None:
            if not policies:
                raise ValueError("give at least one grading policy, or null for the protocol's")
            for name in policies:
                policy_version(name)  # unknown: ValueError with "did you mean"
            if len(set(policies)) != len(policies):
                raise ValueError(f"a policy is listed twice: {policies}")
        return policies


class TableConfig(_Strict):
    target: list[str] = Field(default_factory=lambda: ["embedded_mul"], description="Benchmarks of the new task.")
    retention: list[str] = Field(
        default_factory=lambda: ["embedded_add", "embedded_sub"], description="Benchmarks the base already knew."
    )
    target_label: str = Field("target", description="Column title of the target mean (the paper: 'Math avg').")
    retention_label: str = Field("retention", description="Column title of the retention mean.")
    published: str | None = Field(
        None, description="Name of a table in config/published.yaml to show beside ours (published, ours - published)."
    )


class RLConfig(_Strict):
    """RL after training (the paper's Table 2, docs/rl.md): GRPO or DAPO with TRL's GRPOTrainer, from the base
    model or from the runs of a trained mode. Empty `algorithms`: no RL jobs."""

    algorithms: list[Literal["grpo", "dapo"]] = Field(
        default_factory=list, description="Algorithms to run (asft.train.rl_settings.ALGORITHMS: grpo, dapo); empty: "
        "no rl jobs."
    )
    start_from: list[str] = Field(
        default_factory=lambda: ["base"], description="Where each algorithm starts: base (the base model), or a mode "
        "of `modes` (its trained run of each seed; a LoRA run's merge), e.g. [base, sft, asft]."
    )
    runs: list[str] | None = Field(
        None, description="Only these runs, named as the table labels them (grpo, dapo from base; sft+dapo, "
        "asft+dapo from a mode); null: every algorithm from every start."
    )
    reward: Literal["auto", "grade", "letter"] = Field(
        "auto", description="grade: the first grading policy's verdict on the completion's answer against the "
        "answer it extracts from the row's response (math); letter: the chosen option letter against the "
        "response's letter (multiple choice); auto: letter when the eval scores multiple choice, else grade."
    )
    num_generations: int = Field(8, ge=2, description="Completions per prompt (a group; TRL default 8).")
    max_completion_length: int = Field(512, ge=1, description="Longest completion in tokens (TRL default 512).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions (TRL default 1.0).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (TRL default 1.0).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage scaling: by the group's reward std (TRL default), the batch's, or none."
    )
    num_iterations: int = Field(1, ge=1, description="Optimisation passes per generated batch (TRL default 1).")
    lr: float = Field(1e-6, gt=0, description="Peak learning rate (TRL default 1e-6).")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Schedule (TRL/transformers default linear)."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warm-up as a fraction of the steps (default 0).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (default 0).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clip (default 1.0).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (null: epochs).")
    epochs: float = Field(3.0, gt=0, description="Passes over the prompts when max_steps is null (TRL default 3).")
    global_batch_size: int = Field(
        8, ge=2, description="Completions per optimizer step over all devices (global_batch_size / num_generations "
        "prompts); TRL's default on one device: 8."
    )
    per_device_batch_size: int = Field(8, ge=1, description="Completions per forward pass per device (TRL default 8).")
    max_prompts: int | None = Field(None, ge=1, description="Only the first N prompts of the train set (null: all).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="fp32, or bf16 weights and compute (GPU).")
    use_vllm: bool = Field(False, description="Generate with vLLM colocated on the training GPUs. Not in the key.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory. Not in the key.")
    logging_steps: int = Field(1, ge=1, description="Log the reward every N steps. Not in the key.")
    save_steps: int = Field(100, ge=1, description="Checkpoint every N steps (resume point). Not in the key.")

    @field_validator("algorithms")
    @classmethod
    def _distinct_algorithms(cls, algorithms: list[str]) -> list[str]:
        if len(set(algorithms)) != len(algorithms):
            raise ValueError(f"an algorithm is listed twice: {algorithms}")
        return algorithms

    def run_label(self, algorithm: str, start: str) -> str:
        """The table's name of a run: the algorithm from the base, `<mode>+<algorithm>` from a trained mode."""
        return algorithm if start == "base" else f"{start}+{algorithm}"

    def planned_runs(self) -> list[tuple[str, str]]:
        """(algorithm, start) of every rl run, in the config's order (filtered by `runs`)."""
        pairs = [(algorithm, start) for start in self.start_from for algorithm in self.algorithms]
        return [p for p in pairs if self.runs is None or self.run_label(*p) in self.runs]


class RuleResources(_Strict):
    threads: int = Field(1, ge=1, description="Threads (torch threads) per job.")
    mem_mb: int = Field(2000, ge=1, description="Memory per job.")
    runtime: int = Field(30, ge=1, description="Minutes per job (SLURM time limit).")
    gpus: int = Field(0, ge=0, description="GPUs per job.")


class ResourcesConfig(_Strict):
    download: RuleResources = Field(default_factory=RuleResources)
    tokenize: RuleResources = Field(default_factory=RuleResources)
    train: RuleResources = Field(default_factory=RuleResources)
    merge: RuleResources = Field(default_factory=RuleResources)
    rl: RuleResources = Field(default_factory=RuleResources)
    eval: RuleResources = Field(default_factory=RuleResources)
    score: RuleResources = Field(default_factory=RuleResources)


class Config(_Strict):
    """The whole workflow configuration (config/config.yaml is the embedded default)."""

    name: str = Field("embedded", description="A label for this configuration.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    train_sets: list[TrainSetConfig] = Field(
        default_factory=lambda: [TrainSetConfig(name="mul", source="embedded", task="mul")],
        description="Training sets; one run per (train set, mode, seed).",
    )
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules (my_project.my_modes) or .py files that register loss modes with "
        "asft.train.modes.register_mode; imported when the config is parsed and by the train job. A mode's plugin "
        "name and the sha256 of its code enter the train key (docs/extending.md).",
    )
    modes: list[str] = Field(default_factory=lambda: ["sft", "dft", "sft+kl", "asft"], description="Loss modes.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1], description="Fine-tuning seeds.")
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    merge_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="dtype of merged weights (the fork's quick run merged in fp16)."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig)
    evaluate_base: bool = Field(True, description="Also evaluate the untouched base model (a 'base' row).")
    table: TableConfig = Field(default_factory=TableConfig)
    rl: RLConfig = Field(default_factory=RLConfig, description="RL after training (docs/rl.md); absent: none.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    sweep: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="A grid of settings (docs/sweeps.md): dotted setting names (loss.kl_weight, train.lr, "
        "loss.hparams.asft-sft.alpha, train_sets.<name>.size, model.id) to lists of values; every combination is a "
        "point, the base config with those values, and all points build into one plan (shared stages run once). "
        "The table gains a column per swept setting.",
    )
    sweep_zip: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Swept settings that move together: lists of the same length, zipped (point i takes the i-th "
        "value of each); combined with sweep as a grid.",
    )

    @field_validator("sweep", "sweep_zip", mode="before")
    @classmethod
    def _sweep_lists(cls, lists: Any, info: Any) -> Any:
        from asft.workflow.sweeps import check_lists

        return check_lists(info.field_name, lists)

    @field_validator("plugins")
    @classmethod
    def _load_plugins(cls, plugins: list[str]) -> list[str]:
        from asft.train.modes import load_plugin

        for entry in plugins:
            try:
                load_plugin(entry)
            except (ValueError, TypeError) as error:
                raise ValueError(f"plugins: {error}") from None
            except Exception as error:  # the user's module failed while it was imported
                raise ValueError(f"plugins: {entry!r} raised {type(error).__name__}: {error}") from None
        return plugins

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, modes: list[str]) -> list[str]:
        from asft.train.modes import available_modes

        if not modes:
            raise ValueError("modes: the list is empty; name at least one of " + ", ".join(available_modes()))
        for mode in modes:
            if mode not in available_modes():
                hint = did_you_mean(mode, available_modes())
                raise ValueError(f"modes: unknown mode '{mode}'{hint}; known: {', '.join(available_modes())}")
        if len(set(modes)) != len(modes):
            raise ValueError("modes: a mode is listed twice")
        return modes

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("seeds: the list is empty; give at least one seed, e.g. [0]")
        if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise ValueError(f"seeds: must be distinct non-negative integers, got {seeds}")
        return seeds

    @field_validator("train_sets")
    @classmethod
    def _train_sets(cls, sets: list[TrainSetConfig]) -> list[TrainSetConfig]:
        if not sets:
            raise ValueError("train_sets: the list is empty")
        names = [s.name for s in sets]
        if len(set(names)) != len(names):
            raise ValueError("train_sets: names must be unique")
        return sets

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        from asft.eval.benchmarks import available_benchmarks, benchmark_hint
        from asft.train.modes import get_mode

        for bench in self.eval.benchmarks:
            if bench not in available_benchmarks():
                hint = benchmark_hint(bench)
                raise ValueError(
                    f"eval.benchmarks: unknown benchmark '{bench}'{hint}; known: {', '.join(available_benchmarks())}"
                )
        for field in ("target", "retention"):
            for bench in getattr(self.table, field):
                if bench not in self.eval.benchmarks:
                    raise ValueError(f"table.{field}: '{bench}' is not in eval.benchmarks")
        if self.table.published:
            from asft.eval.published import PUBLISHED_FILE, load_published

            known = yaml.safe_load(PUBLISHED_FILE.read_text()) or {}
            if self.table.published not in known:
                raise ValueError(
                    f"table.published: no table '{self.table.published}' in config/published.yaml; "
                    f"known: {', '.join(sorted(known))}"
                )
            if "metrics" in load_published(self.table.published):  # a broken one stops here, not after the run
                raise ValueError(f"table.published: '{self.table.published}' is a cost table (metrics, not accuracies); "
                                 "an accuracy table names it with `cost:` (config/published.yaml)")
        for mode, hparams in self.loss.hparams.items():
            if mode not in self.modes:
                continue
            spec = get_mode(mode)
            for name in hparams:
                if name not in spec.defaults:
                    raise ValueError(
                        f"loss.hparams.{mode}.{name}: unknown hyper-parameter; "
                        f"'{mode}' takes {sorted(spec.defaults) or 'none'}"
                    )
        if self.train.warmup_ratio is not None and self.train.warmup_steps:
            raise ValueError(
                f"train.warmup_ratio ({self.train.warmup_ratio}) and train.warmup_steps ({self.train.warmup_steps}) "
                "are both set; set warmup_steps: 0 to use the ratio, or warmup_ratio: null"
            )
        for train_set in self.train_sets:
            if train_set.source != "embedded" and train_set.format != "alpaca" and self.tokenize.template != "chat":
                raise ValueError(
                    f"train_sets[{train_set.name}].format: '{train_set.format}' rows are conversations, rendered with "
                    f"the model's chat template: set tokenize.template: chat (it is '{self.tokenize.template}')")
        _check_precision_fits_deepspeed(self.train)
        if self.train.global_batch_size % self.train.per_device_batch_size:
            raise ValueError(f"train.global_batch_size: {self.train.global_batch_size} is not a multiple of "
                             f"train.per_device_batch_size ({self.train.per_device_batch_size})")
        return self

    @model_validator(mode="after")
    def _multiple_choice_scoring(self) -> Config:
        _check_multiple_choice(self.eval)
        return self

    @model_validator(mode="after")
    def _sweep_points(self) -> Config:
        if self.sweep or self.sweep_zip:
            from asft.workflow.sweeps import sweep_points

            sweep_points(self)  # every point is a valid config; an error names the entry and the point
        return self

    @model_validator(mode="after")
    def _training_dynamics(self) -> Config:
        _check_dynamics(self)
        return self

    @model_validator(mode="after")
    def _rl_runs(self) -> Config:
        _check_rl(self)
        return self


def table_modes(cfg: Config) -> list[str]:
    """The table's rows in order: the trained modes, then each rl run (`dapo`, `asft+dapo`) in the config's order."""
    return [*cfg.modes, *(cfg.rl.run_label(algorithm, start) for algorithm, start in cfg.rl.planned_runs())]


def dynamics_benchmarks(cfg: Config) -> list[str]:
    """The benchmarks measured during training (train.eval_every): its list, else the table's."""
    if cfg.train.eval_benchmarks is not None:
        return list(cfg.train.eval_benchmarks)
    return list(dict.fromkeys([*cfg.table.target, *cfg.table.retention]))


def _check_dynamics(cfg: Config) -> None:
    """train.eval_every / eval_benchmarks: known benchmarks, a template that fits them, no DeepSpeed."""
    from asft.eval.benchmarks import available_benchmarks, benchmark_hint, get_benchmark
    from asft.eval.protocols import get_protocol

    train = cfg.train
    names = train.eval_benchmarks or []
    if train.eval_benchmarks is not None and not names:
        raise ValueError("train.eval_benchmarks: the list is empty; name benchmarks, or null for the table's")
    for bench in names:
        if bench not in available_benchmarks():
            raise ValueError(f"train.eval_benchmarks: unknown benchmark '{bench}'{benchmark_hint(bench)}; "
                             f"known: {', '.join(available_benchmarks())}")
    if len(set(names)) != len(names):
        raise ValueError(f"train.eval_benchmarks: a benchmark is listed twice: {names}")
    if train.eval_every is None:
        return
    if train.deepspeed:
        raise ValueError(
            f"train.eval_every: not with train.deepspeed ({train.deepspeed}): evaluating during training generates "
            "with the policy, which ZeRO-3 shards across ranks; drop train.deepspeed (e.g. method lora, or full "
            "fine-tuning on one large GPU) or set train.eval_every: null and evaluate the final model")
    benchmarks = dynamics_benchmarks(cfg)
    if not benchmarks:
        raise ValueError("train.eval_every: no benchmark to measure: table.target and table.retention are empty; "
                         "set train.eval_benchmarks")
    protocol = get_protocol(cfg.eval.protocol)
    template = protocol.template if protocol else cfg.eval.template
    for bench in benchmarks:
        if template == "choice" and not get_benchmark(bench).multiple_choice:
            raise ValueError(f"train.eval_benchmarks: '{bench}' has no options, and the eval template is 'choice': "
                             "measure multiple-choice benchmarks only, or use another eval template")


def _check_rl(cfg: Config) -> None:
    """rl.start_from names base or a trained mode; rl.runs names planned runs; the reward fits the eval."""
    from asft.train.rl_settings import check_rl_batches  # no torch: the settings module only

    rl = cfg.rl
    starts = ["base", *cfg.modes]
    for start in rl.start_from:
        if start not in starts:
            raise ValueError(f"rl.start_from: '{start}' is not base or a mode of `modes`{did_you_mean(start, starts)}; "
                             f"known: {', '.join(starts)}")
    if len(set(rl.start_from)) != len(rl.start_from):
        raise ValueError(f"rl.start_from: a start is listed twice: {rl.start_from}")
    if rl.runs is not None:
        labels = [rl.run_label(algorithm, start) for start in rl.start_from for algorithm in rl.algorithms]
        for run in rl.runs:
            if run not in labels:
                raise ValueError(f"rl.runs: '{run}' is not a run of rl.algorithms from rl.start_from"
                                 f"{did_you_mean(run, labels)}; these are: {', '.join(labels) or 'none'}")
    check_rl_batches(rl.global_batch_size, rl.per_device_batch_size, rl.num_generations)
    for train_set in cfg.train_sets:
        if rl.algorithms and train_set.source != "embedded" and train_set.format != "alpaca":
            raise ValueError(f"rl.algorithms: train set '{train_set.name}' holds conversations (format "
                             f"{train_set.format}); rl reads a prompt and a gold answer from instruction/response rows")


def rl_reward_kind(cfg: Config) -> str:
    """rl.reward with `auto` resolved: letter when the eval scores multiple choice, else grade."""
    from asft.eval.protocols import get_protocol

    if cfg.rl.reward != "auto":
        return cfg.rl.reward
    protocol = get_protocol(cfg.eval.protocol)
    scoring = protocol.scoring if protocol else cfg.eval.scoring
    return "letter" if scoring == "choice_logprobs" else "grade"


def grading_policies(ev: EvalConfig) -> list[str]:
    """The grading policies of a config's generated answers: its own list, else its protocol's."""
    from asft.eval.protocols import get_protocol

    if ev.grading:
        return list(ev.grading)
    protocol = get_protocol(ev.protocol)
    return [protocol.grading if protocol else "strict"]


def _check_multiple_choice(ev: EvalConfig) -> None:
    """template `choice` and scoring `choice_logprobs` need benchmarks with options: say so before any job runs."""
    from asft.eval.benchmarks import available_benchmarks, get_benchmark
    from asft.eval.protocols import get_protocol

    protocol = get_protocol(ev.protocol)
    template, scoring = (protocol.template, protocol.scoring) if protocol else (ev.template, ev.scoring)
    if template == "choice" or scoring == "choice_logprobs":
        setting = f"template '{template}'" if template == "choice" else f"scoring '{scoring}'"
        field = f"eval.protocol: '{protocol.name}' ({setting})" if protocol else f"eval.{setting.replace(' ', ': ')}"
        for bench in ev.benchmarks:
            if bench in available_benchmarks() and not get_benchmark(bench).multiple_choice:
                choice = [b for b in available_benchmarks() if get_benchmark(b).multiple_choice]
                raise ValueError(f"{field} needs multiple-choice benchmarks, but benchmark '{bench}' has no options; "
                                 f"multiple-choice benchmarks: {', '.join(choice)}")
    if scoring == "choice_logprobs" and not protocol:
        if ev.n_samples != 1:
            raise ValueError(f"eval.n_samples: scoring 'choice_logprobs' gives one answer per problem, got "
                             f"{ev.n_samples}; set n_samples: 1")
        if ev.temperature != 0:
            raise ValueError(f"eval.temperature: scoring 'choice_logprobs' takes the top log-probabilities, it does "
                             f"not sample; set temperature: 0 (got {ev.temperature})")


def _deepspeed_bf16_master(path: str) -> bool | None:
    """Whether a DeepSpeed config keeps bf16 master weights and AdamW states; None if it cannot be read."""
    import json

    file = Path(path) if Path(path).is_absolute() or not (ROOT / path).exists() else ROOT / path
    try:
        bf16 = json.loads(file.read_text()).get("bf16") or {}
    except (OSError, ValueError, AttributeError):
        return None  # a missing or broken file is reported where it is used, with its own message
    return bool(bf16.get("bf16_master_weights_and_grads")) and bool(bf16.get("bf16_optimizer_states"))


def _check_precision_fits_deepspeed(train: TrainConfig) -> None:
    """bf16_pure steps bf16 weights; ZeRO keeps fp32 master weights unless its config says otherwise."""
    if not train.deepspeed or train.method != "full":
        return
    master_bf16 = _deepspeed_bf16_master(train.deepspeed)
    if master_bf16 is None:
        return
    if train.precision == "bf16_pure" and not master_bf16:
        raise ValueError(
            f"train.precision is bf16_pure but train.deepspeed ({train.deepspeed}) keeps fp32 master weights: set "
            "bf16.bf16_master_weights_and_grads and bf16.bf16_optimizer_states in it, or use "
            "config/deepspeed/zero3_bf16_pure.json"
        )
    if train.precision != "bf16_pure" and master_bf16:
        raise ValueError(
            f"train.deepspeed: {train.deepspeed} keeps bf16 master weights, which is train.precision bf16_pure, "
            f"not {train.precision}"
        )


#: A message that starts by naming a field: `modes: ...`, `model.id: ...`, `train_sets[x].repo: ...`,
#: `loss.hparams.sft-topk.keep: ...`, `train.precision is ...`; group `root` is its first part.
_NAMED_FIELD = re.compile(r"(?P<root>[A-Za-z_]\w*)(?:\[[^\]]*\]|\.[\w+-]+)*[: ]")


def _names_its_field(message: str, loc: tuple) -> bool:
    """Whether a validator's message already starts with its field (the formatter then adds no prefix).

    Validators name their field themselves: a model validator of the whole config has no location
    (loc ()), and one of a nested model knows its field better than pydantic's loc (train_sets.0).
    The message counts as naming it when it starts with the field the location starts with, or,
    without a location, with any top-level field.
    """
    match = _NAMED_FIELD.match(message)
    if not match:
        return False
    root = match.group("root")
    return root == str(loc[0]) if loc else root in Config.model_fields


def _format_error(error: ValidationError) -> str:
    """One `  <field>: <problem>` line per error, each naming its field once."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "value_error" and _names_its_field(message, loc):
            lines.append(f"  {message}")
        else:
            lines.append(f"  {'.'.join(str(part) for part in loc) or 'config'}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def parse_config(raw: Any, *, check_files: bool = True) -> Config:
    """Validate a config mapping; raise ConfigError naming each bad field.

    With `check_files` (the default, and what the Snakefile and `asft plan` use), the local files it
    names are checked too (asft.workflow.input_files): a missing file, bad bytes, bad JSON or a
    missing column stop here, at parse time, naming the file, the line and the column.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid configuration: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_error(error)) from None
    if check_files:
        from asft.workflow.input_files import input_file_problems  # it reads the typed config

        problems = input_file_problems(cfg)
        if problems:
            raise ConfigError("invalid configuration:\n" + "\n".join(f"  {problem}" for problem in problems))
    return cfg


def deep_merge(base: dict, override: dict) -> dict:
    """Merge like Snakemake merges --configfile files: dicts recursively, everything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None


EXTENDS = "extends"


def _plain(value: Any) -> Any:
    """Plain dicts and lists (Snakemake hands --config overrides over as immutable Maps)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def preset_layers(path: Path, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """A preset file and the presets it `extends` (paths relative to it), most general first."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle ({' -> '.join(str(p) for p in (*_seen, path))})")
    layer = read_yaml(path)
    if layer is None:
        return []
    if not isinstance(layer, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parents = layer.pop(EXTENDS, None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: 'extends' must be a file name or a list of file names")
    layers: list[tuple[Path, dict]] = []
    for parent in parents:
        layers += preset_layers(path.parent / parent, (*_seen, path))
    return [*layers, (path, layer)]


def layered_raw(paths: list[Path] | tuple[Path, ...], overrides: dict | None = None,
                *, with_default: bool = True) -> dict:
    """The merged raw config: the embedded default, each file with its `extends` chain, then overrides.

    Merging is Snakemake's (dicts recursively, lists and scalars replaced), so
    `--configfile config/paper_math.yaml` alone equals `--configfile config/paper.yaml config/paper_math.yaml`.
    """
    raw: dict = read_yaml(DEFAULT_CONFIG) if with_default else {}
    for path in paths:
        for _, layer in preset_layers(Path(path)):
            raw = deep_merge(raw, layer)
    if overrides:
        raw = deep_merge(raw, {k: _plain(v) for k, v in overrides.items() if k != EXTENDS})
    raw.pop(EXTENDS, None)
    return raw


def load_config(*paths: Path, with_default: bool = True, check_files: bool = True) -> Config:
    """Load and merge config files in order (the embedded default first), as the workflow does;
    `check_files` as in parse_config."""
    return parse_config(layered_raw(list(paths), with_default=with_default), check_files=check_files)


def json_schema() -> dict:
    """The JSON schema Snakemake validates against (written to config/schema.yaml)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
