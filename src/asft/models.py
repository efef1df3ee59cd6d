"""The `model` stage: the base model and its tokenizer in an artifact folder.

Three sources, one result (a folder `from_pretrained` can read):

- embedded: pre-trained here from the generated tasks (asft.embedded);
- hub: `model.id` at `model.revision`, resolved through the Hugging Face cache (HF_HOME or
  HF_HUB_CACHE). With HF_HUB_OFFLINE=1 nothing touches the network: the id and revision are
  resolved from the cache's `refs/` and `snapshots/` (an offline mirror is just a filled cache);
  with `model.local_path` set, that folder is used instead of the hub;
- local: a folder (`model.local_path`) with config.json, weights and tokenizer, e.g. one written
  by `save_pretrained` or `hf download --local-dir`.

Files are hard-linked from the cache or folder when they share a file system (no copy, no extra
space), copied otherwise. The stage runs inside a temporary folder (asft.artifacts.writing_artifact),
so a failed or interrupted download leaves nothing that looks complete.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
#: What is fetched from a model repository: config, weights (safetensors only), tokenizer files.
HUB_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*")


class DownloadError(RuntimeError):
    """A model or data file could not be fetched; the message says which and what to do."""


# --- the Hugging Face cache, read from the environment when a stage runs -----------------------

def _true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as the job sees it now, not at import time."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return _true(env) if env is not None else bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The hub cache the job sees now: HF_HUB_CACHE, else HF_HOME/hub, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_failure(what: str, repo: str, revision: str, error: BaseException, *, local_hint: str,
                filename: str | None = None) -> DownloadError:
    """A download error that names the repository, revision (and file) and says how to work offline."""
    cache = hub_cache_dir()
    if hub_offline():
        command = f"hf download {repo}" + (f" {filename} --repo-type dataset" if filename else "")
        advice = (f"HF_HUB_OFFLINE=1 and the Hugging Face cache ({cache}) does not hold it: fill the cache once "
                  f"with network (`{command} --revision {revision}`, or copy a cache and point HF_HOME "
                  f"at it), or set {local_hint} to a local copy")
    else:
        advice = (f"check the id and revision, your network and token; without network set HF_HUB_OFFLINE=1 with "
                  f"a filled cache (HF_HOME, now {cache.parent if cache.name == 'hub' else cache}), or set "
                  f"{local_hint} to a local copy")
    detail = f"{type(error).__name__}: {error}".strip().splitlines()[0][:400]
    return DownloadError(f"{what} '{repo}' (revision '{revision}') could not be fetched: {advice}. ({detail})")


# --- folders ---------------------------------------------------------------------------------

def has_weights(folder: Path) -> bool:
    return any(any(Path(folder).glob(pattern)) for pattern in WEIGHT_PATTERNS)


def missing_parts(folder: Path) -> str | None:
    """What keeps `folder` from being a usable model folder, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    if not (folder / "config.json").is_file():
        return "no config.json; is this a Hugging Face model folder?"
    if not has_weights(folder):
        return "no weights (*.safetensors or pytorch_model*.bin)"
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return (f"no tokenizer ({', '.join(TOKENIZER_FILES)}); save the tokenizer beside the model "
                "(tokenizer.save_pretrained)")
    return None


def check_model_folder(folder: Path, what: str) -> None:
    problem = missing_parts(folder)
    if problem:
        raise FileNotFoundError(f"{what} {folder}: {problem}")


def _wanted(relative: Path, patterns: tuple[str, ...] | None) -> bool:
    if any(part.startswith(".") for part in relative.parts):
        return False  # .cache/ of `hf download --local-dir`, .git/, .gitattributes
    return patterns is None or any(fnmatch.fnmatch(relative.name, p) for p in patterns)


def _copy_tree(src: Path, dest: Path, patterns: tuple[str, ...] | None = None) -> list[str]:
    """Hard-link when on the same file system (instant, no extra space), copy otherwise.

    Symbolic links (the hub cache's snapshots point into blobs/) are followed.
    """
    copied = []
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if path.is_dir() or not _wanted(relative, patterns):
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path.resolve(), target)
        except OSError:
            shutil.copy2(path, target)
        copied.append(str(relative))
    return copied


def _describe(folder: Path) -> dict[str, Any]:
    """What the artifact holds: model type, size on disk, and what its tokenizer can do."""
    from transformers import AutoTokenizer

    config = json.loads((folder / "config.json").read_text())
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # a broken tokenizer fails here, not three stages later
        raise ValueError(f"model folder {folder}: the tokenizer does not load ({type(error).__name__}: {error})") from error
    if tokenizer.eos_token_id is None:
        raise ValueError(f"model folder {folder}: the tokenizer has no eos token; training needs one to end responses")
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


# --- the stage --------------------------------------------------------------------------------

def hub_snapshot(repo: str, revision: str) -> Path:
    """The cached snapshot folder of a model repository at a revision (downloaded when online)."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id=repo, revision=revision, cache_dir=hub_cache_dir(), allow_patterns=list(HUB_PATTERNS),
            local_files_only=hub_offline(),
        )
    except Exception as error:  # network, auth, unknown id or revision, not in the offline cache
        raise hub_failure("model", repo, revision, error, local_hint="model.local_path (model.source: local)") from error
    return Path(folder)


def build_model(settings: Mapping[str, Any], out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Write the base model (weights + tokenizer) into out_dir; return stats."""
    source = settings["source"]
    if source == "embedded":
        from asft.embedded.pretrain import EmbeddedBaseSpec, pretrain

        return pretrain(EmbeddedBaseSpec.from_dict(settings["embedded"]), out_dir, progress=progress)
    out_dir = Path(out_dir)
    if source == "local" or settings.get("local_path"):
        folder = Path(settings.get("path") or settings["local_path"]).expanduser()
        check_model_folder(folder, "model.local_path")
        _copy_tree(folder, out_dir)
        origin: dict[str, Any] = {"origin": str(folder)}
    else:
        snapshot = hub_snapshot(settings["id"], settings["revision"])
        _copy_tree(snapshot, out_dir, HUB_PATTERNS)
        problem = missing_parts(out_dir)
        if problem:
            raise DownloadError(
                f"model '{settings['id']}' (revision '{settings['revision']}'): the snapshot {snapshot} has {problem}; "
                "it is incomplete (fill the cache again with network) or the repository has no safetensors "
                "weights (download it yourself and use model.local_path)"
            )
        origin = {"origin": f"hub:{settings['id']}@{settings['revision']}", "commit": snapshot.name}
    return {**origin, **_describe(out_dir)}
