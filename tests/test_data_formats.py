"""The training data formats users have: alpaca rows with an `input`, messages / ShareGPT conversations,
datasets by id through `datasets.load_dataset`, and local .jsonl / .json / .parquet files.

Nothing touches the network: `source: hub_dataset` is tested with local dataset folders, which
`datasets.load_dataset` loads through the same call as a hub id (and its cache is a tmp folder).
docs/data.md ("Formats") describes what each produces.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from asft.train.data import (
    IGNORE_INDEX,
    build_dataset,
    encode_batch,
    encode_conversations,
    load_train_rows,
    tokenize_dataset,
    write_jsonl,
)
from asft.train.data_checks import DataFileError
from asft.train.settings import HubData, HubDataset, LocalData, TokenizeSettings
from asft.train.templates import ALPACA, ALPACA_INPUT, training_prompt
from asft.workflow.config import ConfigError, load_config
from asft.workflow.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]

#: tatsu-lab/stanford_alpaca train.py, PROMPT_DICT, as published (the two prompts a row can get).
STANFORD_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
STANFORD_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

ALPACA_ROWS = [
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Name a prime number.", "input": "", "output": "7"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6"},
]
SHAREGPT = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[t["role"]], "value": t["content"]}
            for t in CONVERSATION]


@pytest.fixture(scope="module")
def tokenizer():
    from asft.embedded.tokenizer import build_tokenizer

    return build_tokenizer()  # byte-level, ChatML chat template, eos <|endoftext|>


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)  # all the tokenize stage loads
    return folder


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """datasets.load_dataset writes its arrow cache under a tmp folder, not ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Rows as .jsonl, .json (a list) or .parquet, by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        write_jsonl(path, rows)
    return path


def build(settings, out: Path) -> dict:
    """The data stage into `out` (the artifact folder the workflow would give it)."""
    out.mkdir(parents=True, exist_ok=True)
    return build_dataset(settings, out)


def labelled_spans(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of labelled tokens, in order."""
    spans, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans + ([tokenizer.decode(run)] if run else [])


def layer_plan(tmp_path: Path, layer: dict):
    path = tmp_path / "layer.yaml"
    path.write_text(yaml.safe_dump(layer))
    return build_plan(load_config(path))


def data_payload(plan) -> dict:
    (node,) = plan.nodes["data"].values()
    return node.settings.key_payload()


# --- 1. alpaca rows with an input ----------------------------------------------------------------------

def test_alpaca_prompts_are_stanford_alpacas_byte_for_byte():
    row = {"instruction": "Translate to French.", "input": "Good morning"}
    assert ALPACA_INPUT == STANFORD_PROMPT_INPUT and ALPACA == STANFORD_PROMPT_NO_INPUT
    assert training_prompt("alpaca", row["instruction"], input_text=row["input"]) == STANFORD_PROMPT_INPUT.format_map(row)
    assert training_prompt("alpaca", row["instruction"]) == STANFORD_PROMPT_NO_INPUT.format_map(row)
    assert training_prompt("alpaca", row["instruction"], input_text="") == training_prompt("alpaca", row["instruction"])
    # plain and chat: the instruction and the input joined by one newline (LLaMA-Factory's alpaca converter)
    assert training_prompt("plain", "Translate to French.", input_text="Good morning") == "Translate to French.\nGood morning"


def test_the_data_stage_keeps_a_non_empty_input(tmp_path):
    source = write_rows(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    stats = build(LocalData(path=str(source), response_field="output"), tmp_path / "out")
    assert stats["rows"] == 3
    written = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert written == [
        {"instruction": "Translate to French.", "response": "Bonjour", "input": "Good morning"},
        {"instruction": "Name a prime number.", "response": "7"},  # an empty input is no input (Stanford's `!= ""`)
        {"instruction": "Add the numbers.", "response": "5", "input": "2 and 3"},
    ]
    # input_field: null ignores the column; another name reads that column
    build(LocalData(path=str(source), response_field="output", input_field=None), tmp_path / "none")
    assert all("input" not in json.loads(line) for line in (tmp_path / "none" / "train.jsonl").read_text().splitlines())
    renamed = write_rows(tmp_path / "ctx.jsonl", [{"q": "Q", "context": "C", "a": "A"}])
    build(LocalData(path=str(renamed), prompt_field="q", response_field="a", input_field="context"),
                  tmp_path / "ctx")
    assert json.loads((tmp_path / "ctx" / "train.jsonl").read_text()) == {"instruction": "Q", "response": "A", "input": "C"}


def test_rows_without_input_give_the_same_file_and_key_as_before(tmp_path):
    rows = [{"instruction": f"Q{i}", "response": f"A{i}"} for i in range(5)]
    source = write_rows(tmp_path / "plain.jsonl", rows)
    build(LocalData(path=str(source)), tmp_path / "out")
    assert (tmp_path / "out" / "train.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in rows)
    # the new settings enter the data key only when set
    assert LocalData(path="x.jsonl").key_payload() == {
        "size": None, "subsample_seed": None, "source": "local", "path": "x.jsonl", "sha256": None,
        "prompt_field": "instruction", "response_field": "response"}
    paper = HubData(repo="chichi56/ASFT", filename="numina_cot_10k.jsonl", sha256="ab")
    assert set(paper.key_payload()) == {"size", "subsample_seed", "source", "repo", "filename", "revision", "sha256",
                                        "local_path", "prompt_field", "response_field"}
    assert "input_field" in LocalData(path="x.jsonl", input_field="context").key_payload()
    assert LocalData(path="x.jsonl", format="messages").key_payload()["format"] == "messages"


@pytest.mark.parametrize("template", ["plain", "alpaca", "chat"])
def test_an_input_enters_the_masked_prompt(tmp_path, tokenizer, tokenizer_folder, template):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", [
        {"instruction": "Translate to French.", "response": "Bonjour", "input": "Good morning"},
        {"instruction": "Name a prime number.", "response": "7"}])
    columns = load_train_rows(tmp_path / "data" / "train.jsonl")
    assert columns["input"] == ["Good morning", ""]
    tokenize_dataset(TokenizeSettings(template=template, max_length=512), tmp_path / "data", tokenizer_folder,
                     tmp_path / "out")
    from datasets import load_from_disk

    dataset = load_from_disk(str(tmp_path / "out" / "dataset"))
    end = ("<|im_end|>\n" if template == "chat" else "") + tokenizer.eos_token
    for (instruction, text, response), example in zip(
            [("Translate to French.", "Good morning", "Bonjour"), ("Name a prime number.", "", "7")], dataset):
        ids, labels = example["input_ids"], example["labels"]
        prompt = tokenizer(training_prompt(template, instruction, tokenizer, text), add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)] == prompt and set(labels[: len(prompt)]) == {IGNORE_INDEX}
        assert labelled_spans(tokenizer, ids, labels) == [response + end]
    # a row without input: exactly the ids and labels it had before inputs existed
    before = encode_batch(["Name a prime number."], ["7"], tokenizer, template=template, max_length=512,
                          overlong="truncate")
    assert dataset[1]["input_ids"] == before["input_ids"][0] and dataset[1]["labels"] == before["labels"][0]
    if template == "alpaca":
        assert tokenizer.decode(dataset[0]["input_ids"]).startswith(STANFORD_PROMPT_INPUT.format(
            instruction="Translate to French.", input="Good morning") + "Bonjour")


# --- 2. messages / ShareGPT conversations -----------------------------------------------------------

@pytest.mark.parametrize("fmt, turns, column", [("messages", CONVERSATION, "messages"),
                                                 ("sharegpt", SHAREGPT, "conversations")])
def test_conversations_become_messages(tmp_path, fmt, turns, column):
    source = write_rows(tmp_path / "chat.jsonl", [{column: turns, "id": 1}])
    build(LocalData(path=str(source), format=fmt), tmp_path / "out")
    assert json.loads((tmp_path / "out" / "train.jsonl").read_text()) == {"messages": CONVERSATION}


def test_every_assistant_turn_is_labelled_and_the_rest_masked(tokenizer):
    out = encode_conversations([CONVERSATION], tokenizer, template="chat", max_length=512, overlong="truncate")
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tokenizer.decode(ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        "4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n<|endoftext|>")
    # the first turn keeps its rendered end; the last ends as a `chat` response does (+ eos)
    assert labelled_spans(tokenizer, ids, labels) == ["4<|im_end|>\n", "6<|im_end|>\n<|endoftext|>"]
    masked = tokenizer.decode([t for t, label in zip(ids, labels) if label == IGNORE_INDEX])
    assert "Be brief." in masked and "2+2?" in masked and "And 3+3?" in masked
    assert out["fate"] == ["kept"] and out["n_response"] == [sum(label != IGNORE_INDEX for label in labels)]
    assert out["chat_fallback"] == [False]


def test_a_single_turn_conversation_is_an_alpaca_row_under_template_chat(tokenizer):
    one = encode_conversations([[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]],
                               tokenizer, template="chat", max_length=512, overlong="truncate")
    assert one == encode_batch(["Q?"], ["A."], tokenizer, template="chat", max_length=512, overlong="truncate")


def test_masks_follow_another_chat_template(tokenizer):
    """A Llama-2-like template with its own BOS and no end-of-turn token: the spans between renderings."""
    import copy

    llama = copy.deepcopy(tokenizer)
    llama.chat_template = (
        "{{ '<s>' }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' </s>' }}{% else %}{{ '<<SYS>>' + m['content']"
        " + '<</SYS>>' }}{% endif %}{% endfor %}")
    out = encode_conversations([CONVERSATION], llama, template="chat", max_length=512, overlong="truncate")
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tokenizer.decode(ids).startswith("<s><<SYS>>Be brief.<</SYS>>[INST] 2+2? [/INST] 4 </s>[INST]")
    assert labelled_spans(tokenizer, ids, labels) == [" 4 </s>", " 6 </s><|endoftext|>"]


def test_a_template_that_rewrites_earlier_turns_masks_them_and_says_so(tokenizer):
    """Like reasoning templates that drop earlier turns' <think> part: an earlier turn renders differently
    once later turns follow, so its span is not a prefix; it stays masked, and the row is counted."""
    import copy

    rewriting = copy.deepcopy(tokenizer)
    rewriting.chat_template = (
        "{% for m in messages %}{% set c = m['content'] %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{% set c = c.split('</think>')[-1] %}{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + c + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    thinking = [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "<think>hm</think>A"},
                {"role": "user", "content": "b?"}, {"role": "assistant", "content": "<think>ok</think>B"}]
    out = encode_conversations([thinking], rewriting, template="chat", max_length=512, overlong="truncate")
    assert labelled_spans(tokenizer, out["input_ids"][0], out["labels"][0]) == [
        "<think>ok</think>B<|im_end|>\n<|endoftext|>"]
    assert out["chat_fallback"] == [True]


def test_conversations_are_tokenized_end_to_end_and_need_template_chat(tmp_path, tokenizer, tokenizer_folder):
    source = write_rows(tmp_path / "chat.parquet", [{"conversations": SHAREGPT}] * 3)
    build(LocalData(path=str(source), format="sharegpt"), tmp_path / "data")
    stats = tokenize_dataset(TokenizeSettings(template="chat", max_length=512), tmp_path / "data", tokenizer_folder,
                             tmp_path / "out")
    assert stats["examples"] == 3 and stats["conversations"] == 3 and stats["chat_template_fallbacks"] == 0
    with pytest.raises(ValueError, match="holds conversations .* set tokenize.template: chat"):
        tokenize_dataset(TokenizeSettings(template="alpaca", max_length=512), tmp_path / "data", tokenizer_folder,
                         tmp_path / "out2")

    # truncation keeps the first max_length tokens: the later turns go; with no label left the row is dropped
    whole = encode_conversations([CONVERSATION], tokenizer, template="chat", max_length=512, overlong="truncate")
    labels = whole["labels"][0]
    first_end = next(i for i in range(len(labels)) if labels[i] != IGNORE_INDEX and labels[i + 1] == IGNORE_INDEX) + 1
    cut = encode_conversations([CONVERSATION], tokenizer, template="chat", max_length=first_end, overlong="truncate")
    assert cut["fate"] == ["truncated"] and cut["input_ids"][0] == whole["input_ids"][0][:first_end]
    assert labelled_spans(tokenizer, cut["input_ids"][0], cut["labels"][0]) == ["4<|im_end|>\n"]
    first_label = labels.index(next(label for label in labels if label != IGNORE_INDEX))
    none = encode_conversations([CONVERSATION], tokenizer, template="chat", max_length=first_label, overlong="truncate")
    assert none["fate"] == ["dropped_no_response"] and none["input_ids"] == [[]]
    dropped = encode_conversations([CONVERSATION], tokenizer, template="chat", max_length=first_end, overlong="drop")
    assert dropped["fate"] == ["dropped_overlong"]


def test_a_conversation_format_needs_template_chat_at_parse_time(tmp_path):
    source = write_rows(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    layer = {"train_sets": [{"name": "chat", "source": "local", "path": str(source), "format": "messages"}]}
    with pytest.raises(ConfigError, match=r"train_sets\[chat\]\.format: 'messages' rows are conversations, rendered "
                                          r"with the model's chat template: set tokenize.template: chat"):
        layer_plan(tmp_path, layer)
    plan = layer_plan(tmp_path, {**layer, "tokenize": {"template": "chat", "max_length": 256}})
    assert data_payload(plan)["format"] == "messages"


# --- 3. datasets by id, config and split (a local dataset folder, the same call) --------------------

def parquet_dataset(folder: Path, splits: dict[str, list[dict]]) -> Path:
    """A dataset folder as hub repositories hold them: data/<split>-00000-of-00001.parquet."""
    for split, rows in splits.items():
        write_rows(folder / "data" / f"{split}-00000-of-00001.parquet", rows)
    return folder


def test_hub_dataset_loads_a_split_through_load_dataset(tmp_path):
    folder = parquet_dataset(tmp_path / "alpaca", {"train": ALPACA_ROWS, "test": ALPACA_ROWS[:1]})
    stats = build(HubDataset(dataset=str(folder), split="train", response_field="output"), tmp_path / "out")
    assert stats["rows"] == 3 and stats["origin"] == f"dataset {folder} split train"
    written = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert written[0] == {"instruction": "Translate to French.", "response": "Bonjour", "input": "Good morning"}
    build(HubDataset(dataset=str(folder), split="test", response_field="output"), tmp_path / "test")
    assert len((tmp_path / "test" / "train.jsonl").read_text().splitlines()) == 1
    with pytest.raises(DataFileError, match=r"split valid: datasets.load_dataset failed: ValueError: Unknown split "
                                            r"\"valid\". Should be one of \['train', 'test'\]"):
        build(HubDataset(dataset=str(folder), split="valid"), tmp_path / "bad")
    with pytest.raises(DataFileError, match=r"row 0 \(counting from 0\): no column 'response' \(train_sets\[\]\."
                                            r"response_field\); the row has columns 'input', 'instruction', 'output'"):
        build(HubDataset(dataset=str(folder)), tmp_path / "bad")


def test_hub_dataset_reads_a_saved_dataset_and_conversations(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([{"messages": CONVERSATION}] * 2)}).save_to_disk(str(tmp_path / "saved"))
    build(HubDataset(dataset=str(tmp_path / "saved"), format="messages"), tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert rows == [{"messages": CONVERSATION}] * 2


def test_hub_dataset_offline_names_the_dataset_and_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataFileError, match=r"dataset nobody/nothing \(config x\) split train @ v1: datasets.load_dataset "
                                            r"failed: .*HF_HUB_OFFLINE is set"):
        build(HubDataset(dataset="nobody/nothing", config="x", revision="v1"), tmp_path / "out")


def test_hub_dataset_config_split_and_revision_are_in_the_key(tmp_path):
    layer = {"train_sets": [{"name": "alpaca", "source": "hub_dataset", "dataset": "tatsu-lab/alpaca",
                             "response_field": "output"}]}
    base = data_payload(layer_plan(tmp_path, layer))
    assert base == {"size": None, "subsample_seed": None, "source": "hub_dataset", "dataset": "tatsu-lab/alpaca",
                    "split": "train", "revision": "main", "prompt_field": "instruction", "response_field": "output"}
    for field, value in (("revision", "dce01c9b08f87459cf36a430d809084718273017"), ("split", "test"),
                         ("config", "default")):
        changed = {"train_sets": [{**layer["train_sets"][0], field: value}]}
        assert data_payload(layer_plan(tmp_path, changed))[field] == value
    with pytest.raises(ConfigError, match=r"train_sets\[x\]\.dataset: required when source is 'hub_dataset'"):
        layer_plan(tmp_path, {"train_sets": [{"name": "x", "source": "hub_dataset"}]})


# --- 4. local .jsonl, .json and .parquet files -------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_local_files_of_each_kind_give_the_same_rows(tmp_path, suffix):
    alpaca = write_rows(tmp_path / f"alpaca{suffix}", ALPACA_ROWS)
    chat = write_rows(tmp_path / f"chat{suffix}", [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}])
    layer = {"tokenize": {"template": "chat", "max_length": 256},
             "train_sets": [{"name": "alpaca", "source": "local", "path": str(alpaca), "response_field": "output"},
                            {"name": "chat", "source": "local", "path": str(chat), "format": "messages"}]}
    plan = layer_plan(tmp_path, layer)  # the parse-time check passes
    settings = {node.labels["train_set"]: node.settings for node in plan.nodes["data"].values()}
    build(settings["alpaca"], tmp_path / "a")
    build(settings["chat"], tmp_path / "c")
    assert [json.loads(line) for line in (tmp_path / "a" / "train.jsonl").read_text().splitlines()] == [
        {"instruction": r["instruction"], "response": r["output"], **({"input": r["input"]} if r["input"] else {})}
        for r in ALPACA_ROWS]
    assert [json.loads(line) for line in (tmp_path / "c" / "train.jsonl").read_text().splitlines()] == [
        {"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]


# --- 5. a wrong field: the file, the field asked for, the columns there are, at parse time -----------

def parse_error(tmp_path: Path, train_set: dict, template: str = "chat") -> str:
    layer = {"tokenize": {"template": template, "max_length": 256},
             "train_sets": [{"name": "toy", "source": "local", **train_set}]}
    with pytest.raises(ConfigError) as error:
        layer_plan(tmp_path, layer)
    return str(error.value).splitlines()[1].strip()


@pytest.mark.parametrize("suffix, where", [(".jsonl", "line 1"), (".json", "row 0 (counting from 0)")])
def test_a_wrong_prompt_field_names_file_field_and_columns(tmp_path, suffix, where):
    path = write_rows(tmp_path / f"x{suffix}", ALPACA_ROWS)
    assert parse_error(tmp_path, {"path": str(path), "prompt_field": "question", "response_field": "output"}) == (
        f"train_sets[toy].path: {path}: {where}: no column 'question' (train_sets[toy].prompt_field); the row has "
        "columns 'input', 'instruction', 'output'; set train_sets[toy].prompt_field to the right one")


def test_a_wrong_parquet_field_names_the_columns(tmp_path):
    path = write_rows(tmp_path / "x.parquet", ALPACA_ROWS)
    assert parse_error(tmp_path, {"path": str(path)}) == (
        f"train_sets[toy].path: {path}: no column 'response' (train_sets[toy].response_field); the file has columns "
        "'instruction', 'input', 'output'; set train_sets[toy].response_field to the right one")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_conversations_read_as_alpaca_point_at_format(tmp_path, suffix):
    path = write_rows(tmp_path / f"chat{suffix}", [{"messages": CONVERSATION}])
    message = parse_error(tmp_path, {"path": str(path)})
    assert "no column 'instruction' (train_sets[toy].prompt_field)" in message
    assert message.endswith("(column 'messages' holds conversations: set train_sets[toy].format: messages)")
    path = write_rows(tmp_path / f"share{suffix}", [{"conversations": SHAREGPT}])
    assert parse_error(tmp_path, {"path": str(path)}).endswith(
        "(column 'conversations' holds conversations: set train_sets[toy].format: sharegpt)")


@pytest.mark.parametrize("turns, fmt, problem", [
    (SHAREGPT, "messages", "column 'messages' turn 1 of 5 has no 'role' (its keys: 'from', 'value'); these are "
                           "sharegpt's keys: set format: sharegpt"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}], "messages",
     "column 'messages' turn 2 of 2: role 'bot' is not one of system, user, assistant"),
    ([{"role": "user", "content": "hi"}], "messages", "column 'messages' has no assistant turn (assistant): nothing to learn"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "messages",
     "column 'messages' turn 2 of 2: 'content' is null, not text"),
    ("hi", "messages", "column 'messages' is a string, not a list of turns"),
])
def test_bad_conversations_name_the_line_and_the_turn(tmp_path, turns, fmt, problem):
    path = write_rows(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, {"messages": turns}])
    assert parse_error(tmp_path, {"path": str(path), "format": fmt}) == f"train_sets[toy].path: {path}: line 2: {problem}"


def test_a_missing_conversation_column_names_the_setting(tmp_path):
    path = write_rows(tmp_path / "chat.jsonl", [{"dialog": CONVERSATION}])
    assert parse_error(tmp_path, {"path": str(path), "format": "messages"}) == (
        f"train_sets[toy].path: {path}: line 1: no column 'messages' (train_sets[toy].messages_field); the row has "
        "columns 'dialog'; set train_sets[toy].messages_field to the column holding the conversation")
    layer = {"tokenize": {"template": "chat", "max_length": 256}, "train_sets": [
        {"name": "toy", "source": "local", "path": str(path), "format": "messages", "messages_field": "dialog"}]}
    assert data_payload(layer_plan(tmp_path, layer))["messages_field"] == "dialog"


def test_an_input_that_is_not_text_is_named(tmp_path):
    path = write_rows(tmp_path / "x.jsonl", [{"instruction": "a", "input": 3, "response": "b"}])
    assert parse_error(tmp_path, {"path": str(path)}, template="plain") == (
        f"train_sets[toy].path: {path}: line 1: column 'input' (train_sets[toy].input_field) is a number, not text "
        "(or null, or absent)")
