"""What a stage's runner receives: its typed settings, its parents' folders and where to write.

Every runner is `run(job: StageJob) -> stats` (the stage table, asft.workflow.stages, names it).
The job entry point writes into `job.out`, a temporary folder that becomes the artifact only when
the runner returns (asft.workflow.artifacts.writing_artifact).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asft.core.settings import Runtime, StageSettings


@dataclass(frozen=True)
class StageJob:
    settings: StageSettings  # the stage's own settings model (what its key hashes)
    runtime: Runtime | None  # how it runs: batch and chunk sizes, processes (outside the key)
    parents: Mapping[str, Path]  # role -> the parent artifact's folder, its files verified
    out: Path  # the temporary folder to write into
    resume_dir: Path  # `<key>.partial/`: kept across a killed job, removed once the artifact is complete
    threads: int = 1
    labels: Mapping[str, Any] = field(default_factory=dict)  # the plan's human labels (train set, mode, seed)

    def weights(self, role: str) -> Path:
        """The model weights a parent holds: `model/` inside a training run, the folder itself otherwise."""
        return weights_dir(self.parents[role])


def weights_dir(artifact: Path) -> Path:
    """Model weights of an artifact: `model/` inside a training run, the folder itself otherwise."""
    inner = Path(artifact) / "model"
    return inner if inner.is_dir() else Path(artifact)
