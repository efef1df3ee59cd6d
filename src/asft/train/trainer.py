"""The shared trainer: every training rule runs `train_run`, whatever the loss mode.

`AnchoredTrainer` is a `transformers.Trainer` whose `compute_loss` calls the registered loss
(asft.train.losses). It never branches on the mode's name: it asks the mode whether it needs the
reference model and passes the reference's outputs along. The reference is the same model with
its LoRA adapters disabled (`disable_adapter()`), or, for full fine-tuning, a frozen copy that
DeepSpeed prepares like the policy (ZeRO-3 sharded, as TRL prepares DPO's reference).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from asft.train.chunked_loss import chunked_loss
from asft.train.checkpoints import last_complete_checkpoint
from asft.train.data import pad_collator
from asft.train.losses import LossOutput, compute_loss
from asft.train.reference import Reference, capture_hidden, prepare_reference, unwrap
from asft.train.modes import DEFAULT_KL_DIRECTION, get_mode
from asft.train.settings import TrainRuntime, TrainSettings

METRICS_FILE = "metrics.jsonl"
NORMALIZATIONS = ("upstream", "microbatch_mean", "global_tokens")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


@dataclass(frozen=True)
class LossSpec:
    """How the trainer computes its loss: the run's loss settings and how the loss is computed."""

    mode: str
    kl_weight: float = 0.0
    kl_direction: str = DEFAULT_KL_DIRECTION
    hparams: Mapping[str, float] = field(default_factory=dict)
    normalize: str = "microbatch_mean"  # or upstream, global_tokens (asft.train.settings.TrainSettings)
    implementation: str = "chunked"  # or full
    chunk_size: int = 256

    @classmethod
    def of(cls, settings: TrainSettings, *, implementation: str, chunk_size: int) -> LossSpec:
        return cls(mode=settings.mode, kl_weight=settings.kl_weight,
                   kl_direction=settings.kl_direction or DEFAULT_KL_DIRECTION, hparams=dict(settings.hparams),
                   normalize=settings.normalize, implementation=implementation, chunk_size=chunk_size)

    @property
    def needs_reference(self) -> bool:
        return get_mode(self.mode).needs_reference

    def loss_kwargs(self) -> dict[str, Any]:
        return {"kl_weight": self.kl_weight, "kl_direction": self.kl_direction, **self.hparams}


class AnchoredTrainer(Trainer):
    """HF Trainer with the ASFT loss family. `loss_spec` picks the mode; nothing else changes."""

    def __init__(self, *args: Any, loss_spec: LossSpec, reference: Reference | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_spec = loss_spec
        self.reference = reference
        if loss_spec.needs_reference and reference is None:
            raise ValueError(f"mode '{loss_spec.mode}' needs a reference model")
        if loss_spec.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown loss normalisation {loss_spec.normalize!r}; known: {', '.join(NORMALIZATIONS)}")
        # Whether the Trainer divides each micro-batch's loss by the accumulation steps:
        # - microbatch_mean: yes, so the step's gradient is the mean of the micro-batch means;
        # - upstream: no. train_v2.py returns micro-batch means and the HF Trainer, seeing a model that
        #   accepts loss kwargs (Qwen2, Llama), assumes they are already scaled: the gradient is their SUM;
        # - global_tokens: no, the loss is already divided by the whole accumulated batch's token count.
        self.loss_is_scaled_for_ga = loss_spec.normalize in ("upstream", "global_tokens")
        if loss_spec.normalize == "global_tokens":
            self.model_accepts_loss_kwargs = True  # so the Trainer counts num_items_in_batch for us
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

    def _loss_terms(self, model: nn.Module, inputs: Mapping[str, Tensor], num_items: Any) -> LossOutput:
        spec = self.loss_spec
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        if spec.implementation == "chunked":
            causal_lm = unwrap(model)
            ref_hidden = ref_head = None
            if spec.needs_reference:
                ref_hidden, ref_head = self.reference.hidden_and_head(model_inputs)
            with capture_hidden(causal_lm) as store:
                model(**model_inputs, logits_to_keep=1)  # through every wrapper; head on 1 position
            return chunked_loss(
                store["hidden"], causal_lm.get_output_embeddings().weight, labels, spec.mode,
                ref_hidden=ref_hidden, ref_head_weight=ref_head, num_items=num_items,
                chunk_size=spec.chunk_size, **spec.loss_kwargs(),
            )
        ref_logits = self.reference.logits(model_inputs) if spec.needs_reference else None
        logits = model(**model_inputs).logits
        return compute_loss(logits, labels, spec.mode, ref_logits=ref_logits, num_items=num_items,
                            **spec.loss_kwargs())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        num_items = num_items_in_batch if self.loss_spec.normalize == "global_tokens" else None
        terms = self._loss_terms(model, inputs, num_items)
        loss = terms.loss
        if num_items is not None and self.args.average_tokens_across_devices:
            # num_items counts every device's tokens and DDP averages gradients: undo the mean.
            loss = loss * self.accelerator.num_processes
        if not torch.isfinite(terms.loss.detach()):
            raise NonFiniteLossError(
                f"non-finite loss ({terms.loss.item()}) at step {self.state.global_step + 1}; "
                f"the last good checkpoint is kept in {self.args.output_dir}"
            )
        self._record(terms)
        return (loss, {"terms": terms}) if return_outputs else loss

    def _record(self, terms: LossOutput) -> None:
        for name in ("ce", "weighted_ce", "kl"):
            self._term_sums[name] = self._term_sums.get(name, 0.0) + float(getattr(terms, name))
        self._term_count += 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._term_count:
            for name, total in self._term_sums.items():
                logs[name] = round(total / self._term_count, 6)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, *args, **kwargs)



class MetricsWriter:
    """A TrainerCallback-compatible writer of per-step metrics (jsonl, one line per log)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def as_callback(self) -> TrainerCallback:
        writer = self

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and state.is_world_process_zero:
                    with open(writer.path, "a") as handle:
                        handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")

        return _Callback()

    def read(self) -> list[dict[str, Any]]:
        """Entries by step; a resumed run re-logs some steps, and the last entry wins."""
        if not self.path.exists():
            return []
        by_key: dict[tuple, dict] = {}
        for line in self.path.read_text().splitlines():
            entry = json.loads(line)
            by_key[(entry["step"], "loss" in entry)] = entry
        return [by_key[k] for k in sorted(by_key)]


def _deepspeed_stage(path: str | None) -> int:
    if not path:
        return 0
    return int(json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage", 0))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def weights_dtype(precision: str, method: str) -> torch.dtype:
    """The dtype the model is loaded in, which is the dtype AdamW steps for trained weights.

    fp32: fp32. bf16 (mixed): bf16 autocast over fp32 trainable weights, so full fine-tuning loads fp32
    (fp32 master weights and AdamW states) while LoRA loads the frozen base in bf16 (its adapters are
    fp32). bf16_pure: bf16 weights, gradients and AdamW states, as upstream full fine-tuning."""
    if precision == "fp32" or (precision in ("bf16", "bf16_mixed") and method == "full"):
        return torch.float32
    if precision in ("bf16", "bf16_mixed", "bf16_pure"):
        return torch.bfloat16
    raise ValueError(f"unknown train.precision {precision!r}; known: fp32, bf16, bf16_pure")


def _load_model(model_dir: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)


def train_run(
    settings: TrainSettings,
    runtime: TrainRuntime,
    *,
    model_dir: Path,
    dataset_dir: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one (mode, seed) run; resume from checkpoint_dir if a previous attempt was killed.

    Writes the final adapter (LoRA) or model (full) to `out_dir/model`, the per-step metrics to
    `out_dir/metrics.jsonl`, a curve plot, and returns summary stats.
    """
    from datasets import load_from_disk
    from transformers import AutoTokenizer, TrainingArguments, set_seed

    torch.set_num_threads(threads)
    seed = settings.seed
    set_seed(seed)
    bf16 = settings.precision != "fp32"
    dtype = weights_dtype(settings.precision, settings.method)
    stage3 = _deepspeed_stage(runtime.deepspeed) == 3
    implementation = "full" if stage3 else runtime.implementation
    spec = LossSpec.of(settings, implementation=implementation, chunk_size=runtime.chunk_size)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _load_model(model_dir, dtype)
    reference = None
    if settings.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = settings.lora
        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
        ))
        if spec.needs_reference:
            reference = Reference(model)
    elif spec.needs_reference:
        # The reference is never stepped: bf16 whenever training computes in bf16 (upstream loads it in bf16).
        frozen = _load_model(model_dir, torch.bfloat16 if bf16 else torch.float32).eval().requires_grad_(False)
        reference = Reference(model, frozen_copy=frozen)

    dataset = load_from_disk(str(dataset_dir))
    per_device = settings.per_device_batch_size
    accumulation = max(1, settings.global_batch_size // (per_device * _world_size()))
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        max_steps=settings.max_steps or -1,
        num_train_epochs=settings.epochs or 1.0,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.lr_scheduler,
        # A float below 1 is a ratio of the optimizer steps, rounded up (HF 5; HF 4's warmup_ratio).
        warmup_steps=settings.warmup_ratio if settings.warmup_ratio else settings.warmup_steps,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_betas[0],
        adam_beta2=settings.adam_betas[1],
        max_grad_norm=settings.max_grad_norm,
        bf16=bf16,
        seed=seed,
        data_seed=seed,
        logging_steps=runtime.logging_steps,
        save_strategy="steps",
        save_steps=runtime.save_steps,
        save_total_limit=1,
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        deepspeed=runtime.deepspeed,
        activation_checkpointing=runtime.gradient_checkpointing,
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsWriter(checkpoint_dir / METRICS_FILE)
    trainer = AnchoredTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=pad_collator(tokenizer.pad_token_id),
        processing_class=tokenizer, loss_spec=spec, reference=reference, callbacks=[metrics.as_callback()],
    )
    if reference is not None and reference.frozen_copy is not None:
        reference.frozen_copy = prepare_reference(reference.frozen_copy, trainer)
    resume = last_complete_checkpoint(checkpoint_dir)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    final = out_dir / "model"
    trainer.save_model(str(final))  # every rank takes part (ZeRO-3 gathers); rank 0 writes
    if not trainer.is_world_process_zero():
        return {}
    tokenizer.save_pretrained(str(final))
    entries = metrics.read()
    with open(out_dir / METRICS_FILE, "w") as handle:
        for entry in entries:
            handle.write(json.dumps(entry) + "\n")
    plot_curves(entries, out_dir / "curves.png", title=f"{settings.mode} seed {seed}")
    losses = [e["loss"] for e in entries if "loss" in e]
    return {
        "steps": trainer.state.global_step,
        "resumed_from": resume.name if resume else None,
        "train_runtime_s": round(result.metrics.get("train_runtime", math.nan), 2),
        "final_loss": losses[-1] if losses else None,
        "gradient_accumulation": accumulation,
        "loss_implementation": implementation,
    }


def plot_curves(entries: list[Mapping[str, Any]], path: Path, *, title: str) -> None:
    """Loss terms over steps (CE beside the weighted loss: DFT's is 10-100x smaller)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = [e for e in entries if "loss" in e]
    steps = [e["step"] for e in logged]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name in ("loss", "ce", "weighted_ce"):
        axes[0].plot(steps, [e.get(name, math.nan) for e in logged], label=name)
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[0].set_title(title)
    axes[1].plot(steps, [e.get("kl", math.nan) for e in logged], color="tab:red")
    axes[1].set_xlabel("step")
    axes[1].set_title("KL to reference")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
