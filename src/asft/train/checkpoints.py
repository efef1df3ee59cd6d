"""A training run's resume points: `checkpoint-N` folders in its `<key>.partial/` folder.

One definition of a complete checkpoint, for the trainer that resumes from it and for `asft verify`
and `asft status` that report on it: the HF Trainer writes `trainer_state.json` last, so a
checkpoint whose state file reads back is complete; one killed while saving lacks it and must never
be resumed from. No torch import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Every `checkpoint-N` folder in `folder`, complete or not, by step."""
    found = []
    for child in Path(folder).iterdir() if Path(folder).is_dir() else ():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def checkpoint_step(checkpoint: Path) -> int | None:
    """global_step recorded in a checkpoint's trainer_state.json (None: absent or unreadable)."""
    try:
        return int(json.loads((Path(checkpoint) / TRAINER_STATE).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The checkpoints a run can resume from, by step."""
    return [(step, path) for step, path in checkpoints(folder) if checkpoint_step(path) is not None]


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    complete = complete_checkpoints(folder)
    return complete[-1][1] if complete else None
