"""The `rl` stage: GRPO or DAPO with TRL's GRPOTrainer, from the base model or from a trained run.

The prompts are the train set's rows (the data stage's `train.jsonl`) in the tokenize stage's template;
each row's gold is read from its response (asft.train.rewards: the grading policy's answer for math, the
option letter for multiple choice). Completions are rewarded by our own scoring, the policy is stepped by
TRL with the algorithm's settings (asft.train.rl_settings.ALGORITHMS), and the artifact holds full weights
in `model/` (what the generate stage reads, like a full training run's or a merge's), `metrics.jsonl`
(reward, loss, completion lengths per logged step) and `curves.png` (the reward over steps).

The start is always a full model: the base, a full fine-tuning run, or a LoRA run's merge. RL then
updates all its weights (no adapter): the paper's RL runs are full fine-tuning of LLaMA-2-7B.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asft.core.job import StageJob
from asft.train.rewards import gold_answer, gold_letter, grade_reward, letter_reward
from asft.train.rl_settings import RLRuntime, RLSettings

METRICS_FILE = "metrics.jsonl"
#: What `metrics.jsonl` keeps of TRL's log (its other keys are there too, under their TRL names).
REWARD_KEY = "reward"


@dataclass(frozen=True)
class RLPrompts:
    """The RL train set: prompts in the training template and the gold answer of each."""

    prompts: list[str]
    golds: list[str]
    skipped: int  # rows whose response gave no gold answer (left out)


def build_prompts(data_file: Path, settings: RLSettings, tokenizer: Any = None) -> RLPrompts:
    """Prompts and golds of the data stage's rows; a train set where no row gives a gold is an error naming
    the file and what was looked for."""
    from asft.train.data import INPUT, load_train_rows
    from asft.train.templates import training_prompt

    columns = load_train_rows(data_file)
    if "instruction" not in columns:
        raise ValueError(f"{data_file}: rl needs instruction/response rows (this train set holds conversations)")
    inputs = columns.get(INPUT) or [""] * len(columns["instruction"])
    policy = settings.reward.policy.name if settings.reward.policy else None
    prompts, golds, skipped = [], [], 0
    for instruction, response, input_text in zip(columns["instruction"], columns["response"], inputs):
        gold = gold_answer(response, policy) if settings.reward.kind == "grade" else gold_letter(response)
        if not gold:
            skipped += 1
            continue
        prompts.append(training_prompt(settings.template, instruction, tokenizer, input_text))
        golds.append(gold)
        if settings.max_prompts and len(prompts) == settings.max_prompts:
            break
    if not prompts:
        what = (f"an answer the grading policy '{policy}' extracts" if settings.reward.kind == "grade"
                else "an option letter (a response starting with 'B', 'B.' or '(B)', or saying 'the answer is B')")
        raise ValueError(f"{data_file}: no row's response gives {what}; rl rewards completions against that gold")
    return RLPrompts(prompts, golds, skipped)


def reward_function(settings: RLSettings):
    """TRL's reward function: the settings' reward of each completion against its row's gold."""
    kind = settings.reward.kind
    policy = settings.reward.policy.name if settings.reward.policy else None

    def correct(prompts: Sequence[str], completions: Sequence[str], gold: Sequence[str], **_: Any) -> list[float]:
        if kind == "grade":
            return [grade_reward(completion, answer, policy) for completion, answer in zip(completions, gold)]
        return [letter_reward(completion, answer) for completion, answer in zip(completions, gold)]

    return correct


def _world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def grpo_config(settings: RLSettings, runtime: RLRuntime, *, checkpoint_dir: Path, bars: bool) -> Any:
    """TRL's GRPOConfig from the typed settings: the one place the settings meet TRL's names."""
    from trl import GRPOConfig

    per_device = settings.per_device_batch_size
    return GRPOConfig(
        output_dir=str(checkpoint_dir),
        loss_type=settings.loss_type,
        beta=settings.beta,
        epsilon=settings.epsilon,
        epsilon_high=settings.epsilon_high,
        mask_truncated_completions=settings.mask_truncated_completions,
        scale_rewards=settings.scale_rewards,
        num_iterations=settings.num_iterations,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of the optimizer steps (HF 5)
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        max_steps=settings.max_steps or -1,
        num_train_epochs=settings.epochs or 1.0,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=max(1, settings.global_batch_size // (per_device * _world_size())),
        bf16=settings.precision == "bf16",
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=runtime.logging_steps,
        save_strategy="steps",
        save_steps=runtime.save_steps,
        save_total_limit=1,
        report_to=[],
        activation_checkpointing=runtime.gradient_checkpointing,
        use_vllm=runtime.use_vllm,
        vllm_mode="colocate",
        disable_tqdm=not bars,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def rl_run(settings: RLSettings, runtime: RLRuntime, *, start_dir: Path, tokenizer_dir: Path, data_file: Path,
           out_dir: Path, checkpoint_dir: Path, threads: int = 1, progress: bool = True,
           name: str = "rl") -> dict[str, Any]:
    """Run GRPO/DAPO from the model in `start_dir` and write `model/`, metrics.jsonl and curves.png into
    `out_dir`; a killed run resumes from its newest complete checkpoint in `checkpoint_dir`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import GRPOTrainer

    from asft.eval.cost_table import measured_cost, reset_peak_memory
    from asft.train.checkpoints import last_complete_checkpoint
    from asft.train.trainer import MetricsWriter, ProgressLines, save_final

    reset_peak_memory()
    torch.set_num_threads(threads)
    set_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(start_dir if (start_dir / "tokenizer_config.json").is_file()
                                              else tokenizer_dir)
    data = build_prompts(data_file, settings, tokenizer)
    dataset = Dataset.from_dict({"prompt": data.prompts, "gold": data.golds})
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(start_dir, dtype=dtype)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsWriter(checkpoint_dir / METRICS_FILE)
    bars = False
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_function(settings)],
                          args=grpo_config(settings, runtime, checkpoint_dir=checkpoint_dir, bars=bars),
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[metrics.as_callback()])
    if progress:
        trainer.add_callback(ProgressLines())
    resume = last_complete_checkpoint(checkpoint_dir)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    cost = measured_cost()

    entries = save_final(trainer, tokenizer, metrics, out_dir)
    if entries is None:
        return {}
    plot_rewards(entries, out_dir / "curves.png", title=name)
    rewards = [e[REWARD_KEY] for e in entries if REWARD_KEY in e]
    return {
        "steps": trainer.state.global_step,
        "resumed_from": resume.name if resume else None,
        "prompts": len(data.prompts),
        "rows_without_gold": data.skipped,
        "train_runtime_s": round(result.metrics.get("train_runtime", math.nan), 2),
        **reward_summary(rewards),
        **cost,
    }


def reward_summary(rewards: Sequence[float]) -> dict[str, Any]:
    """The mean reward of the first and the last quarter of the logged steps (how far RL moved it)."""
    if not rewards:
        return {"reward_first": None, "reward_last": None}
    quarter = max(1, len(rewards) // 4)
    return {"reward_first": round(sum(rewards[:quarter]) / quarter, 4),
            "reward_last": round(sum(rewards[-quarter:]) / quarter, 4)}


def plot_rewards(entries: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> None:
    """The mean reward (± its std over the batch's completions) and the mean completion length per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = [e for e in entries if REWARD_KEY in e]
    steps = [e["step"] for e in logged]
    fig, (rewards, lengths) = plt.subplots(1, 2, figsize=(9, 3.4))
    mean = [e[REWARD_KEY] for e in logged]
    std = [e.get("reward_std", 0.0) for e in logged]
    rewards.plot(steps, mean, color="tab:green")
    rewards.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                         color="tab:green", alpha=0.15)
    rewards.set_xlabel("step")
    rewards.set_ylabel("mean reward")
    rewards.set_title("reward")
    lengths.plot(steps, [e.get("completions/mean_length", math.nan) for e in logged], color="tab:blue")
    lengths.set_xlabel("step")
    lengths.set_ylabel("tokens")
    lengths.set_title("completion length")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_rl_stage(job: StageJob) -> dict[str, Any]:
    """The `rl` stage's runner (asft.workflow.stages): from `start` (a trained run) or the base model."""
    from asft.train.data import TRAIN_FILE

    labels = job.labels
    name = f"{labels.get('mode', 'rl')} seed {labels.get('seed')} on {labels.get('train_set')}"
    start = job.weights("start") if "start" in job.parents else job.weights("model")
    return rl_run(job.settings, job.runtime, start_dir=start, tokenizer_dir=job.weights("model"),
                  data_file=job.parents["data"] / TRAIN_FILE, out_dir=job.out, checkpoint_dir=job.resume_dir,
                  threads=job.threads, name=name)
