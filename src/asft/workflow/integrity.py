"""Is an artifact what its manifest says it is? One check, used by every job for the parents it reads
and by `asft verify` for every folder under results/.

An artifact is sound when its `manifest.json` parses, names the folder's stage and key, its settings
and parents hash to that key (so an edited manifest is caught), it lists every file in the folder
(nothing missing, nothing extra) and every file has the recorded sha256.

Hashing a 7B model's weights takes seconds per job, so a job remembers what it verified in
`<workdir>/.snakemake/asft/verified/<stage>/<key>.json` (each file's size, modification time in ns
and sha256): a later job re-hashes a file only when its size or modification time changed. A file
rewritten in place with the same size keeps neither its mtime (the kernel updates it), so the cache
misses nothing short of a deliberate reset of the mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from asft.core.files import sha256_file
from asft.workflow.artifacts import MANIFEST
from asft.workflow.keys import canonical_json, stage_key

VERIFIED_DIR = Path(".snakemake") / "asft" / "verified"


class ArtifactError(RuntimeError):
    """A parent artifact is not what its manifest says; the message names the file and the remedy."""


def read_manifest(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) or (None, what is wrong with it)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no manifest.json"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"manifest.json does not parse ({type(error).__name__}: {error})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, "manifest.json has no 'files' table"
    return manifest, None


def key_problem(manifest: Mapping[str, Any], stage: str, key: str) -> str | None:
    """Whether the manifest's settings, parents and stage version hash to the folder's key."""
    if "settings" not in manifest or "parents" not in manifest:
        return None  # a hand-made folder (tests) or an aggregate: nothing to recompute
    try:
        actual = stage_key(stage, manifest["settings"], manifest["parents"], version=manifest.get("version"))
    except (TypeError, ValueError) as error:
        return f"its settings cannot be hashed ({error})"
    if actual != key:
        return f"its settings and parents hash to {actual}, not {key} (the manifest was edited)"
    return None


def _verified_cache(folder: Path) -> Path:
    """results/<stage>/<key> -> <workdir>/.snakemake/asft/verified/<stage>/<key>.json"""
    return folder.parent.parent.parent / VERIFIED_DIR / folder.parent.name / f"{folder.name}.json"


def _load_cache(path: Path) -> dict[str, list]:
    try:
        cache = json.loads(path.read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def artifact_problems(folder: Path, stage: str, *, hash_workers: int = 4, use_cache: bool = False) -> list[str]:
    """Problems of one artifact folder (empty list: sound): see `artifact_report`."""
    return artifact_report(folder, stage, hash_workers=hash_workers, use_cache=use_cache)[1]


def artifact_report(folder: Path, stage: str, *, hash_workers: int = 4,
                    use_cache: bool = False) -> tuple[dict[str, Any] | None, list[str]]:
    """The folder's manifest (None if it does not read) and its problems (empty list: sound). Reads every
    file once (or, with `use_cache`, only the files whose size or mtime changed since last verified)."""
    folder = Path(folder)
    manifest, problem = read_manifest(folder)
    if manifest is None:
        return None, [problem]
    problems = []
    if manifest.get("key") != folder.name:
        problems.append(f"manifest key {manifest.get('key')!r} differs from the folder name")
    if manifest.get("stage") != stage:
        problems.append(f"manifest stage {manifest.get('stage')!r} differs from the stage folder {stage!r}")
    elif (problem := key_problem(manifest, stage, folder.name)) is not None:
        problems.append(problem)
    recorded: dict[str, str] = manifest["files"]
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    present.discard(MANIFEST)
    to_hash = []
    root = folder.resolve()
    for name, digest in sorted(recorded.items()):
        try:
            outside = Path(name).is_absolute() or ".." in Path(name).parts or \
                not (folder / name).resolve().is_relative_to(root)
        except (OSError, ValueError):
            outside = True
        if outside:
            problems.append(f"{name!r}: listed path is not a file inside the folder")
        elif name not in present:
            problems.append(f"{name}: missing")
        elif not isinstance(digest, str):
            problems.append(f"{name}: recorded sha256 is not a string")
        else:
            to_hash.append((name, digest))
    for name in sorted(present - set(recorded)):
        problems.append(f"{name}: not listed in the manifest")

    cache_path = _verified_cache(folder) if use_cache else None
    cache = _load_cache(cache_path) if cache_path else {}
    fresh: dict[str, list] = {}

    def mismatch(item: tuple[str, str]) -> str | None:
        name, digest = item
        try:
            stat = (folder / name).stat()
            seen = cache.get(name)
            if seen == [stat.st_size, stat.st_mtime_ns, digest]:
                fresh[name] = seen
                return None
            actual = sha256_file(folder / name)
        except OSError as error:
            return f"{name}: unreadable ({error.strerror})"
        if actual != digest:
            return f"{name}: sha256 mismatch ({stat.st_size} bytes; recorded {digest[:12]}…, found {actual[:12]}…)"
        fresh[name] = [stat.st_size, stat.st_mtime_ns, digest]
        return None

    with ThreadPoolExecutor(max_workers=max(1, hash_workers)) as pool:
        problems += [p for p in pool.map(mismatch, to_hash) if p]
    if cache_path and not problems:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(fresh, sort_keys=True))
            tmp.replace(cache_path)
        except OSError:
            pass  # a cache that cannot be written costs time, not correctness
    return manifest, problems


def files_digest(manifest: Mapping[str, Any]) -> str:
    """One hash of an artifact's content: its file table (name -> sha256). A parent rebuilt with the
    same bytes keeps it; the manifest's timestamps do not enter it."""
    return hashlib.sha256(canonical_json(manifest.get("files") or {}).encode()).hexdigest()


def parent_digests(parents: Mapping[str, Path]) -> dict[str, str | None]:
    """role -> the files digest of each parent as it is now (None where its manifest does not read)."""
    digests: dict[str, str | None] = {}
    for role, folder in parents.items():
        manifest, _ = read_manifest(Path(folder))
        digests[role] = files_digest(manifest) if manifest is not None else None
    return digests


def verify_parents(parents: Mapping[str, Path]) -> dict[str, str]:
    """Check every parent artifact a job reads before it reads it; returns role -> the parent's files
    digest (recorded in the child's manifest, so a parent changed later is caught too)."""
    hashes = {}
    for role, folder in parents.items():
        folder = Path(folder)
        manifest, problems = artifact_report(folder, folder.parent.name, use_cache=True)
        if problems:
            detail = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise ArtifactError(
                f"the {role} artifact {folder} is not what its manifest says: {detail}. Nothing was read from it. "
                "Run `asft verify --fix` (it removes it and what was made from it), then the same snakemake command."
            )
        hashes[role] = files_digest(manifest)
    return hashes
