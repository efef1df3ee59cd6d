"""The base of every stage's typed settings: frozen, strict, and how they enter a content key.

A stage's settings are one frozen model. The plan builds it from the config, its `key_payload()` is
what the stage's content key hashes (and what its manifest records), and the runner receives the
model itself. Two class-level declarations keep keys stable as settings grow:

- `key_omits`: fields left out of the key while they hold the given value, so a field added later
  with a default that reproduces the old behaviour leaves every existing key as it was;
- `key_value_names`: values written under an earlier name, so renaming a value keeps its keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class StageSettings(BaseModel):
    """Settings of one stage run: everything that changes its result, nothing else."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    key_omits: ClassVar[Mapping[str, Any]] = {}
    key_value_names: ClassVar[Mapping[str, Mapping[Any, Any]]] = {}

    def key_payload(self) -> dict[str, Any]:
        """The JSON-able mapping the content key hashes (nested settings give their own payloads)."""
        payload: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in self.key_omits and value == self.key_omits[name]:
                continue
            if isinstance(value, StageSettings):
                value = value.key_payload()
            elif isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            elif isinstance(value, tuple):
                value = list(value)
            if name in self.key_value_names:
                value = self.key_value_names[name].get(value, value)
            payload[name] = value
        return payload


class Runtime(BaseModel):
    """How a stage runs, not what it computes (threads, batch and chunk sizes): outside the key."""

    model_config = ConfigDict(frozen=True, extra="forbid")
