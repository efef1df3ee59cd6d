"""Shared fixtures: a tiny pre-trained embedded base model and its tokenized mul train set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from asft.train.settings import EmbeddedData, TokenizeSettings, TrainRuntime, TrainSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny embedded base model (a few pre-training steps: enough to be a real model)."""
    import torch

    from asft.embedded.pretrain import pretrain
    from asft.embedded.spec import EmbeddedBaseSpec

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("base")
    pretrain(EmbeddedBaseSpec(steps=30, batch_size=16, warmup=3, hidden_size=64, intermediate_size=128), out,
             progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory) -> Path:
    """The tiny workflow (tests/configs/tiny.yaml) run once through Snakemake: a working directory whose
    results later tests start from (copy it with `copy_workflow`; test_workflow's own tests use it as is)."""
    from tests.snakemake_runs import TINY, output, smk

    workdir = tmp_path_factory.mktemp("workflow")
    result = smk(workdir, "--configfile", str(TINY), "--cores", "2")
    assert result.returncode == 0, output(result)[-4000:]
    return workdir


def copy_workflow(source: Path, target: Path) -> Path:
    """A copy of a finished working directory (results, Snakemake's metadata, mtimes kept): a run there with a
    config that shares the tiny run's prefix runs only what is new."""
    import shutil

    shutil.copytree(source, target, symlinks=True)
    return target


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_base) -> Path:
    from asft.train.data import build_dataset, tokenize_dataset

    data = tmp_path_factory.mktemp("data")
    build_dataset(EmbeddedData(task="mul", split_seed=0, size=64, subsample_seed=0), data)
    tokenized = tmp_path_factory.mktemp("tokenized")
    tokenize_dataset(TokenizeSettings(template="plain", max_length=64, overlong="truncate"), data, tiny_base, tokenized)
    return tokenized / "dataset"


def train_settings(mode: str = "asft", **overrides) -> TrainSettings:
    """A small LoRA run's typed settings (what the plan would build), with overrides."""
    settings = {
        "mode": mode, "hparams": {}, "kl_weight": 0.05 if mode in ("asft", "sft+kl") else 0.0,
        "kl_direction": "ref_policy" if mode in ("asft", "sft+kl") else None,
        "normalize": "microbatch_mean", "seed": 0, "method": "lora",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "max_steps": 8, "epochs": None, "global_batch_size": 8, "per_device_batch_size": 4, "lr": 1e-2,
        "lr_scheduler": "cosine", "warmup_steps": 1, "weight_decay": 0.0, "adam_betas": [0.9, 0.999],
        "max_grad_norm": 1.0, "precision": "fp32",
    }
    settings.update(overrides)
    return TrainSettings.model_validate(settings)


RUNTIME = TrainRuntime(implementation="chunked", chunk_size=64, save_steps=4, logging_steps=1)
