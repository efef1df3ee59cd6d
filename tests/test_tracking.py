"""Experiment trackers (train.report_to), KL logged as missing where a mode has none, readable training logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from asft.train.settings import TrainRuntime
from asft.train.tracking import check_report_to, run_name, run_tags, tracker_environment
from asft.train.trainer import progress_line, train_run
from asft.workflow.config import ConfigError, parse_config
from tests.conftest import RUNTIME, ROOT, train_settings
from tests.test_keys import changed, default_raw, keys_by_stage

LABELS = {"train_set": "mul", "mode": "asft", "seed": 0}


def _train(tmp: Path, base: Path, dataset: Path, mode: str, steps: int, report_to=("tensorboard",)) -> Path:
    out = tmp / "out"
    out.mkdir(parents=True)
    runtime = RUNTIME.model_copy(update={"report_to": tuple(report_to), "save_steps": 100})
    train_run(train_settings(mode, max_steps=steps), runtime, model_dir=base, dataset_dir=dataset, out_dir=out,
              checkpoint_dir=tmp / "ckpt", progress=False, labels={**LABELS, "mode": mode})
    return out


@pytest.mark.parametrize("mode", ["asft", "sft"])
def test_tensorboard_events_hold_the_loss_terms_of_every_logged_step(tmp_path, tiny_base, tiny_dataset, mode):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = _train(tmp_path, tiny_base, tiny_dataset, mode, steps=5)
    folder = out / "tensorboard"  # inside the artifact: kept and hashed with the run
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [e for e in logged if "loss" in e]
    for name in ("loss", "ce", "weighted_ce", "learning_rate"):
        points = events.Scalars(f"train/{name}")
        assert [p.step for p in points] == [1, 2, 3, 4, 5], name
        assert [p.value for p in points] == pytest.approx([e[name] for e in logged], rel=1e-6), name
    if mode == "asft":
        assert [p.step for p in events.Scalars("train/kl")] == [1, 2, 3, 4, 5]
        assert all("kl" in e for e in logged)
    else:  # no KL term: no KL scalar, no kl in metrics.jsonl (missing, not a flat 0)
        assert "train/kl" not in scalars
        assert not any("kl" in e for e in logged)
    assert (out / "curves.png").stat().st_size > 0


def test_without_trackers_there_is_no_tensorboard_folder(tmp_path, tiny_base, tiny_dataset):
    out = _train(tmp_path, tiny_base, tiny_dataset, "sft", steps=2, report_to=())
    assert not (out / "tensorboard").exists() and not (tmp_path / "ckpt" / "tensorboard").exists()


def test_report_to_is_checked_and_needs_the_trackers_package(monkeypatch):
    raw = default_raw()
    raw["train"]["report_to"] = ["tensorboard"]
    assert parse_config(raw).train.report_to == ["tensorboard"]
    raw["train"]["report_to"] = ["none"]
    assert parse_config(raw).train.report_to == []
    for bad, says in ((["none", "tensorboard"], "list it alone"), (["tensorboard", "tensorboard"], "twice"),
                      (["comet"], "report_to")):
        raw["train"]["report_to"] = bad
        with pytest.raises(ConfigError, match=says):
            parse_config(raw)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    raw["train"]["report_to"] = ["tensorboard", "wandb"]
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    message = str(error.value)
    assert "train.report_to: wandb asked for" in message and "`pip install wandb`" in message
    # The trainer checks again (the training environment can differ from the one that parsed the config).
    with pytest.raises(ValueError, match="pip install wandb"):
        train_run(train_settings("sft"), TrainRuntime(report_to=("wandb",)), model_dir=Path("-"),
                  dataset_dir=Path("-"), out_dir=Path("-"), checkpoint_dir=Path("-"))


def test_trackers_are_runtime_only_and_change_no_key():
    raw = default_raw()
    before = keys_by_stage(raw)
    raw["train"]["report_to"] = ["tensorboard"]
    assert changed(before, keys_by_stage(raw)) == set()


def test_run_name_tags_and_tracker_environment():
    labels = {"train_set": "numina_cot_10k", "mode": "asft", "seed": 1}
    assert run_name(labels, mode="asft", seed=1) == "asft seed 1 on numina_cot_10k"
    assert run_name({}, mode="sft", seed=3) == "sft seed 3"
    tags = run_tags(labels, mode="asft", seed=1)
    assert tags == {"mode": "asft", "seed": "1", "train_set": "numina_cot_10k"}
    env = tracker_environment(["wandb", "mlflow"], tags, environ={"WANDB_TAGS": "mine", "WANDB_PROJECT": "p",
                                                                  "MLFLOW_TAGS": '{"team": "x"}'})
    assert env["WANDB_PROJECT"] == "p"  # the user's variable wins
    assert env["WANDB_TAGS"] == "mine,mode:asft,seed:1,train_set:numina_cot_10k"
    assert json.loads(env["MLFLOW_TAGS"]) == {**tags, "team": "x"}
    assert env["MLFLOW_EXPERIMENT_NAME"] == "asft"
    assert tracker_environment(["tensorboard"], tags, environ={}) == {}
    assert check_report_to([]) == [] and check_report_to(["none"]) == []


def test_progress_line_format():
    logs = {"loss": 1.23449, "ce": 2.5, "kl": 0.01234, "learning_rate": 4.1e-05, "grad_norm": 0.5}
    assert progress_line(40, 120, logs, steps_done=40, seconds=17.4) == (
        "step 40/120 (33%) loss 1.234 ce 2.5 kl 0.0123 lr 4.1e-05 gnorm 0.5 2.3 it/s eta 0:00:35")
    assert progress_line(3, 10, {"loss": 1.0}, steps_done=1, seconds=4) == "step 3/10 (30%) loss 1 4 s/it eta 0:00:28"


LOG_SCRIPT = """
import sys, warnings
from pathlib import Path
sys.path.insert(0, {root!r})
from transformers.utils import logging as hf_logging
from asft.train.trainer import readable_output, train_run
from tests.conftest import RUNTIME, train_settings

out = Path(sys.argv[3])
out.mkdir()
train_run(train_settings("asft", max_steps=6), RUNTIME.model_copy(update={{"save_steps": 100}}),
          model_dir=Path(sys.argv[1]), dataset_dir=Path(sys.argv[2]), out_dir=out,
          checkpoint_dir=out.parent / "ckpt", labels={{"train_set": "mul", "mode": "asft", "seed": 0}})
with readable_output(bars=False):
    for _ in range(3):
        warnings.warn("a repeated python warning")
        warnings.warn("a repeated python warning")  # another line: shown once all the same
        hf_logging.get_logger("transformers.trainer").warning("a repeated library warning")
"""


def test_the_training_log_reads_line_by_line(tmp_path, tiny_base, tiny_dataset):
    script = tmp_path / "train.py"
    script.write_text(LOG_SCRIPT.format(root=str(ROOT)))
    log = tmp_path / "train.log"
    with open(log, "w") as handle:  # a file, as a rule's log: not a terminal
        subprocess.run([sys.executable, str(script), str(tiny_base), str(tiny_dataset), str(tmp_path / "out")],
                       stdout=handle, stderr=subprocess.STDOUT, check=True, cwd=tmp_path)
    text = log.read_text()
    assert "\r" not in text  # no tqdm carriage-return bars
    assert "{'loss'" not in text and "'train_runtime'" not in text  # no raw HF log dicts
    steps = [int(m.group(1)) for m in re.finditer(r"(?m)^step (\d+)/6 \(\d+%\) loss \S+ ce \S+ kl \S+ lr \S+ "
                                                  r"gnorm \S+ \S+ (?:it/s|s/it)(?: eta \d+:\d\d:\d\d)?$", text)]
    assert steps == [1, 2, 3, 4, 5, 6], text
    assert re.search(r"(?m)^\[asft\] trained 6 steps in \d+:\d\d:\d\d \(.*\), last loss \S+$", text)
    assert text.count("UserWarning: a repeated python warning") == 1, text
    assert text.count("a repeated library warning") == 1, text


def test_a_resumed_run_logs_each_step_once_to_tensorboard(tmp_path, tiny_base, tiny_dataset, monkeypatch):
    """Killed during step 4 with its checkpoint at step 2: steps 3-4 are trained and logged again, and
    TensorBoard drops the killed attempt's step 3. A restart with no checkpoint starts the events afresh."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from asft.train import trainer

    runtime = RUNTIME.model_copy(update={"save_steps": 2, "report_to": ("tensorboard",)})
    settings, ckpt = train_settings("asft", max_steps=4), tmp_path / "ckpt"
    record = trainer.AnchoredTrainer._record

    def killed_at_step_4(self, terms):
        if self.state.global_step == 3:
            raise KeyboardInterrupt("killed")
        record(self, terms)

    def attempt(name: str) -> Path:
        out = tmp_path / name
        out.mkdir()
        train_run(settings, runtime, model_dir=tiny_base, dataset_dir=tiny_dataset, out_dir=out, checkpoint_dir=ckpt,
                  progress=False)
        return out

    monkeypatch.setattr(trainer.AnchoredTrainer, "_record", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        attempt("killed")
    monkeypatch.setattr(trainer.AnchoredTrainer, "_record", record)
    assert [p.name for p in ckpt.glob("checkpoint-*")] == ["checkpoint-2"]
    out = attempt("resumed")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [p.step for p in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [p.step for p in events.Scalars("train/kl")] == [1, 2, 3, 4]
