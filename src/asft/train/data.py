"""Training data: the `data` stage (fetch, verify, normalise, subsample) and the `tokenize` stage.

data: rows come from an embedded task, a file of a Hugging Face dataset repository (through the
hub cache; HF_HUB_OFFLINE=1 resolves it from the cache alone), a dataset `datasets.load_dataset`
loads (a hub id, config, split and revision, or a local dataset folder), or a local file or folder.
A file is checked against its sha256 (the config's, or for the paper's files in `chichi56/ASFT` the
one in PAPER_FILES). Rows of the `alpaca` format have their prompt/response columns checked and
renamed to `instruction`/`response` (the upstream ASFT format; a non-empty input column is kept as
`input`); rows of the `messages` and `sharegpt` formats become `messages`, a list of
{role, content} turns. Then they are subsampled (size, seed). Output: `train.jsonl`.

tokenize: each row becomes `input_ids` and `labels` with the configured template; every prompt
token is -100, so the loss sees only response tokens and the eos that ends them. Prompt and
response are tokenized separately and concatenated, so the mask boundary is exact (see
docs/data.md for how this differs from upstream). A conversation is rendered with the model's chat
template and every assistant turn is labelled, every system and user turn masked. Over-length
examples are truncated or dropped; no packing (docs/data.md says why).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asft.core.files import sha256_file
from asft.core.job import StageJob
from asft.train.data_checks import (
    DataFileError,
    RowSpec,
    check_row,
    json_holds_a_list,
    normalise_conversation,
    read_json_list,
    read_jsonl_rows,
    read_parquet_rows,
    row_at,
)
from asft.train.modes import IGNORE_INDEX
from asft.train.settings import EmbeddedData, HubData, HubDataset, LocalData, TokenizeSettings
from asft.train.templates import training_prompt, user_text

TRAIN_FILE = "train.jsonl"
COLUMNS = ("instruction", "response")
INPUT = "input"  # an alpaca row's input, in train.jsonl only where it is non-empty
MESSAGES = "messages"  # a conversation's turns in train.jsonl: [{role, content}]

# Fates of a tokenized example (the `fate` column while tokenizing; counted in stats.json).
KEPT, TRUNCATED, DROPPED_OVERLONG, DROPPED_NO_RESPONSE = "kept", "truncated", "dropped_overlong", "dropped_no_response"


@dataclass(frozen=True)
class KnownFile:
    """A published training file whose content is pinned by its sha256 and size."""

    repo: str
    filename: str
    sha256: str
    bytes: int
    rows: int | None  # None where the upstream note gives only an approximate count


#: The ASFT paper's training files (Hugging Face dataset repository chichi56/ASFT), as published.
PAPER_REPO = "chichi56/ASFT"
PAPER_FILES: dict[str, KnownFile] = {
    f.filename.removesuffix(".jsonl"): f
    for f in (
        KnownFile(PAPER_REPO, "numina_cot_10k.jsonl",
                  "a172916f9661937772d123e614cf1066b6c0586d2a871a8548988750d5a96b18", 15204860, 10000),
        KnownFile(PAPER_REPO, "numina_cot_30k.jsonl",
                  "ff07c61ad51b3d3fccd7d683aa6e599a1079f81d637d6338525925a3e326024e", 45737694, 30000),
        KnownFile(PAPER_REPO, "numina_cot_100k.jsonl",
                  "0c978394aa05b4254b0094926dca56159d4edb2bd409e313439d8344a25a6d06", 153042944, 100000),
        KnownFile(PAPER_REPO, "train_medmcqa_alpaca_10k.jsonl",
                  "43c2aed3caf6be5afc973c5733d07029ec318e764c27f2cc77560210c51bca37", 7046934, None),
        KnownFile(PAPER_REPO, "magpie10k.jsonl",
                  "59cc795c1f45dcb3f67b9d10682df484433ca50a4d3a9a361f17848b0d5f0953", 34183565, None),
    )
}


def known_file(repo: str | None, filename: str | None) -> KnownFile | None:
    """The pinned entry of a hub file, if it is one of the paper's."""
    for entry in PAPER_FILES.values():
        if entry.repo == repo and entry.filename == filename:
            return entry
    return None


def expected_sha256(repo: str | None, filename: str | None) -> str | None:
    entry = known_file(repo, filename)
    return entry.sha256 if entry else None


# --- files -----------------------------------------------------------------------------------

def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file; a bad byte, bad JSON or a non-object names the file and the line
    (a DataFileError, a ValueError), never a bare UnicodeDecodeError or JSONDecodeError."""
    return read_jsonl_rows(Path(path))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (a list of objects, or JSON lines) or .parquet file.

    The same readers check the file when the workflow is parsed (asft.train.data_checks), so what
    passed there reads the same here; errors name the file and the line (JSON Lines) or row.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return read_parquet_rows(path)
    if path.suffix == ".json" and json_holds_a_list(path):
        return read_json_list(path)
    return read_jsonl(path)


def check_sha256(path: Path, expected: str | None, *, actual: str | None = None) -> str:
    """The file's sha256; a clear error naming the file and both hashes when it is not `expected`."""
    path = Path(path)
    actual = actual or sha256_file(path)
    if expected is not None and actual != expected.lower():
        raise ValueError(
            f"{path.name}: sha256 mismatch: got {actual}, expected {expected} ({path.stat().st_size} bytes at "
            f"{path}); the file is corrupt, truncated or a different version: delete it (or its cache entry) "
            "and download it again, or correct train_sets[].sha256"
        )
    return actual


# --- the data stage ----------------------------------------------------------------------------

def _hub_file(repo: str, filename: str, revision: str) -> Path:
    """A dataset repository file from the hub cache (downloaded into it when online)."""
    from huggingface_hub import hf_hub_download

    from asft.train.models import hub_cache_dir, hub_failure, hub_offline

    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision, repo_type="dataset",
                                    cache_dir=hub_cache_dir(), local_files_only=hub_offline()))
    except Exception as error:  # network, auth, missing file, not in the offline cache
        raise hub_failure(f"file '{filename}' of dataset", repo, revision, error,
                          local_hint="train_sets[].path", filename=filename) from error


def _local_file(path: str, filename: str | None) -> Path:
    local = Path(path).expanduser()
    if local.is_dir():
        if not filename:
            raise FileNotFoundError(f"train_sets[].path {local} is a folder: set train_sets[].filename to the file in it")
        local = local / filename
    if not local.is_file():
        raise FileNotFoundError(f"train set file {local} does not exist")
    return local


def locate_source(settings: HubData | LocalData) -> tuple[Path, str, dict[str, Any]]:
    """The file a non-embedded train set reads: (path, a human name for messages, provenance)."""
    if isinstance(settings, HubData) and not settings.local_path:
        path = _hub_file(settings.repo, settings.filename, settings.revision)
        origin = f"{settings.repo}/{settings.filename}@{settings.revision}"
        # the cache path is .../snapshots/<commit>/<filename>
        commit = path.parts[len(path.parts) - len(Path(settings.filename).parts) - 1]
        return path, origin, {"commit": commit}
    if isinstance(settings, HubData):
        local = _local_file(settings.local_path, settings.filename)
    else:
        local = _local_file(settings.path, settings.filename)
    return local, str(local), {}


def normalise_rows(rows: list[dict[str, Any]], settings: HubData | HubDataset | LocalData,
                   origin: str) -> list[dict[str, Any]]:
    """Rows in the upstream format: alpaca rows as {instruction, response} strings (and `input` where a
    row holds non-empty text in the input column), conversations as {messages: [{role, content}]}.
    The first bad row names the file, the row and the column (and the columns there are)."""
    if not rows:
        raise ValueError(f"{origin}: the training set is empty")
    spec = RowSpec.of(settings, "train_sets[]")
    out: list[dict[str, Any]] = []
    if spec.conversation is not None:
        column, _, fmt = spec.conversation
        for index, row in enumerate(rows):
            check_row(row, spec, row_at(origin, index))
            out.append({MESSAGES: normalise_conversation(row[column], fmt)})
        return out
    prompt, response = settings.prompt_field, settings.response_field
    extra = next(iter(spec.optional_text), None)
    for index, row in enumerate(rows):
        check_row(row, spec, row_at(origin, index))
        item = {"instruction": row[prompt], "response": row[response]}
        if extra and row.get(extra):  # Stanford Alpaca: `example.get("input", "") != ""`
            item[INPUT] = row[extra]
        out.append(item)
    return out


def load_hub_dataset(settings: HubDataset) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """The rows of `datasets.load_dataset(dataset, config, split=split, revision=revision)`, an origin for
    messages and provenance. A hub id and a local dataset folder (data files, or a saved dataset) take
    the same call; HF_HUB_OFFLINE=1 reads a hub id from the caches alone."""
    import os

    import datasets

    name = os.path.expanduser(settings.dataset)
    origin = (f"dataset {settings.dataset}" + (f" (config {settings.config})" if settings.config else "")
              + f" split {settings.split}" + ("" if os.path.isdir(name) else f" @ {settings.revision}"))
    try:
        loaded = datasets.load_dataset(name, name=settings.config, split=settings.split, revision=settings.revision)
    except Exception as error:  # unknown id, config or split, network, not in the offline cache
        detail = f"{type(error).__name__}: {error}".strip().splitlines()[0][:400]
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        advice = ("check train_sets[].dataset, config and split" + (
            "; HF_HUB_OFFLINE is set, so a hub dataset must already be in the datasets cache (load it once with "
            "network, or set dataset to a local folder)" if offline else "; for a hub id also the revision, your "
            "network and token"))
        raise DataFileError(f"{origin}: datasets.load_dataset failed: {detail}; {advice}") from error
    if isinstance(loaded, datasets.DatasetDict):  # a saved DatasetDict loaded without a split
        raise DataFileError(f"{origin}: holds splits {', '.join(loaded)}; set train_sets[].split to one")
    return loaded.to_list(), origin, {"fingerprint": loaded._fingerprint, "features": sorted(loaded.column_names)}


def subsample(rows: list[Any], size: int | None, seed: int | None, origin: str) -> list[Any]:
    """`size` rows drawn without replacement with `random.Random(seed)`; all rows when size is null."""
    if not size:
        return rows
    if size > len(rows):
        raise ValueError(f"{origin}: train_sets[].size is {size} but the file has only {len(rows)} rows; "
                         "lower size, or set it to null to use every row")
    return random.Random(seed).sample(rows, size)


def build_dataset(settings: EmbeddedData | HubData | HubDataset | LocalData, out_dir: Path) -> dict[str, Any]:
    """The `data` stage: write `train.jsonl` (instruction/response, or messages) into out_dir and return stats."""
    provenance: dict[str, Any] = {}
    if isinstance(settings, EmbeddedData):
        from asft.embedded.tasks import split

        train, _ = split(settings.task, settings.split_seed)
        rows = [example.as_train_row() for example in train]
        origin = f"embedded task {settings.task}"
    elif isinstance(settings, HubDataset):
        raw, origin, provenance = load_hub_dataset(settings)
        rows = normalise_rows(raw, settings, origin)
    else:
        path, origin, provenance = locate_source(settings)
        known = known_file(settings.repo, settings.filename) if isinstance(settings, HubData) else None
        expected = settings.sha256
        if known and expected == known.sha256 and path.stat().st_size != known.bytes:
            actual = sha256_file(path)  # the size differs, so does the hash: report both, and the sizes
            raise ValueError(
                f"{path.name}: sha256 mismatch: got {actual}, expected {expected}; the file has "
                f"{path.stat().st_size} bytes, the published one {known.bytes} (file {path}): partial download? "
                "delete the cached file and download it again"
            )
        provenance["sha256"] = check_sha256(path, expected)
        provenance["bytes"] = path.stat().st_size
        rows = normalise_rows(read_rows(path), settings, origin)
    if not rows:
        raise ValueError(f"{origin}: the training set is empty")
    total = len(rows)
    rows = subsample(rows, settings.size, settings.subsample_seed, origin)
    write_jsonl(Path(out_dir) / TRAIN_FILE, rows)
    return {"rows": len(rows), "source_rows": total, "origin": origin, **provenance}


def run_data_stage(job: StageJob) -> dict[str, Any]:
    """The `data` stage's runner (asft.workflow.stages)."""
    return build_dataset(job.settings, job.out)


# --- the tokenize stage ------------------------------------------------------------------------

def _special_prefix(tokenizer: Any) -> list[int]:
    """Tokens the tokenizer puts before text on its own (a BOS, e.g. Llama's <s>; none for Qwen)."""
    probe = "x"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def _chat_completions(instructions: Sequence[str], responses: Sequence[str], prompts: Sequence[str],
                      tokenizer: Any) -> tuple[list[str], list[bool]]:  # instructions: the user's text
    """The assistant turn as the chat template renders it (response + end-of-turn markup).

    Falls back to the bare response where the template's prompt is not a prefix of the whole
    conversation (some templates rewrite earlier turns); says for which rows it did.
    """
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                     for q, a in zip(instructions, responses)]
    rendered = tokenizer.apply_chat_template(conversations, tokenize=False)
    completions, fell_back = [], []
    for prompt, full, response in zip(prompts, rendered, responses):
        usable = full.startswith(prompt) and response in full[len(prompt):]
        completions.append(full[len(prompt):] if usable else response)
        fell_back.append(not usable)
    return completions, fell_back


def encode_batch(instructions: Sequence[str], responses: Sequence[str], tokenizer: Any, *, template: str,
                 max_length: int, overlong: str, prompt_boundary: str = "exact",
                 inputs: Sequence[str | None] | None = None) -> dict[str, list]:
    """Tokenize a batch: input_ids, labels, and per example its fate and length before truncation.

    exact (default): input_ids = [special prefix] + prompt + response + eos, each part tokenized on
    its own; labels = -100 on the prefix and the prompt, the ids themselves on the response and eos.
    upstream (train_v2.py): tokenize prompt + response + eos as one text and mask as many tokens as
    the prompt alone has; where a token spans the boundary (Qwen2's pre-tokenizer joins ':' and a
    following word), that token is masked and the response loses it.
    With the chat template the response is the rendered assistant turn (e.g. `...<|im_end|>\\n`),
    cut after the eos if it holds one, else ended by eos. Over-length: `truncate` keeps the first
    max_length tokens, `drop` drops the example; an example left with no response token is
    dropped either way. `inputs`: alpaca rows' inputs ('' or None: none; asft.train.templates says
    how an input enters each template's prompt).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; a response could not be ended")
    if prompt_boundary not in ("exact", "upstream"):
        raise ValueError(f"unknown prompt_boundary '{prompt_boundary}'; known: exact, upstream")
    inputs = [text or "" for text in inputs] if inputs is not None else [""] * len(instructions)
    prompts = [training_prompt(template, instruction, tokenizer, text) for instruction, text in zip(instructions, inputs)]
    if template == "chat":
        users = [user_text(instruction, text) for instruction, text in zip(instructions, inputs)]
        completions, fell_back = _chat_completions(users, responses, prompts, tokenizer)
    else:
        completions, fell_back = list(responses), [False] * len(responses)
    if prompt_boundary == "exact":
        pairs = _split_exact(prompts, completions, tokenizer, eos)
    else:
        pairs = _split_upstream(prompts, completions, tokenizer)
    examples = [(head + tail, [IGNORE_INDEX] * len(head) + tail) for head, tail in pairs]
    return _finish(examples, fell_back, max_length=max_length, overlong=overlong)


def _finish(examples: Sequence[tuple[list[int], list[int]]], fell_back: Sequence[bool], *, max_length: int,
            overlong: str) -> dict[str, list]:
    """The tokenize map's columns from (input ids, labels) per example: over-length ones truncated or
    dropped, and one left with no label to learn dropped; each with its fate and length before truncation."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "fate": [], "full_length": [], "n_response": [],
                            "chat_fallback": list(fell_back)}
    for ids, labels in examples:
        full_length, fate = len(ids), KEPT
        if len(ids) > max_length:
            if overlong == "drop":
                ids, labels, fate = [], [], DROPPED_OVERLONG
            else:
                ids, labels, fate = ids[:max_length], labels[:max_length], TRUNCATED
        n_response = sum(label != IGNORE_INDEX for label in labels)
        # position 0 predicts nothing (the model is scored on token t+1 from t), so it does not count
        if fate != DROPPED_OVERLONG and n_response - (bool(labels) and labels[0] != IGNORE_INDEX) <= 0:
            ids, labels, fate, n_response = [], [], DROPPED_NO_RESPONSE, 0  # no response token left to learn
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["fate"].append(fate)
        out["full_length"].append(full_length)
        out["n_response"].append(n_response)
    return out


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool) -> str | None:
    """The chat template's text of `messages`, or None where the template refuses them (e.g. no user turn)."""
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
    except Exception:  # a template's raise_exception (jinja2 TemplateError), or one that expects a user turn
        return None


def conversation_segments(messages: Sequence[Mapping[str, str]], tokenizer: Any) -> tuple[list[tuple[str, bool]], bool]:
    """A conversation as the chat template renders it, cut into (text, labelled) segments.

    Assistant turn i is the text between the template's rendering of turns [:i] with the generation
    prompt and of turns [:i+1] (for ChatML `{content}<|im_end|>\n`); it is labelled, everything
    around it masked. Where the template renders turns differently once later ones follow (so these
    renderings are not prefixes of the whole conversation, e.g. a template that drops earlier
    reasoning), that turn stays masked and the second value is True. Text after the last assistant
    turn is left out: it has nothing to learn.
    """
    full = _render(tokenizer, messages, generation_prompt=False)
    if full is None:
        raise ValueError(f"the chat template could not render a conversation (roles "
                         f"{', '.join(m['role'] for m in messages)})")
    segments: list[tuple[str, bool]] = []
    done, fell_back = 0, False
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], generation_prompt=True) if index else ""
        through = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if before is None or through is None or not (
                done <= len(before) and full.startswith(through) and through.startswith(before)):
            fell_back = True
            continue
        segments += [(full[done:len(before)], False), (full[len(before):len(through)], True)]
        done = len(through)
    return segments, fell_back


def encode_conversations(conversations: Sequence[Sequence[Mapping[str, str]]], tokenizer: Any, *, template: str,
                         max_length: int, overlong: str, prompt_boundary: str = "exact") -> dict[str, list]:
    """Tokenize a batch of conversations ([{role, content}]) with the chat template: every assistant turn
    labelled, every system and user turn (and the template's markup around them) -100.

    Each segment (asft.train.data.conversation_segments) is tokenized on its own and the ids
    concatenated, so every mask boundary is exact (prompt_boundary does not apply). The last assistant
    turn ends as a `chat` template response does: cut after the eos if it holds one, else + eos; an
    earlier turn keeps its rendered end (`<|im_end|>\n`). A single-turn conversation gives the same ids
    and labels as an alpaca row under template `chat`.
    """
    if template != "chat":
        raise ValueError(f"tokenize.template is '{template}' but the train set holds conversations (format messages "
                         "or sharegpt), which the model's chat template renders: set tokenize.template: chat")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; a response could not be ended")
    prefix = _special_prefix(tokenizer)
    prefix_text = tokenizer.decode(prefix) if prefix else ""
    cut = [conversation_segments(messages, tokenizer) for messages in conversations]
    texts = [text for segments, _ in cut for text, _ in segments]
    token_ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    examples = []
    for segments, _ in cut:
        ids: list[int] = []
        labels: list[int] = []
        if prefix and segments and not segments[0][0].startswith(prefix_text):
            ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)  # a template's own BOS keeps just that one
        parts = [(next(token_ids), labelled) for _, labelled in segments]
        last = max((i for i, (_, labelled) in enumerate(parts) if labelled), default=-1)
        for i, (tokens, labelled) in enumerate(parts):
            if i == last:
                tokens = tokens[: tokens.index(eos) + 1] if eos in tokens else [*tokens, eos]
            ids += tokens
            labels += tokens if labelled else [IGNORE_INDEX] * len(tokens)
        examples.append((ids, labels))
    return _finish(examples, [fell_back for _, fell_back in cut], max_length=max_length, overlong=overlong)


def _split_exact(prompts: Sequence[str], completions: Sequence[str], tokenizer: Any,
                 eos: int) -> list[tuple[list[int], list[int]]]:
    """(masked head, labelled tail) per example, prompt and completion tokenized apart."""
    prefix = _special_prefix(tokenizer)
    prefix_text = tokenizer.decode(prefix) if prefix else ""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    pairs = []
    for prompt_text, head, tail in zip(prompts, prompt_ids, completion_ids):
        if prefix and not prompt_text.startswith(prefix_text):
            head = prefix + head  # a chat template that writes its own BOS keeps just that one
        tail = tail[: tail.index(eos) + 1] if eos in tail else [*tail, eos]
        pairs.append((head, tail))
    return pairs


def _split_upstream(prompts: Sequence[str], completions: Sequence[str],
                    tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """(masked head, labelled tail) as upstream's preprocess: joint text, prompt-length mask."""
    eos_text = tokenizer.eos_token
    texts = []
    for prompt, completion in zip(prompts, completions):
        cut = completion.find(eos_text)
        completion = completion[: cut + len(eos_text)] if cut >= 0 else completion + eos_text
        texts.append(prompt + completion)
    full_ids = tokenizer(texts)["input_ids"]
    prompt_lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    return [(ids[:n], ids[n:]) for ids, n in zip(full_ids, prompt_lengths)]


class _Encoder:
    """The datasets.map function (a class, so worker processes get it by pickling)."""

    def __init__(self, tokenizer: Any, options: Mapping[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.options = dict(options)

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        if MESSAGES in batch:
            return encode_conversations(batch[MESSAGES], self.tokenizer, **self.options)
        return encode_batch(batch["instruction"], batch["response"], self.tokenizer, inputs=batch.get(INPUT),
                            **self.options)


def _features():
    from datasets import Features, List, Value

    return Features({
        "input_ids": List(Value("int32")), "labels": List(Value("int32")), "fate": Value("string"),
        "full_length": Value("int32"), "n_response": Value("int32"), "chat_fallback": Value("bool"),
    })


def load_train_rows(path: Path) -> dict[str, list]:
    """The data stage's rows as columns; a missing or non-text column names the file and the row.

    instruction/response rows give those columns, and `input` ('' where a row has none) when any row
    has one; conversations (rows of `messages`) give the column `messages`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the data stage that makes it has not completed")
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: the training set is empty")
    if MESSAGES in rows[0]:
        spec = RowSpec(conversation=(MESSAGES, "the data stage's messages", "messages"))
        for index, row in enumerate(rows):
            check_row(row, spec, f"{path}: row {index}")
        return {MESSAGES: [normalise_conversation(row[MESSAGES], "messages") for row in rows]}
    for index, row in enumerate(rows):
        for column in COLUMNS:
            if not isinstance(row.get(column), str):
                raise ValueError(f"{path}: row {index} has no text column '{column}' (columns: "
                                 f"{', '.join(sorted(row))}); expected the data stage's {' and '.join(COLUMNS)}")
        if not isinstance(row.get(INPUT, ""), str):
            raise ValueError(f"{path}: row {index}: column '{INPUT}' is not text")
    columns = {column: [row[column] for row in rows] for column in COLUMNS}
    if any(row.get(INPUT) for row in rows):
        columns[INPUT] = [row.get(INPUT, "") for row in rows]
    return columns


def run_tokenize_stage(job: StageJob) -> dict[str, Any]:
    """The `tokenize` stage's runner (asft.workflow.stages)."""
    return tokenize_dataset(job.settings, job.parents["data"], job.parents["model"], job.out,
                            num_proc=job.runtime.num_proc)


def _percentile(sorted_values: Sequence[int], q: float) -> int:
    return int(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def tokenize_dataset(
    settings: TokenizeSettings, data_dir: Path, model_dir: Path, out_dir: Path, *, num_proc: int = 1
) -> dict[str, Any]:
    """The `tokenize` stage: an arrow dataset of input_ids/labels in out_dir/dataset, plus stats.

    Batched (the tokenizer encodes 1000 texts per call) and parallel over `num_proc` processes;
    not cached by `datasets` (the artifact folder is the cache).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer

    options = settings.model_dump(include={"template", "max_length", "overlong", "prompt_boundary"})
    columns = load_train_rows(Path(data_dir) / TRAIN_FILE)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.model_max_length = 1 << 60  # we truncate ourselves; silences "sequence longer than" warnings
    conversations = MESSAGES in columns
    if conversations and options["template"] != "chat":
        raise ValueError(f"tokenize.template is '{options['template']}' but the train set holds conversations (format "
                         "messages or sharegpt), which the model's chat template renders: set tokenize.template: chat")
    if options["template"] == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenize.template is 'chat' but the tokenizer of {model_dir} has no chat template; "
                         "use template plain or alpaca, or a model with a chat template")
    _Encoder(tokenizer, options)({name: values[:1] for name, values in columns.items()})  # fail here, not in a worker
    n_rows = len(next(iter(columns.values())))
    n_proc = max(1, min(int(num_proc), n_rows // 1000 or 1))
    # The map writes arrow files (memory-mapped back, not pickled between processes) into a scratch
    # folder of the artifact, removed once the kept rows are saved.
    scratch = Path(out_dir) / ".tokenize-scratch"
    encoded = Dataset.from_dict(columns).map(
        _Encoder(tokenizer, options), batched=True, batch_size=1000, num_proc=n_proc if n_proc > 1 else None,
        remove_columns=list(columns), features=_features(), new_fingerprint="asft-tokenize",
        cache_file_name=str(scratch / "encoded.arrow"), desc="tokenize",
    )
    info = encoded.select_columns(["fate", "full_length", "n_response", "chat_fallback"]).to_dict()
    fates = info["fate"]
    full_lengths = sorted(info["full_length"])
    kept_rows = [i for i, fate in enumerate(fates) if fate in (KEPT, TRUNCATED)]
    if not kept_rows:
        raise ValueError(f"tokenize: every example was dropped (max_length {settings.max_length}, overlong "
                         f"'{settings.overlong}'; the median example has {_percentile(full_lengths, 0.5)} tokens)")
    lengths = [min(info["full_length"][i], settings.max_length) for i in kept_rows]
    kept = encoded if len(kept_rows) == len(fates) else encoded.select(kept_rows)
    kept = kept.remove_columns(["fate", "full_length", "n_response", "chat_fallback"])
    kept.save_to_disk(str(Path(out_dir) / "dataset"))
    n_kept = len(kept)
    del kept, encoded
    shutil.rmtree(scratch, ignore_errors=True)
    stats = {
        "examples": n_kept,
        "source_examples": len(fates),
        "kept_whole": fates.count(KEPT),
        "truncated": fates.count(TRUNCATED),
        "dropped": fates.count(DROPPED_OVERLONG) + fates.count(DROPPED_NO_RESPONSE),
        "dropped_overlong": fates.count(DROPPED_OVERLONG),
        "dropped_no_response": fates.count(DROPPED_NO_RESPONSE),
        "tokens": sum(lengths),
        "response_tokens": sum(info["n_response"][i] for i in kept_rows),
        "max_length_seen": max(lengths),
        "length_before_truncation": {
            "p50": _percentile(full_lengths, 0.5), "p90": _percentile(full_lengths, 0.9),
            "p99": _percentile(full_lengths, 0.99), "max": full_lengths[-1],
        },
        **({"chat_template_fallbacks": sum(info["chat_fallback"])} if options["template"] == "chat" else {}),
        **({"conversations": len(fates)} if conversations else {}),
        **options,
    }
    (Path(out_dir) / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


# --- batches ----------------------------------------------------------------------------------

def pad_collator(pad_id: int | None):
    """A collate function: right-pad input_ids with pad_id, labels with -100 (IGNORE_INDEX); the attention
    mask marks real tokens. The trainer's batches, and the drift measure's."""
    if pad_id is None:  # torch.full would fail later with "fill_value must be Number"
        from asft.train.models import MissingPadTokenError

        raise MissingPadTokenError(
            "training: the tokenizer has no pad token, so batches cannot be padded; the model stage gives it one "
            "(model.missing_pad_token: add | eos), so train from the folder the model stage made"
        )

    import torch  # only the trainer and the drift measure batch; the data stages never load torch

    def collate(features: list[Mapping[str, list[int]]]) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate
