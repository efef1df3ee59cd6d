"""Training data: the `data` stage (fetch, verify, subsample) and the `tokenize` stage.

Rows are jsonl `{"instruction": ..., "response": ...}` (the upstream ASFT format). Tokenized
examples hold `input_ids` and `labels`, where every prompt token is -100, so the loss sees only
response tokens (and the eos that ends them).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asft.artifacts import sha256_file
from asft.templates import training_prompt

TRAIN_FILE = "train.jsonl"
IGNORE = -100


def write_jsonl(path: Path, rows: list[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: line {number} is not JSON ({error})") from None
    return rows


def check_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(f"{path.name}: sha256 mismatch: got {actual}, expected {expected} (file {path})")


def _fetch_hub_file(settings: Mapping[str, Any], dest: Path) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        cached = hf_hub_download(
            repo_id=settings["repo"], filename=settings["filename"], revision=settings["revision"], repo_type="dataset"
        )
    except Exception as error:  # network, auth, missing file: say which file failed
        raise RuntimeError(
            f"download of {settings['repo']}/{settings['filename']}@{settings['revision']} failed: {error}. "
            "Offline? set HF_HUB_OFFLINE=1 with a filled HF_HOME cache, or train_sets[].path to a local copy."
        ) from error
    shutil.copyfile(cached, dest)
    return dest


def _normalise_rows(rows: list[dict[str, Any]], settings: Mapping[str, Any], source: str) -> list[dict[str, str]]:
    prompt_field = settings.get("prompt_field", "instruction")
    response_field = settings.get("response_field", "response")
    out = []
    for index, row in enumerate(rows):
        for name in (prompt_field, response_field):
            if not isinstance(row.get(name), str):
                raise ValueError(f"{source}: row {index} has no string column '{name}' (columns: {sorted(row)})")
        out.append({"instruction": row[prompt_field], "response": row[response_field]})
    return out


def build_dataset(settings: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """The `data` stage: write `train.jsonl` into out_dir and return stats."""
    source = settings["source"]
    if source == "embedded":
        from asft.embedded.tasks import split

        train, _ = split(settings["task"], int(settings["split_seed"]))
        rows = [example.as_train_row() for example in train]
        origin = f"embedded task {settings['task']}"
    else:
        raw = out_dir / "raw.jsonl"
        if source == "hub" and not settings.get("local_path"):
            _fetch_hub_file(settings, raw)
            origin = f"{settings['repo']}/{settings['filename']}"
        else:
            local = Path(settings.get("local_path") or settings["path"])
            if not local.is_file():
                raise FileNotFoundError(f"train set file {local} does not exist")
            shutil.copyfile(local, raw)
            origin = str(local)
        check_sha256(raw, settings.get("sha256"))
        rows = _normalise_rows(read_jsonl(raw), settings, origin)
        raw.unlink()
    if not rows:
        raise ValueError(f"{origin}: the training set is empty")
    total = len(rows)
    if settings.get("size"):
        if settings["size"] > total:
            raise ValueError(f"{origin}: size {settings['size']} asked but only {total} rows")
        rows = random.Random(settings["subsample_seed"]).sample(rows, settings["size"])
    write_jsonl(out_dir / TRAIN_FILE, rows)
    return {"rows": len(rows), "source_rows": total, "origin": origin}


def encode_example(
    instruction: str, response: str, tokenizer: Any, *, template: str, max_length: int, overlong: str
) -> tuple[list[int], list[int], str]:
    """Token ids and labels of one example, and its fate: 'kept', 'truncated' or 'dropped'.

    Prompt and response are tokenized separately so the prompt mask is exact at the boundary.
    """
    prompt_ids = tokenizer(training_prompt(template, instruction, tokenizer), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + response_ids
    labels = [IGNORE] * len(prompt_ids) + response_ids
    fate = "kept"
    if len(ids) > max_length:
        if overlong == "drop":
            return [], [], "dropped"
        ids, labels, fate = ids[:max_length], labels[:max_length], "truncated"
    if all(label == IGNORE for label in labels[1:]):
        return [], [], "dropped"  # truncation left no response token to learn from
    return ids, labels, fate


def tokenize_dataset(
    settings: Mapping[str, Any], data_dir: Path, model_dir: Path, out_dir: Path, *, num_proc: int = 1
) -> dict[str, Any]:
    """The `tokenize` stage: an arrow dataset of input_ids/labels, plus stats.json."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_list(read_jsonl(data_dir / TRAIN_FILE))
    options = {k: settings[k] for k in ("template", "max_length", "overlong")}

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": [], "fate": []}
        for instruction, response in zip(batch["instruction"], batch["response"]):
            ids, labels, fate = encode_example(instruction, response, tokenizer, **options)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["fate"].append(fate)
        return out

    encoded = dataset.map(
        encode, batched=True, num_proc=num_proc if num_proc > 1 else None,
        remove_columns=dataset.column_names, desc="tokenize",
    )
    fates = encoded["fate"]
    encoded = encoded.filter(lambda row: row["fate"] != "dropped").remove_columns("fate")
    if len(encoded) == 0:
        raise ValueError(f"tokenize: every example was dropped (max_length {settings['max_length']} too small?)")
    encoded.save_to_disk(str(out_dir / "dataset"))
    lengths = [len(ids) for ids in encoded["input_ids"]]
    stats = {
        "examples": len(encoded),
        "truncated": fates.count("truncated"),
        "dropped": fates.count("dropped"),
        "tokens": sum(lengths),
        "response_tokens": sum(sum(label != IGNORE for label in labels) for labels in encoded["labels"]),
        "max_length_seen": max(lengths),
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
