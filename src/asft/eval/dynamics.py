"""Training dynamics (the paper's Figure 1): the model measured while it trains.

With `train.eval_every: N` the trainer measures its current model at step 0, every N optimizer steps and
at the last step (`DynamicsCallback`):

- the accuracy on each benchmark of `train.eval_benchmarks` (its first `train.eval_limit` problems),
  through the evaluation stages' own code: a multiple-choice benchmark by the letter with the best
  next-token log-probability after the `choice` prompt (`next_token_top_with` + `choose_letter`, as
  `generate`/`score` with scoring `choice_logprobs`), another by one greedy completion with the eval
  template (`generate_with`) graded by the config's first grading policy (`grade_many`);
- the KL from the base: mean per-token KL(base || model) on held-out gold text (`drift_between`, the
  eval stage's drift), on the first of those benchmarks that has reference solutions; where none has
  (all multiple choice, e.g. the medical suite), on the first one's gold answers written as
  `<letter>. <option>` after its prompt. The base is the policy's reference: the LoRA model under
  `disable_adapter()`, the frozen copy the trainer holds for a KL mode's full fine-tuning, or the base
  weights loaded once for a full fine-tuning mode without one.

Each point is one entry of the run's `metrics.jsonl`, beside the loss:
`{"step": 40, "eval/embedded_mul/accuracy": 61.2, "eval/kl_from_base": 0.031, "eval/seconds": 1.4}`,
sent to the trackers (train.report_to) too, and `plot_dynamics` draws them into `dynamics.png`.
Only the main process measures (other processes wait at their next gradient all-reduce); DeepSpeed is
refused at config time (ZeRO-3 shards the weights that generation needs).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asft.eval.benchmarks import Problem, load_problems
from asft.eval.drift import HiddenAndHead, drift_between, hidden_and_head
from asft.eval.generation import Sampling, generate_with, next_token_top_with
from asft.eval.score import UPSTREAM_LETTERS, choose_letter, score
from asft.train.settings import DynamicsSettings, ProbeSettings
from asft.train.templates import STOP_STRINGS, problem_prompt

#: metrics.jsonl keys of an evaluation point
KL_KEY = "eval/kl_from_base"
SECONDS_KEY = "eval/seconds"
PREFIX = "eval/"


def accuracy_key(benchmark: str) -> str:
    return f"{PREFIX}{benchmark}/accuracy"


def is_eval_entry(entry: Mapping[str, Any]) -> bool:
    return any(str(name).startswith(PREFIX) for name in entry)


@dataclass(frozen=True)
class Probe:
    """One benchmark's problems and prompts, read once."""

    settings: ProbeSettings
    problems: list[Problem]
    prompts: list[str]

    @property
    def name(self) -> str:
        return self.settings.benchmark.name


def _kl_text(probes: Sequence[Probe]) -> tuple[list[Problem], str]:
    """The held-out text of the KL from the base, and its template (see the module's docstring)."""
    for probe in probes:
        rows = [p for p in probe.problems if p.solution]
        if rows:
            return rows, probe.settings.template
    first = probes[0]
    rows = [dataclasses.replace(p, solution=f"{c.gold}. {c.options[c.letters.index(c.gold)]}")
            for p in first.problems if (c := p.choices) is not None and c.gold in c.letters]
    return rows, first.settings.template


class Dynamics:
    """The measurements of one run: its benchmarks' problems and prompts, read once at the start."""

    def __init__(self, settings: DynamicsSettings, tokenizer: Any, *, batch_size: int = 64) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.probes = []
        for probe in settings.benchmarks:
            problems = load_problems(probe.benchmark.name, probe.context.model_dump(exclude_none=True), settings.limit)
            self.probes.append(Probe(probe, problems, [problem_prompt(probe.template, p, tokenizer) for p in problems]))
        self.kl_problems, self.kl_template = _kl_text(self.probes)

    def accuracy(self, probe: Probe, model: Any) -> float:
        """The benchmark's accuracy (%) as its score stage computes it, for one greedy answer per problem."""
        settings = probe.settings
        if settings.scoring == "choice_logprobs":
            tokens = next_token_top_with(model, self.tokenizer, probe.prompts,
                                         batch_size=self.batch_size, progress=False)
            correct = []
            for problem, token in zip(probe.problems, tokens, strict=True):
                letters = problem.choices.letters if problem.choices else UPSTREAM_LETTERS
                gold = problem.choices.gold if problem.choices else problem.gold
                choice = choose_letter([(text, logprob) for _, text, logprob in token.top], token.completion, letters)
                correct.append([choice.letter == gold])
        else:
            from asft.eval.grading import grade_many

            sampling = Sampling(n=1, temperature=0.0, max_new_tokens=settings.max_new_tokens,
                                stop=tuple(STOP_STRINGS[settings.template] + list(settings.stop)))
            completions = generate_with(model, self.tokenizer, probe.prompts, sampling, batch_size=self.batch_size,
                                        progress=False)
            verdicts = grade_many(((samples[0], problem.gold) for samples, problem in zip(completions, probe.problems)),
                                  policy=settings.policy.name if settings.policy else "strict")
            correct = [[bool(v)] for v in verdicts]
        return score(correct)["accuracy"]

    @torch.no_grad()
    def measure(self, model: Any, base: HiddenAndHead | None) -> dict[str, float]:
        """One evaluation point of `model` (put in eval mode meanwhile; torch's random state is left as it
        was, so measuring changes nothing in training); without `base`, no KL (missing, not 0)."""
        started = time.monotonic()
        training = model.training
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                point = {accuracy_key(probe.name): round(self.accuracy(probe, model), 4) for probe in self.probes}
                if base is not None and self.kl_problems:
                    device = next(model.parameters()).device
                    limit = getattr(getattr(model, "config", None), "max_position_embeddings", 4096)
                    kl = drift_between(hidden_and_head(model), base, self.tokenizer, self.kl_problems,
                                       template=self.kl_template, device=device, max_length=limit,
                                       batch_size=self.batch_size, what="the KL from the base")
                    if kl is not None:
                        point[KL_KEY] = round(max(kl, 0.0), 8)
        finally:
            model.train(training)
        point[SECONDS_KEY] = round(time.monotonic() - started, 3)
        return point


def due(step: int, every: int, max_steps: int) -> bool:
    """Whether step `step` is an evaluation point: the first, every `every`-th and the last."""
    return step == 0 or step % every == 0 or step == max_steps


def eval_line(step: int, point: Mapping[str, float]) -> str:
    parts = [f"{name[len(PREFIX):].removesuffix('/accuracy')} {value:.1f}" for name, value in point.items()
             if name.endswith("/accuracy")]
    if KL_KEY in point:
        parts.append(f"KL from base {point[KL_KEY]:.4g}")
    return f"[asft] eval at step {step}: {', '.join(parts)} ({point.get(SECONDS_KEY, 0):.1f} s)"


def dynamics_callback(trainer: Any, dynamics: Dynamics, base: HiddenAndHead | None,
                      write: Callable[[str], None] | None = None) -> Any:
    """A TrainerCallback measuring `trainer.model` at step 0 (not when resuming: the point of the resumed step
    was logged before its checkpoint was saved), every `every` steps and at the last; the point is logged
    through `trainer.log` (metrics.jsonl, trackers) on the main process only."""
    from transformers import TrainerCallback

    every = dynamics.settings.every

    class DynamicsCallback(TrainerCallback):
        def _point(self, state, control) -> None:
            if not state.is_world_process_zero:
                return
            point = dynamics.measure(trainer.model, base)
            should_log = control.should_log
            trainer.log(dict(point))
            control.should_log = should_log  # on_log clears it: the step's loss is still to be logged
            if write is not None:
                write(eval_line(state.global_step, point))

        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                self._point(state, control)

        def on_step_end(self, args, state, control, **kwargs):
            if due(state.global_step, every, state.max_steps):
                self._point(state, control)

    return DynamicsCallback()


def plot_dynamics(entries: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> None:
    """Accuracy per benchmark and the KL from the base against the optimizer step (one run's Figure 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((e for e in entries if is_eval_entry(e)), key=lambda e: e["step"])
    names = list(dict.fromkeys(k for e in points for k in e if k.startswith(PREFIX) and k.endswith("/accuracy")))
    with_kl = any(KL_KEY in e for e in points)
    fig, axes = plt.subplots(1, 2 if with_kl else 1, figsize=(9, 3.4) if with_kl else (5, 3.4), squeeze=False)
    acc = axes[0][0]
    steps = [e["step"] for e in points]
    for name in names:
        acc.plot(steps, [e.get(name, math.nan) for e in points], marker="o", markersize=3,
                 label=name[len(PREFIX):].removesuffix("/accuracy"))
    acc.set_xlabel("optimizer step")
    acc.set_ylabel("accuracy (%)")
    acc.set_title("accuracy")
    if names:
        acc.legend()
    if with_kl:
        kl = axes[0][1]
        kl.plot(steps, [e.get(KL_KEY, math.nan) for e in points], marker="o", markersize=3, color="tab:red")
        kl.set_xlabel("optimizer step")
        kl.set_ylabel("KL(base ‖ model) per token")
        kl.set_title("KL from the base")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
