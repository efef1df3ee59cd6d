"""The `model` stage: the base model and its tokenizer in an artifact folder.

embedded: pre-trained here from the generated tasks (asft.embedded); hub: downloaded by id and
revision (HF_HUB_OFFLINE and HF_HOME are honoured); local: copied from a folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def has_weights(folder: Path) -> bool:
    return any(any(Path(folder).glob(pattern)) for pattern in WEIGHT_PATTERNS)


def check_model_folder(folder: Path, what: str) -> None:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what} {folder}: no config.json; is this a Hugging Face model folder?")
    if not has_weights(folder):
        raise FileNotFoundError(f"{what} {folder}: no weights (*.safetensors or pytorch_model*.bin)")


def _copy_tree(src: Path, dest: Path) -> None:
    """Hard-link when on the same file system (instant, no extra space), copy otherwise."""
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path.resolve(), target)
        except OSError:
            shutil.copy2(path, target)


def build_model(settings: Mapping[str, Any], out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Write the base model (weights + tokenizer) into out_dir; return stats."""
    source = settings["source"]
    if source == "embedded":
        from asft.embedded.pretrain import EmbeddedBaseSpec, pretrain

        return pretrain(EmbeddedBaseSpec.from_dict(settings["embedded"]), out_dir, progress=progress)
    if source == "local" or settings.get("local_path"):
        folder = Path(settings.get("path") or settings["local_path"])
        check_model_folder(folder, "model.local_path")
        _copy_tree(folder, out_dir)
        return {"origin": str(folder)}
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            repo_id=settings["id"], revision=settings["revision"], local_dir=out_dir,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "tokenizer*"],
        )
    except Exception as error:
        raise RuntimeError(
            f"download of model {settings['id']}@{settings['revision']} failed: {error}. Offline? set "
            "HF_HUB_OFFLINE=1 with a filled HF_HOME cache, or model.local_path to a local folder."
        ) from error
    shutil.rmtree(out_dir / ".cache", ignore_errors=True)
    check_model_folder(out_dir, f"downloaded model {settings['id']}")
    return {"origin": f"hub:{settings['id']}@{settings['revision']}"}
