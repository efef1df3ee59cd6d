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
space), copied otherwise. Then the tokenizer is fixed as the config asks (`model.special_tokens`,
`model.missing_pad_token`: a tokenizer without a pad token gets '[PAD]' and mean-initialised
embedding rows, as upstream train_v2.py does for Llama-2); rewritten files replace the linked ones
by rename, so the source is never written to. The stage runs inside a temporary folder
(asft.workflow.artifacts.writing_artifact), so a failed or interrupted download leaves nothing that looks complete.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asft.core.job import StageJob
from asft.train.settings import EmbeddedModel, HubModel, LocalModel

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


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer; a broken one fails here, naming the folder, not three stages later."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as error:
        raise ValueError(f"model folder {folder}: the tokenizer does not load ({type(error).__name__}: {error})") \
            from error


def _describe(folder: Path) -> dict[str, Any]:
    """What the artifact holds: model type, size on disk, and what its tokenizer can do."""
    config = json.loads((folder / "config.json").read_text())
    tokenizer = load_tokenizer(folder)
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
        "pad_token": tokenizer.pad_token,
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


# --- tokenizer fixes: special tokens and a missing pad token ------------------------------------

#: The pad token upstream train_v2.py adds to a tokenizer without one (Stanford Alpaca's DEFAULT_PAD_TOKEN).
ADDED_PAD_TOKEN = "[PAD]"
MISSING_PAD_POLICIES = ("add", "eos")
STALE_SPECIAL_TOKEN_FILES = ("special_tokens_map.json", "added_tokens.json")


class MissingPadTokenError(ValueError):
    """A tokenizer without a pad token reached a stage that pads batches."""


def require_pad_token_id(tokenizer: Any, where: str) -> int:
    """The tokenizer's pad token id, or a clear error saying how the model stage supplies one."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise MissingPadTokenError(
            f"{where}: the tokenizer has no pad token, so batches cannot be padded. The model stage gives it one "
            "(model.missing_pad_token: add = a new '[PAD]' token with mean-initialised embeddings, as upstream; "
            "eos = pad with the eos token): use a model folder made by the model stage (one cached before it did "
            "this has none: delete that results/model/<key>/ to rebuild it), or add a pad token to the tokenizer"
        )
    return int(pad_id)


def _replace_files(new_dir: Path, folder: Path) -> list[str]:
    """Move every file of new_dir into folder, replacing same-named ones.

    A rename replaces the directory entry only: a file that was hard-linked from the hub cache or
    from the user's folder keeps its old bytes there (writing into it would corrupt the source).
    """
    moved = []
    for path in sorted(new_dir.rglob("*")):
        if path.is_file():
            target = folder / path.relative_to(new_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            moved.append(str(path.relative_to(new_dir)))
    return moved


def _mean_initialise_rows(model: Any, new_rows: range) -> None:
    """Set the rows of the new tokens (input and output embeddings) to the mean of the rows before them,
    as upstream's smart_tokenizer_and_embedding_resize does (the mean in fp32, stored in the model's dtype)."""
    import torch

    with torch.no_grad():
        tables = [model.get_input_embeddings().weight]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not tables[0]:  # tied embeddings share one table
            tables.append(output.weight)
        for weight in tables:
            mean = weight[: new_rows.start].float().mean(dim=0, keepdim=True)
            weight[new_rows.start : new_rows.stop] = mean.to(weight.dtype)


def _resize_embeddings(folder: Path, tokenizer: Any, first_new: int) -> dict[str, Any]:
    """Grow the model's embeddings to the tokenizer's size and save the model again (config included)."""
    import tempfile

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    rows_before = model.get_input_embeddings().weight.shape[0]
    rows_after = max(rows_before, len(tokenizer))  # a vocabulary padded beyond the tokenizer is never shrunk
    if rows_after > rows_before:
        model.resize_token_embeddings(rows_after, mean_resizing=False)
    _mean_initialise_rows(model, range(first_new, len(tokenizer)))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".resized-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        # The old weights go: a checkpoint saved as .bin or in other shards would shadow the new one.
        for pattern in (*WEIGHT_PATTERNS, "*.safetensors.index.json", "*.bin.index.json"):
            for old in folder.glob(pattern):
                old.unlink()
        _replace_files(Path(tmp), folder)
    return {"embedding_rows": [rows_before, rows_after], "new_token_ids": list(range(first_new, len(tokenizer))),
            "new_rows_init": "mean of the rows before them (input and output embeddings)"}


def _prepends_bos(tokenizer: Any) -> bool:
    """Whether encoding a text puts the BOS token before it (Llama's `<s>`; not Qwen)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("x")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def fix_tokenizer(folder: Path, *, special_tokens: Mapping[str, str], missing_pad_token: str) -> dict[str, Any]:
    """Apply `model.special_tokens` and the pad-token policy to the model folder; return what was done.

    Upstream train_v2.py, for a tokenizer without a pad token (Llama-2), adds '[PAD]', resizes the
    embeddings and sets the new input and output rows to the mean of the old ones; the base model of
    every later stage is this folder, so training, merging and evaluation all see the same vocabulary.
    Nothing is loaded beyond the tokenizer when there is nothing to do (the embedded default).
    """
    import tempfile

    if missing_pad_token not in MISSING_PAD_POLICIES:
        raise ValueError(f"model.missing_pad_token: unknown policy '{missing_pad_token}'; "
                         f"known: {', '.join(MISSING_PAD_POLICIES)}")
    folder = Path(folder)
    tokenizer = load_tokenizer(folder)
    size_before = len(tokenizer)
    done: dict[str, Any] = {}
    if special_tokens:
        before = {name: getattr(tokenizer, name, None) for name in special_tokens}
        prepends_bos = _prepends_bos(tokenizer)
        tokenizer.add_special_tokens(dict(special_tokens))
        if {"bos_token", "eos_token"} & set(special_tokens) and hasattr(tokenizer, "update_post_processor"):
            # A fast Llama tokenizer keeps prepending its old BOS otherwise; upstream's slow tokenizer
            # prepends the new one (train_v2.py sets bos to '</s>'), in training and at evaluation.
            tokenizer.add_bos_token = prepends_bos
            tokenizer.update_post_processor()
        done["special_tokens"] = {name: {"before": before[name], "after": getattr(tokenizer, name)}
                                  for name in special_tokens}
    if tokenizer.pad_token_id is None:
        if missing_pad_token == "eos":
            if tokenizer.eos_token is None:
                raise ValueError(f"model folder {folder}: model.missing_pad_token is 'eos' but the tokenizer has "
                                 "no eos token either")
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
        done["pad_token"] = {"policy": missing_pad_token, "token": tokenizer.pad_token, "id": tokenizer.pad_token_id}
    if not done:
        return {}
    if len(tokenizer) > size_before:
        done.update(_resize_embeddings(folder, tokenizer, first_new=size_before))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        written = set(_replace_files(Path(tmp), folder))
    # Older formats name special tokens in these files too; a stale copy would win over the new
    # tokenizer_config.json when loading (the fixes would be lost), so one not written again goes.
    for name in STALE_SPECIAL_TOKEN_FILES:
        if name not in written and (folder / name).exists():
            (folder / name).unlink()
    return done


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


def build_model(settings: EmbeddedModel | HubModel | LocalModel, out_dir: Path, *,
                progress: bool = True) -> dict[str, Any]:
    """Write the base model (weights + tokenizer) into out_dir; return stats."""
    out_dir = Path(out_dir)
    if isinstance(settings, EmbeddedModel):
        from asft.embedded.pretrain import pretrain

        stats = pretrain(settings.embedded, out_dir, progress=progress)
        # Its tokenizer pads with eos already: only special_tokens can change anything here.
        fixes = fix_tokenizer(out_dir, special_tokens=settings.special_tokens,
                              missing_pad_token=settings.missing_pad_token)
        return {**stats, "tokenizer_fixes": fixes} if fixes else stats
    local = settings.path if isinstance(settings, LocalModel) else settings.local_path
    if local:
        folder = Path(local).expanduser()
        check_model_folder(folder, "model.local_path")
        _copy_tree(folder, out_dir)
        origin: dict[str, Any] = {"origin": str(folder)}
    else:
        snapshot = hub_snapshot(settings.id, settings.revision)
        _copy_tree(snapshot, out_dir, HUB_PATTERNS)
        problem = missing_parts(out_dir)
        if problem:
            raise DownloadError(
                f"model '{settings.id}' (revision '{settings.revision}'): the snapshot {snapshot} has {problem}; "
                "it is incomplete (fill the cache again with network) or the repository has no safetensors "
                "weights (download it yourself and use model.local_path)"
            )
        origin = {"origin": f"hub:{settings.id}@{settings.revision}", "commit": snapshot.name}
    fixes = fix_tokenizer(out_dir, special_tokens=settings.special_tokens, missing_pad_token=settings.missing_pad_token)
    return {**origin, **_describe(out_dir), "tokenizer_fixes": fixes}


def run_model_stage(job: StageJob) -> dict[str, Any]:
    """The `model` stage's runner (asft.workflow.stages)."""
    import torch

    torch.set_num_threads(job.threads)
    return build_model(job.settings, job.out)
