"""The shared trainer: real training steps on the tiny model; determinism; resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asft.train.settings import TrainRuntime, TrainSettings
from asft.train.trainer import train_run
from tests.conftest import RUNTIME, train_settings


def run(tmp: Path, base: Path, dataset: Path, settings: TrainSettings, runtime: TrainRuntime = RUNTIME) -> tuple[dict, Path]:
    out = tmp / "out"
    out.mkdir(parents=True)
    stats = train_run(settings, runtime, model_dir=base, dataset_dir=dataset, out_dir=out,
                      checkpoint_dir=tmp / "ckpt", progress=False)
    return stats, out


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "adapter_model.safetensors")


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


@pytest.mark.parametrize("mode", ["sft", "dft", "sft+kl", "asft", "sft-topk", "sft-antiop", "sft-lr"])
def test_every_mode_trains_and_logs_its_terms(tmp_path, tiny_base, tiny_dataset, mode):
    stats, out = run(tmp_path, tiny_base, tiny_dataset, train_settings(mode, max_steps=4))
    assert stats["steps"] == 4
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [e for e in entries if "loss" in e]
    assert len(logged) == 4 and all(set(e) >= {"ce", "weighted_ce"} for e in logged)
    if mode in ("sft+kl", "asft"):
        assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # LoRA B starts at 0: policy == reference
        assert logged[-1]["kl"] > 0
    else:
        assert not any("kl" in e for e in logged)  # no KL term: missing, not a flat 0
    if mode in ("dft", "asft"):
        assert logged[0]["weighted_ce"] < logged[0]["ce"]
    assert (out / "curves.png").stat().st_size > 0
    assert any(v.abs().sum() > 0 for k, v in adapter(out).items() if "lora_B" in k)


def test_same_seed_gives_the_same_loss_curve(tmp_path, tiny_base, tiny_dataset):
    _, a = run(tmp_path / "a", tiny_base, tiny_dataset, train_settings("asft"))
    _, b = run(tmp_path / "b", tiny_base, tiny_dataset, train_settings("asft"))
    assert losses(a) == losses(b)
    for name, tensor in adapter(a).items():
        assert torch.equal(tensor, adapter(b)[name])
    _, c = run(tmp_path / "c", tiny_base, tiny_dataset, train_settings("asft", seed=1))
    assert losses(a) != losses(c)


def test_chunked_and_full_implementations_train_alike(tmp_path, tiny_base, tiny_dataset):
    _, chunked = run(tmp_path / "a", tiny_base, tiny_dataset, train_settings("asft", max_steps=3))
    _, full = run(tmp_path / "b", tiny_base, tiny_dataset, train_settings("asft", max_steps=3),
                  RUNTIME.model_copy(update={"implementation": "full"}))
    assert losses(chunked) == pytest.approx(losses(full), rel=1e-4)


def test_global_tokens_normalisation_runs(tmp_path, tiny_base, tiny_dataset):
    _, micro = run(tmp_path / "a", tiny_base, tiny_dataset, train_settings("sft", max_steps=2))
    _, glob = run(tmp_path / "b", tiny_base, tiny_dataset, train_settings("sft", max_steps=2, normalize="global_tokens"))
    # Same data: the first logged loss is the same mean CE either way up to how micro-batches are weighted.
    assert losses(glob)[0] == pytest.approx(losses(micro)[0], rel=0.05)


def test_lora_reference_is_the_base_model(tiny_base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from asft.train.reference import Reference

    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.randint(0, 200, (2, 12))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        expected = base(**inputs).logits
        assert not torch.allclose(policy(**inputs).logits, expected, atol=1e-4)  # adapters change the output
    assert torch.allclose(Reference(policy).logits(inputs), expected, atol=1e-5)
    hidden, head = Reference(policy).hidden_and_head(inputs)
    assert torch.allclose(hidden @ head.T, expected, atol=1e-4)


KILLED_RUN = """
import sys, json
from pathlib import Path
from asft.train.settings import TrainRuntime, TrainSettings
from asft.train.trainer import train_run
settings, runtime, base, data, tmp = json.loads(sys.argv[1])
train_run(TrainSettings.model_validate(settings), TrainRuntime.model_validate(runtime), model_dir=Path(base),
          dataset_dir=Path(data), out_dir=Path(tmp) / "never", checkpoint_dir=Path(tmp) / "ckpt", progress=False)
"""


def test_resume_after_sigkill_gives_the_same_weights(tmp_path, tiny_base, tiny_dataset):
    settings = train_settings("asft", max_steps=12)
    runtime = RUNTIME.model_copy(update={"save_steps": 4})
    _, uninterrupted = run(tmp_path / "straight", tiny_base, tiny_dataset, settings, runtime)

    killed = tmp_path / "killed"
    (killed / "never").mkdir(parents=True)
    args = json.dumps([settings.model_dump(mode="json"), runtime.model_dump(mode="json"), str(tiny_base),
                       str(tiny_dataset), str(killed)])
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, args])
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "ckpt").glob("checkpoint-4/trainer_state.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = sorted((killed / "ckpt").glob("checkpoint-*"))
    assert checkpoints, "the killed run left no checkpoint"
    assert int(checkpoints[-1].name.split("-")[1]) < 12, "the run finished before it was killed"

    out = killed / "out"
    out.mkdir()
    stats = train_run(settings, runtime, model_dir=tiny_base, dataset_dir=tiny_dataset, out_dir=out,
                      checkpoint_dir=killed / "ckpt", progress=False)
    assert stats["resumed_from"] == checkpoints[-1].name
    for name, tensor in adapter(uninterrupted).items():
        assert torch.allclose(tensor, adapter(out)[name], atol=1e-6), name


def test_full_fine_tuning_uses_a_frozen_reference_copy(tmp_path, tiny_base, tiny_dataset):
    stats, out = run(tmp_path, tiny_base, tiny_dataset, train_settings("asft", method="full", lora=None, max_steps=3,
                                                                       lr=1e-3))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [e for e in logged if "loss" in e]
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-7) and logged[-1]["kl"] > 0
    weights = load_file(next((out / "model").glob("*.safetensors")))
    base = load_file(next(tiny_base.glob("*.safetensors")))
    changed = [name for name in base if name in weights and not torch.equal(base[name], weights[name])]
    assert changed, "full fine-tuning changed no weight"


def test_two_process_training_with_torchrun(tmp_path, tiny_base, tiny_dataset):
    from asft.train.launch import launch_distributed

    out = tmp_path / "out"
    out.mkdir()
    settings = train_settings("asft", max_steps=3, global_batch_size=8, per_device_batch_size=4)
    stats = launch_distributed(settings, RUNTIME, model_dir=tiny_base, dataset_dir=tiny_dataset, out_dir=out,
                               checkpoint_dir=tmp_path / "ckpt", threads=1, num_processes=2)
    assert stats["steps"] == 3
    assert stats["gradient_accumulation"] == 1  # 8 = 4 per device x 2 processes
    assert (out / "model" / "adapter_model.safetensors").exists()


def test_a_partially_saved_checkpoint_is_not_resumed_from(tmp_path):
    from asft.train.checkpoints import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "missing") is None
    for step, complete in ((4, True), (8, True), (12, False)):  # killed while saving checkpoint-12
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
