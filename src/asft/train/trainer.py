"""The shared trainer: every training rule runs `train_run`, whatever the loss mode.

`AnchoredTrainer` is a `transformers.Trainer` whose `compute_loss` calls the registered loss
(asft.train.losses). It never branches on the mode's name: it asks the mode whether it needs the
reference model and passes the reference's outputs along. The reference is the same model with
its LoRA adapters disabled (`disable_adapter()`), or, for full fine-tuning, a frozen copy that
DeepSpeed prepares like the policy (ZeRO-3 sharded, as TRL prepares DPO's reference).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback

from asft.train.chunked_loss import chunked_loss
from asft.train.checkpoints import last_complete_checkpoint
from asft.train.data import pad_collator
from asft.train.losses import LossOutput, compute_loss
from asft.train.reference import Reference, capture_hidden, prepare_reference, unwrap
from asft.train.modes import DEFAULT_KL_DIRECTION, get_mode
from asft.train.settings import TrainRuntime, TrainSettings
from asft.train.tracking import (TENSORBOARD_DIR, check_report_to, environment, run_name, run_tags,
                                 tracker_environment, trackio_project)

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

    @property
    def computes_kl(self) -> bool:
        """Whether the loss has a KL term: a mode without one logs no `kl` (missing, not 0)."""
        return get_mode(self.mode).uses_kl

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
        for name in ("ce", "weighted_ce", "kl") if self.loss_spec.computes_kl else ("ce", "weighted_ce"):
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
            # a step's summary (0), loss (1) and evaluation point (2, train.eval_every) are distinct entries
            kind = 1 if "loss" in entry else 2 if any(k.startswith("eval/") for k in entry) else 0
            by_key[(entry["step"], kind)] = entry
        return [by_key[k] for k in sorted(by_key)]


#: A progress line at the first and the last logged step, and between them at a logging step once
#: this fraction of the run or this many seconds have passed since the last line.
PROGRESS_EVERY_FRACTION = 0.05
PROGRESS_EVERY_SECONDS = 120.0


#: (log key, name in the line, format) of what a progress line shows, in order
_PROGRESS_FIELDS = (("loss", "loss", ".4g"), ("ce", "ce", ".4g"), ("kl", "kl", ".3g"),
                    ("learning_rate", "lr", ".2g"), ("grad_norm", "gnorm", ".3g"))


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def _rate(steps: int, seconds: float) -> str:
    if steps <= 0 or seconds <= 0:
        return "- it/s"
    per_second = steps / seconds
    return f"{per_second:.3g} it/s" if per_second >= 1 else f"{1 / per_second:.3g} s/it"


def progress_line(step: int, total: int, logs: Mapping[str, Any], *, steps_done: int, seconds: float) -> str:
    """`step 40/120 (33%) loss 1.234 ce 2.345 kl 0.0123 lr 4.1e-05 2.3 it/s eta 0:00:35`: the step, the
    loss terms averaged over the steps since the previous log (no `kl` for a mode without one), the
    learning rate, the speed of this attempt and the time left at that speed."""
    parts = [f"step {step}/{total} ({100 * step // max(total, 1)}%)"]
    for name, shown, fmt in _PROGRESS_FIELDS:
        if isinstance(logs.get(name), (int, float)):
            parts.append(f"{shown} {logs[name]:{fmt}}")
    parts.append(_rate(steps_done, seconds))
    if steps_done > 0 and seconds > 0:
        parts.append(f"eta {_duration((total - step) * seconds / steps_done)}")
    return " ".join(parts)


class ProgressLines(TrainerCallback):
    """Training progress as plain lines (a log file reads line by line; no carriage returns), in place of
    the HF Trainer's raw log dicts; rank 0 only."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self.write = write or (lambda line: print(line, flush=True))
        self.start = 0.0
        self.start_step = 0
        self.printed_step: int | None = None
        self.printed_at = 0.0
        self.latest: Mapping[str, Any] = {}

    def _line(self, state) -> str:
        return progress_line(state.global_step, state.max_steps, self.latest,
                             steps_done=state.global_step - self.start_step, seconds=time.monotonic() - self.start)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.start_step = time.monotonic(), state.global_step
        self.printed_step, self.printed_at = None, self.start
        if state.is_world_process_zero:
            resumed = f", resuming after step {state.global_step}" if state.global_step else ""
            self.write(f"[asft] training {state.max_steps} steps, a progress line at least every "
                       f"{max(1, math.ceil(PROGRESS_EVERY_FRACTION * state.max_steps))} steps or "
                       f"{PROGRESS_EVERY_SECONDS:g} s{resumed}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.latest = dict(logs)
        now, step = time.monotonic(), state.global_step
        every = max(1, math.ceil(PROGRESS_EVERY_FRACTION * state.max_steps))
        due = (self.printed_step is None or step >= state.max_steps or step - self.printed_step >= every
               or now - self.printed_at >= PROGRESS_EVERY_SECONDS)
        if due:
            self.write(self._line(state))
            self.printed_step, self.printed_at = step, now

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.latest and self.printed_step != state.global_step:
            self.write(self._line(state))
        seconds = time.monotonic() - self.start
        done = state.global_step - self.start_step
        final = f", last loss {self.latest['loss']:.4g}" if "loss" in self.latest else ""
        self.write(f"[asft] trained {done} steps in {_duration(seconds)} ({_rate(done, seconds)}){final}")


class _BarWithoutDicts(ProgressCallback):
    """HF's ProgressCallback on a terminal: its tqdm bar, not its raw log dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class _OnlyOnce(logging.Filter):
    """Lets each distinct message through once (the library loggers' repeated warnings)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextmanager
def readable_output(*, bars: bool) -> Iterator[None]:
    """Each warning once (Python warnings and the transformers/peft/accelerate loggers'), and without
    `bars` no tqdm bars from transformers or datasets (loading weights, mapping): a log file that is not
    a terminal reads line by line."""
    from transformers.utils import logging as hf_logging

    once = _OnlyOnce()
    handlers = [handler for name in ("transformers", "peft", "accelerate", "datasets", "torch")
                for handler in logging.getLogger(name).handlers] + logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(once)
    hf_bars = hf_logging.is_progress_bar_enabled()
    if not bars:
        hf_logging.disable_progress_bar()
    try:
        import datasets

        datasets_bars = datasets.is_progress_bar_enabled()
        if not bars:
            datasets.disable_progress_bars()
    except (ImportError, AttributeError):
        datasets_bars = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once")
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(once)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if datasets_bars:
            import datasets

            datasets.enable_progress_bars()


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
    labels: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one (mode, seed) run; resume from checkpoint_dir if a previous attempt was killed.

    Writes the final adapter (LoRA) or model (full) to `out_dir/model`, the per-step metrics to
    `out_dir/metrics.jsonl`, a curve plot, TensorBoard event files to `out_dir/tensorboard/` when
    `runtime.report_to` names it, and returns summary stats. `labels` (the plan's train set, mode,
    seed) name the run for the trackers and the plot. With `progress`, progress goes to stdout: a tqdm
    bar on a terminal, plain lines otherwise (a rule's log file).
    """
    trackers = check_report_to(runtime.report_to)
    labels = dict(labels or {})
    tags = run_tags(labels, mode=settings.mode, seed=settings.seed)
    bars = progress and sys.stderr.isatty()
    with readable_output(bars=bars), environment(tracker_environment(trackers, tags)):
        return _train(settings, runtime, model_dir=model_dir, dataset_dir=dataset_dir, out_dir=out_dir,
                      checkpoint_dir=checkpoint_dir, threads=threads, progress=progress, bars=bars,
                      trackers=trackers, name=run_name(labels, mode=settings.mode, seed=settings.seed))


def _tensorboard_into(trainer: Trainer, folder: Path, resumed_step: int) -> None:
    """HF's TensorBoard callback writes into `folder`; after a resume, TensorBoard drops the events the
    killed attempt logged past the checkpoint (they are logged again)."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(folder)
            if resumed_step and trainer.is_world_process_zero():
                callback.tb_writer = callback._SummaryWriter(log_dir=str(folder), purge_step=resumed_step + 1)


def _add_dynamics(trainer: Trainer, settings: TrainSettings, reference: Reference | None, tokenizer: Any,
                  model_dir: Path, bf16: bool, progress: bool, bars: bool) -> None:
    """train.eval_every (asft.eval.dynamics): the KL's base is the loss's reference where the mode has one; else
    the LoRA model under disable_adapter(), or for full fine-tuning the base weights loaded once (a frozen
    copy beside the policy, as a KL mode's reference)."""
    from asft.eval.dynamics import Dynamics, dynamics_callback

    if reference is None:
        frozen = None
        if settings.method != "lora":
            frozen = _load_model(model_dir, torch.bfloat16 if bf16 else torch.float32).eval().requires_grad_(False)
            frozen = frozen.to(trainer.args.device)
        reference = Reference(trainer.model, frozen_copy=frozen)
    if bars:
        from tqdm.auto import tqdm

        write = tqdm.write
    else:
        write = (lambda line: print(line, flush=True)) if progress else None
    dynamics = Dynamics(settings.dynamics, tokenizer, batch_size=max(8, settings.per_device_batch_size))
    trainer.add_callback(dynamics_callback(trainer, dynamics, reference.hidden_and_head, write))


def _train(settings: TrainSettings, runtime: TrainRuntime, *, model_dir: Path, dataset_dir: Path, out_dir: Path,
           checkpoint_dir: Path, threads: int, progress: bool, bars: bool, trackers: list[str],
           name: str) -> dict[str, Any]:
    from datasets import load_from_disk
    from transformers import AutoTokenizer, TrainingArguments, set_seed

    from asft.eval.cost_table import measured_cost, reset_peak_memory

    reset_peak_memory()  # peak_gpu_memory_gb is this run's (models, optimizer, activations): docs/cost.md
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
        report_to=trackers,
        run_name=name,
        project=trackio_project(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        deepspeed=runtime.deepspeed,
        activation_checkpointing=runtime.gradient_checkpointing,
        disable_tqdm=not bars,
        use_cpu=not torch.cuda.is_available(),
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsWriter(checkpoint_dir / METRICS_FILE)
    trainer = AnchoredTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=pad_collator(tokenizer.pad_token_id),
        processing_class=tokenizer, loss_spec=spec, reference=reference, callbacks=[metrics.as_callback()],
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts: the progress lines say it readably
    if bars:
        from tqdm.auto import tqdm

        trainer.pop_callback(ProgressCallback)
        trainer.add_callback(_BarWithoutDicts())
        trainer.add_callback(ProgressLines(write=tqdm.write))
    elif progress:
        trainer.add_callback(ProgressLines())
    if reference is not None and reference.frozen_copy is not None:
        reference.frozen_copy = prepare_reference(reference.frozen_copy, trainer)
    if settings.dynamics is not None:
        _add_dynamics(trainer, settings, reference, tokenizer, model_dir, bf16, progress, bars)
    resume = last_complete_checkpoint(checkpoint_dir)
    if "tensorboard" in trackers:
        if resume is None and trainer.is_world_process_zero():  # events of an attempt that left no checkpoint
            shutil.rmtree(checkpoint_dir / TENSORBOARD_DIR, ignore_errors=True)
        _tensorboard_into(trainer, checkpoint_dir / TENSORBOARD_DIR, int(resume.name.split("-")[-1]) if resume else 0)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    cost = measured_cost()  # before saving (a ZeRO-3 save gathers); every rank takes part, rank 0 reports

    entries = save_final(trainer, tokenizer, metrics, out_dir)
    if entries is None:
        return {}
    if "tensorboard" in trackers:
        shutil.copytree(checkpoint_dir / TENSORBOARD_DIR, out_dir / TENSORBOARD_DIR, dirs_exist_ok=True)
    plot_curves(entries, out_dir / "curves.png", title=name)
    if settings.dynamics is not None:
        from asft.eval.dynamics import plot_dynamics

        plot_dynamics(entries, out_dir / "dynamics.png", title=name)
    losses = [e["loss"] for e in entries if "loss" in e]
    return {
        "steps": trainer.state.global_step,
        "resumed_from": resume.name if resume else None,
        "train_runtime_s": round(result.metrics.get("train_runtime", math.nan), 2),
        "final_loss": losses[-1] if losses else None,
        "gradient_accumulation": accumulation,
        "loss_implementation": implementation,
        **cost,  # peak_gpu_memory_gb (GPU only), peak_rss_gb, device, num_devices
    }


def save_final(trainer: Trainer, tokenizer: Any, metrics: MetricsWriter, out_dir: Path) -> list[dict[str, Any]] | None:
    """The final model and tokenizer to `out_dir/model` and the per-step metrics to `out_dir/metrics.jsonl`;
    returns those metrics on rank 0, None on the other ranks (which only take part in the save)."""
    final = out_dir / "model"
    trainer.save_model(str(final))  # every rank takes part (ZeRO-3 gathers); rank 0 writes
    if not trainer.is_world_process_zero():
        return None
    tokenizer.save_pretrained(str(final))
    entries = metrics.read()
    with open(out_dir / METRICS_FILE, "w") as handle:
        for entry in entries:
            handle.write(json.dumps(entry) + "\n")
    return entries


def plot_curves(entries: list[Mapping[str, Any]], path: Path, *, title: str) -> None:
    """The run's loss terms over steps (CE beside the weighted loss: DFT's is 10-100x smaller) and, for a
    mode with a KL term only, the KL to the reference; the title names the run (mode, seed, train set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = [e for e in entries if "loss" in e]
    steps = [e["step"] for e in logged]
    with_kl = any("kl" in e for e in logged)
    fig, axes = plt.subplots(1, 2 if with_kl else 1, figsize=(9, 3.4) if with_kl else (5, 3.4), squeeze=False)
    losses = axes[0][0]
    labels = {"loss": "loss (optimised)", "ce": "CE", "weighted_ce": "weighted CE"}
    for name in ("loss", "ce", "weighted_ce"):
        if any(name in e for e in logged):
            losses.plot(steps, [e.get(name, math.nan) for e in logged], label=labels[name])
    losses.set_xlabel("step")
    losses.set_ylabel("loss per response token")
    losses.set_title("loss")
    losses.legend()
    if with_kl:
        kl = axes[0][1]
        kl.plot(steps, [e.get("kl", math.nan) for e in logged], color="tab:red")
        kl.set_xlabel("step")
        kl.set_ylabel("KL per response token")
        kl.set_title("KL to the reference")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
