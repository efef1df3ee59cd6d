"""Experiment trackers of a training run (`train.report_to`): which exist, what they need, what they are told.

The HF Trainer does the logging (`TrainingArguments(report_to=...)`); this module only checks that a
tracker's package is installed (a config error otherwise, naming the field and the `pip install`),
names the run from its labels (train set, mode, seed) and sets the environment variables a tracker
reads its project and tags from, each only where the user has not set it. No torch import: the
config validates `train.report_to` at parse time. See docs/tracking.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: tracker name -> (the module it needs, the package to `pip install`)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "trackio": ("trackio", "trackio"),
}
#: what `train.report_to` accepts: `none` (alone) or trackers
REPORT_TO_NAMES = ("none", *TRACKERS)
#: The folder of TensorBoard event files inside a training run's artifact (and its resume folder).
TENSORBOARD_DIR = "tensorboard"
#: The project W&B, MLflow (its experiment) and trackio file runs under unless their variable says otherwise.
DEFAULT_PROJECT = "asft"


def check_report_to(names: Iterable[str], field: str = "train.report_to") -> list[str]:
    """The trackers to report to (`none` removed); ValueError naming `field` for an unknown name, `none`
    beside a tracker, a repeat, or a tracker whose package is not installed."""
    names = list(names)
    for name in names:
        if name not in REPORT_TO_NAMES:
            raise ValueError(f"{field}: unknown tracker {name!r}; known: {', '.join(REPORT_TO_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{field}: a tracker is listed twice: {names}")
    if "none" in names and len(names) > 1:
        raise ValueError(f"{field}: 'none' means no tracker; list it alone, or list only trackers")
    trackers = [name for name in names if name != "none"]
    missing = [name for name in trackers if importlib.util.find_spec(TRACKERS[name][0]) is None]
    if missing:
        packages = " ".join(TRACKERS[name][1] for name in missing)
        raise ValueError(
            f"{field}: {', '.join(missing)} asked for, but its package is not installed; run `pip install "
            f"{packages}` in the training environment (envs/train.yaml under --sdm conda), or remove it from "
            f"{field}"
        )
    return trackers


def run_name(labels: Mapping[str, Any], *, mode: str, seed: int) -> str:
    """`asft seed 1 on numina_cot_10k`: the run as the tracker lists it (the labels' mode and seed win)."""
    name = f"{labels.get('mode', mode)} seed {labels.get('seed', seed)}"
    train_set = labels.get("train_set")
    return f"{name} on {train_set}" if train_set not in (None, "", "-") else name


def run_tags(labels: Mapping[str, Any], *, mode: str, seed: int) -> dict[str, str]:
    """The run's tags: mode, seed and train set (where known)."""
    tags = {"mode": str(labels.get("mode", mode)), "seed": str(labels.get("seed", seed))}
    if labels.get("train_set") not in (None, "", "-"):
        tags["train_set"] = str(labels["train_set"])
    return tags


def tracker_environment(trackers: Iterable[str], tags: Mapping[str, str],
                        environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables to set for these trackers: the project (unless set) and the run's tags, added to
    any the user gave (W&B: WANDB_TAGS, comma-separated; MLflow: MLFLOW_TAGS, a JSON object)."""
    trackers = set(trackers)
    env: dict[str, str] = {}
    if "wandb" in trackers:
        env["WANDB_PROJECT"] = environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        given = [tag for tag in environ.get("WANDB_TAGS", "").split(",") if tag]
        ours = [f"{key}:{value}" for key, value in tags.items()]
        env["WANDB_TAGS"] = ",".join(dict.fromkeys(given + ours))
    if "mlflow" in trackers:
        env["MLFLOW_EXPERIMENT_NAME"] = environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        given = json.loads(environ["MLFLOW_TAGS"]) if environ.get("MLFLOW_TAGS") else {}
        env["MLFLOW_TAGS"] = json.dumps({**tags, **given})
    return env


def trackio_project(environ: Mapping[str, str] = os.environ) -> str:
    """trackio's project: TRACKIO_PROJECT, else `asft` (HF passes TrainingArguments.project to trackio)."""
    return environ.get("TRACKIO_PROJECT") or DEFAULT_PROJECT


@contextmanager
def environment(updates: Mapping[str, str]) -> Iterator[None]:
    """Set these variables for the block, then put back what was there."""
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
