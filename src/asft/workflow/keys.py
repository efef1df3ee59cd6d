"""Content keys: a stage's folder name is a hash of what it computes from.

key = sha256(canonical JSON of {stage, stage version, resolved settings, parent keys})[:16]

Parents' keys enter the hash, so keys form a Merkle chain: a change anywhere upstream changes
every key below it, and nothing else. A stage's version is bumped on purpose whenever its code
would produce different results from the same settings (Snakemake cannot see library edits).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from asft.workflow.stages import STAGES

KEY_LENGTH = 16

#: Each stage's semantic version, from the stage table (asft.workflow.stages).
STAGE_VERSIONS: Mapping[str, int] = {stage.name: stage.version for stage in STAGES}


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, tuples as lists, finite floats only."""

    def check(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"cannot hash a non-finite number: {item}")
        if isinstance(item, Mapping):
            return {str(k): check(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [check(v) for v in item]
        if item is None or isinstance(item, (str, int, float, bool)):
            return item
        raise TypeError(f"cannot hash a value of type {type(item).__name__}: {item!r}")

    return json.dumps(check(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stage_key(stage: str, settings: Mapping[str, Any], parents: Mapping[str, str] | None = None, *,
              version: int | None = None) -> str:
    """The content key of one stage run (at the stage's current version unless `version` is given:
    `asft verify` recomputes an artifact's key with the version it was made at)."""
    if stage not in STAGE_VERSIONS:
        raise ValueError(f"unknown stage '{stage}'; known: {', '.join(STAGE_VERSIONS)}")
    return content_key(stage, STAGE_VERSIONS[stage] if version is None else version, settings, parents)


def content_key(stage: str, version: int, settings: Mapping[str, Any], parents: Mapping[str, str] | None) -> str:
    """The hash itself, for any stage name (`asft migrate` recomputes keys of a stage that no longer exists)."""
    payload = {"stage": stage, "version": version, "settings": settings, "parents": dict(parents or {})}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]
