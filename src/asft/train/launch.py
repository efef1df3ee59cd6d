"""The `train` stage's runner: one process, or one per GPU under torchrun.

DeepSpeed and DDP both work under torchrun with the HF Trainer; the ZeRO config comes from the run's
runtime (`train.deepspeed`). Workers read the run's typed settings back from a launch file and rank
0 writes the outputs and the stats read back here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from asft.core.job import StageJob
from asft.train.settings import TrainRuntime, TrainSettings

LAUNCH_FILE = "launch.json"
STATS_FILE = "launch_stats.json"


def run_train_stage(job: StageJob) -> dict[str, Any]:
    """Train one (train set, mode, seed) run into `job.out`; checkpoints go to `job.resume_dir`, so a
    killed job resumes from its newest complete one."""
    paths = {"model_dir": job.parents["model"], "dataset_dir": job.parents["tokenize"] / "dataset",
             "out_dir": job.out, "checkpoint_dir": job.resume_dir, "threads": job.threads, "labels": dict(job.labels)}
    if job.runtime.num_processes > 1:
        stats = launch_distributed(job.settings, job.runtime, num_processes=job.runtime.num_processes, **paths)
    else:
        from asft.train.trainer import train_run

        stats = train_run(job.settings, job.runtime, **paths)
    name_the_base(job.out / "model", job.parents["model"])
    return stats


def name_the_base(weights: Path, model_artifact: Path) -> None:
    """A LoRA adapter names its base as users know it: peft wrote the local folder it was loaded from
    (results/model/<key>); a hub base becomes its id (and revision), so the adapter loads anywhere.
    Embedded and local bases keep the folder (they have no other name)."""
    config_file = weights / "adapter_config.json"
    if not config_file.is_file():
        return
    settings = json.loads((model_artifact / "manifest.json").read_text()).get("settings") or {}
    if settings.get("source") != "hub" or not settings.get("id"):
        return
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = settings["id"]
    if settings.get("revision", "main") != "main":
        config["revision"] = settings["revision"]
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def launch_distributed(settings: TrainSettings, runtime: TrainRuntime, *, model_dir: Path, dataset_dir: Path,
                       out_dir: Path, checkpoint_dir: Path, threads: int, num_processes: int,
                       labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run `train_run` in `num_processes` processes with torchrun (one per GPU; gloo on CPU)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    spec = checkpoint_dir / LAUNCH_FILE
    stats_file = checkpoint_dir / STATS_FILE
    stats_file.unlink(missing_ok=True)
    spec.write_text(json.dumps({
        "settings": settings.model_dump(mode="json"), "runtime": runtime.model_dump(mode="json"),
        "model_dir": str(model_dir), "dataset_dir": str(dataset_dir), "out_dir": str(out_dir),
        "checkpoint_dir": str(checkpoint_dir), "threads": threads, "stats_file": str(stats_file),
        "labels": dict(labels or {}),
    }))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
               "-m", "asft.train.launch", str(spec)]
    print("[asft] launching:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return json.loads(stats_file.read_text())


def _distributed_worker(spec_path: str) -> None:
    from asft.train.trainer import train_run

    spec = json.loads(Path(spec_path).read_text())
    stats = train_run(TrainSettings.model_validate(spec["settings"]), TrainRuntime.model_validate(spec["runtime"]),
                      model_dir=Path(spec["model_dir"]), dataset_dir=Path(spec["dataset_dir"]),
                      out_dir=Path(spec["out_dir"]), checkpoint_dir=Path(spec["checkpoint_dir"]),
                      threads=spec["threads"], labels=spec.get("labels") or {})
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec["stats_file"]).write_text(json.dumps(stats))


if __name__ == "__main__":  # a torchrun worker: python -m asft.train.launch <launch.json>
    _distributed_worker(sys.argv[1])
