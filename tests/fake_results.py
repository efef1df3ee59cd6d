"""Hand-made results for tests of the aggregate: what a score stage leaves, without running one."""

from __future__ import annotations

import json
from pathlib import Path


def score_folder(root: Path, key: str, accuracy: float, drift: float | None) -> Path:
    """`root/key/scores.json` with an accuracy and a drift, as the aggregate reads a score artifact."""
    folder = root / key
    folder.mkdir()
    (folder / "scores.json").write_text(json.dumps({"accuracy": accuracy, "drift": drift}))
    return folder
