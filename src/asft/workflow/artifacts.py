"""Artifact folders: written to a temporary sibling, renamed into place when complete.

A folder `results/<stage>/<key>/` exists only once everything in it is written; its
`manifest.json` (written last, inside the temporary folder) records the resolved settings, the
parent keys, package versions, the git commit, the wall time and the sha256 of every file.
A killed job leaves at most a `.tmp-*` folder that nothing reads and the next run removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from asft.core.files import sha256_file
from asft.core.settings import Runtime, StageSettings
from asft.workflow.keys import KEY_LENGTH, STAGE_VERSIONS

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("asft", "torch", "transformers", "peft", "trl", "datasets", "tokenizers", "math-verify", "vllm", "deepspeed")


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


@dataclass(frozen=True)
class Node:
    """One stage run: its typed settings, its parents and labels, as the plan made it."""

    stage: str
    key: str
    settings: StageSettings  # the stage's settings model; its key_payload() is what the key hashes
    parents: Mapping[str, str]  # role -> "stage/key" of each input artifact
    labels: Mapping[str, Any]  # human labels (mode, seed, benchmark), not hashed
    runtime: Runtime | None = None  # how, not what: chunk size, batch size

    def record(self) -> dict[str, Any]:
        """What a manifest records: the settings as the key hashed them, parents, labels, runtime."""
        return {
            "stage": self.stage,
            "key": self.key,
            "version": STAGE_VERSIONS[self.stage],
            "settings": self.settings.key_payload(),
            "parents": dict(self.parents),
            "labels": dict(self.labels),
            "runtime": self.runtime.model_dump(mode="json") if self.runtime is not None else {},
        }

    def to_json(self) -> dict[str, Any]:
        """What a job reads back (asft.workflow.plan.read_node): the settings as the model dumps them."""
        return {**self.record(), "settings": self.settings.model_dump(mode="json")}


# --- the results layout: one definition of every name under results/<stage>/ ---------------------

TMP_MARK = ".tmp-"  # <key>.tmp-<pid>: an artifact being written by process <pid>
PARTIAL_MARK = ".partial"  # <key>.partial: a training run's checkpoints, kept across kills
KEY_RE = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")
TMP_RE = re.compile(rf"^(?P<key>[0-9a-f]{{{KEY_LENGTH}}}){re.escape(TMP_MARK)}(?P<pid>\d+)$")
PARTIAL_RE = re.compile(rf"^(?P<key>[0-9a-f]{{{KEY_LENGTH}}}){re.escape(PARTIAL_MARK)}$")


def artifact_dir(results: Path, stage: str, key: str) -> Path:
    return Path(results) / stage / key


def partial_dir(final: Path) -> Path:
    """Where a stage keeps what must survive a killed job (training checkpoints), beside its artifact."""
    return final.parent / f"{final.name}{PARTIAL_MARK}"


def tmp_dir(final: Path, pid: int) -> Path:
    return final.parent / f"{final.name}{TMP_MARK}{pid}"


def _clear_target(final: Path) -> None:
    """Snakemake pre-creates output folders; an empty one may be replaced, a full one may not."""
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()
    elif final.exists() and (final / MANIFEST).exists():
        raise FileExistsError(f"{final} already holds a complete artifact; refusing to overwrite it")
    elif final.exists():
        shutil.rmtree(final)  # an incomplete leftover without a manifest


def _process_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


@contextmanager
def atomic_folder(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; when the block ends without an exception, fsync it and rename
    it to `final`. On any exception it is removed and `final` is left as it was. An empty `final` (made
    by Snakemake) is replaced; a complete one only with `replace` (a rebuilt results table)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f"{final.name}{TMP_MARK}*"):
        if not _process_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed job; a live one keeps its own
    tmp = tmp_dir(final, os.getpid())
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)  # the rename must never expose files still in the page cache only
        if replace and final.is_dir() and any(final.iterdir()):
            shutil.rmtree(final)
        _clear_target(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, record: Mapping[str, Any], started: float) -> None:
    """The manifest, written last: the record, provenance, wall time and the sha256 of every file."""
    manifest = {
        **record,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(time.time() - started, 3),
        "packages": package_versions(),
        "git_commit": git_commit(Path(__file__).parent),
        "files": file_hashes(folder),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@contextmanager
def writing_artifact(final: Path, node: Node, extra: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success write the manifest and rename it to `final`.

    On any exception the temporary folder is removed and nothing is left at `final`. Entries the
    caller puts into `extra` while the block runs (stats, parents' content) enter the manifest.
    """
    started = time.time()
    with atomic_folder(final) as tmp:
        yield tmp
        write_manifest(tmp, {**node.record(), **(dict(extra) if extra else {})}, started)
