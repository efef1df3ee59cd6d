"""Bad data files stop the workflow when it parses the config, naming the file, the line and the field.

Each case writes a bad file, points a preset layer at it and builds the plan the way the Snakefile
and `asft plan` do (`build_plan(load_config(...))`): the error is a ConfigError whose line is
`<setting>: <file>: line N | row I (counting from 0): <problem>`. The data job's own readers give the
same messages (never a bare UnicodeDecodeError or JSONDecodeError), and `snakemake -n` stops with
the message and no traceback. docs/reliability.md ("Bad input") is the table of these cases.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from asft.train.data import build_dataset, load_train_rows, read_jsonl, read_rows
from asft.train.settings import LocalData
from asft.workflow.config import ConfigError, load_config, parse_config
from asft.workflow.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())

GOOD = {"instruction": "What is 2 + 2?", "response": "\\boxed{4}"}
LATIN1_LINE = b'{"instruction": "caf\xe9", "response": "x"}\n'  # 0xe9 is 'é' in Latin-1, no UTF-8 byte


def jsonl(*rows: dict | list | str) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def preset(tmp_path: Path, layer: dict) -> Path:
    path = tmp_path / "bad_preset.yaml"
    path.write_text(yaml.safe_dump(layer))
    return path


def train_set(path: Path | str, **fields) -> dict:
    return {"train_sets": [{"name": "toy", "source": "local", "path": str(path), **fields}]}


def plan_error(tmp_path: Path, layer: dict) -> str:
    """The message of building the plan of the default config with `layer` on top (as the Snakefile does)."""
    with pytest.raises(ConfigError) as error:
        build_plan(load_config(preset(tmp_path, layer)))
    return str(error.value)


# --- the table: a bad file -> the message, at plan-build time ------------------------------------------

Case = Callable[[Path], tuple[dict, str]]


def missing_file(tmp: Path):
    return train_set(tmp / "toy.jsonl"), f"train_sets[toy].path: {tmp}/toy.jsonl does not exist"


def folder_without_filename(tmp: Path):
    write(tmp / "mirror" / "toy.jsonl", jsonl(GOOD))
    return train_set(tmp / "mirror"), (f"train_sets[toy].path: {tmp}/mirror is a folder: set "
                                       "train_sets[toy].filename to the file in it")


def folder_without_the_file(tmp: Path):
    (tmp / "mirror").mkdir()
    return train_set(tmp / "mirror", filename="toy.jsonl"), (
        f"train_sets[toy].path: {tmp}/mirror/toy.jsonl does not exist (no train_sets[toy].filename 'toy.jsonl' in "
        f"the folder {tmp}/mirror)")


def not_utf8_at_line_3(tmp: Path):
    write(tmp / "toy.jsonl", jsonl(GOOD, GOOD) + LATIN1_LINE)
    return train_set(tmp / "toy.jsonl"), (
        f"train_sets[toy].path: {tmp}/toy.jsonl: line 3: not UTF-8 text (byte 0xe9 at column 21)")


def invalid_json_at_line_2(tmp: Path):
    write(tmp / "toy.jsonl", jsonl(GOOD, '{"instruction": "a" "response": "b"}'))
    return train_set(tmp / "toy.jsonl"), (
        f"train_sets[toy].path: {tmp}/toy.jsonl: line 2: not JSON (Expecting ',' delimiter at column 21)")


def row_is_a_list(tmp: Path):
    write(tmp / "toy.jsonl", jsonl(GOOD, ["What is 2 + 2?", "4"]))
    return train_set(tmp / "toy.jsonl"), f"train_sets[toy].path: {tmp}/toy.jsonl: line 2: a list, not a JSON object"


def missing_column(tmp: Path):
    write(tmp / "toy.jsonl", jsonl({"question": "2 + 2?", "answer": "4"}))
    return train_set(tmp / "toy.jsonl"), (
        f"train_sets[toy].path: {tmp}/toy.jsonl: line 1: no column 'instruction' (train_sets[toy].prompt_field); "
        "the row has columns 'answer', 'question'; set train_sets[toy].prompt_field to the right one")


def null_response_at_line_12(tmp: Path):
    rows = [GOOD] * 10 + ["", {**GOOD, "response": None}]  # a blank line 11 is skipped, and still counted
    write(tmp / "toy.jsonl", jsonl(*rows))
    return train_set(tmp / "toy.jsonl"), (
        f"train_sets[toy].path: {tmp}/toy.jsonl: line 12: column 'response' is null, not text")


def number_as_prompt_with_custom_fields(tmp: Path):
    write(tmp / "toy.jsonl", jsonl({"problem": 7, "solution": "seven"}))
    return train_set(tmp / "toy.jsonl", prompt_field="problem", response_field="solution"), (
        f"train_sets[toy].path: {tmp}/toy.jsonl: line 1: column 'problem' is a number, not text")


def empty_file(tmp: Path):
    write(tmp / "toy.jsonl", b"\n  \n")
    return train_set(tmp / "toy.jsonl"), f"train_sets[toy].path: {tmp}/toy.jsonl: no rows (the file is empty)"


def json_list_with_a_string_row(tmp: Path):
    write(tmp / "toy.json", json.dumps([GOOD, "oops"]).encode())
    return train_set(tmp / "toy.json"), (
        f"train_sets[toy].path: {tmp}/toy.json: row 1 (counting from 0): a string, not a JSON object")


def json_list_that_is_not_json(tmp: Path):
    write(tmp / "toy.json", b'[\n {"instruction": "a", "response": "b"},\n {"instruction": }\n]\n')
    return train_set(tmp / "toy.json"), (
        f"train_sets[toy].path: {tmp}/toy.json: line 3: not JSON (Expecting value at column 18)")


def parquet_missing_column(tmp: Path):
    write_parquet(tmp / "toy.parquet", {"instruction": ["a", "b"], "answer": ["1", "2"]})
    return train_set(tmp / "toy.parquet"), (
        f"train_sets[toy].path: {tmp}/toy.parquet: no column 'response' (train_sets[toy].response_field); the file "
        "has columns 'instruction', 'answer'; set train_sets[toy].response_field to the right one")


def parquet_null_response(tmp: Path):
    write_parquet(tmp / "toy.parquet", {"instruction": ["a", "b", "c"], "response": ["1", "2", None]})
    return train_set(tmp / "toy.parquet"), (
        f"train_sets[toy].path: {tmp}/toy.parquet: row 2 (counting from 0): column 'response' is null, not text")


def parquet_that_is_not_parquet(tmp: Path):
    write(tmp / "toy.parquet", jsonl(GOOD))
    return train_set(tmp / "toy.parquet"), f"train_sets[toy].path: {tmp}/toy.parquet: not a readable parquet file ("


def hub_set_with_a_bad_local_mirror(tmp: Path):
    write(tmp / "mirror" / "numina_cot_10k.jsonl", jsonl(GOOD, {"instruction": "x"}))
    layer = {"train_sets": [{"name": "numina", "source": "hub", "repo": "chichi56/ASFT",
                             "filename": "numina_cot_10k.jsonl", "path": str(tmp / "mirror")}]}
    return layer, (f"train_sets[numina].path: {tmp}/mirror/numina_cot_10k.jsonl: line 2: no column 'response' "
                   "(train_sets[numina].response_field); the row has columns 'instruction'")


MEDQA_ROW = {"question": "Which organ makes insulin?", "answer_idx": "B",
             "options": {"A": "Liver", "B": "Pancreas", "C": "Kidney", "D": "Spleen"}}


def benchmark_layer(name: str, path: Path) -> dict:
    return {"eval": {"benchmarks": [*DEFAULT["eval"]["benchmarks"], name], "benchmark_files": {name: str(path)}}}


def benchmark_copy_without_its_answer(tmp: Path):
    row = {k: v for k, v in MEDQA_ROW.items() if k != "answer_idx"}
    write(tmp / "medqa.jsonl", jsonl(MEDQA_ROW, row))
    return benchmark_layer("medqa", tmp / "medqa.jsonl"), (
        f"eval.benchmark_files.medqa: {tmp}/medqa.jsonl line 2 lacks a field ('answer_idx'); "
        "columns: ['options', 'question']")


def benchmark_copy_not_utf8(tmp: Path):
    write(tmp / "medqa.jsonl", jsonl(MEDQA_ROW) + LATIN1_LINE)
    return benchmark_layer("medqa", tmp / "medqa.jsonl"), (
        f"eval.benchmark_files.medqa: {tmp}/medqa.jsonl: line 2: not UTF-8 text (byte 0xe9 at column 21)")


def benchmark_copy_missing(tmp: Path):
    return benchmark_layer("mmlu_medical", tmp / "mmlu.jsonl"), (
        f"eval.benchmark_files.mmlu_medical: {tmp}/mmlu.jsonl does not exist")


CASES: list[Case] = [
    missing_file, folder_without_filename, folder_without_the_file, not_utf8_at_line_3, invalid_json_at_line_2,
    row_is_a_list, missing_column, null_response_at_line_12, number_as_prompt_with_custom_fields, empty_file,
    json_list_with_a_string_row, json_list_that_is_not_json, parquet_missing_column, parquet_null_response,
    parquet_that_is_not_parquet, hub_set_with_a_bad_local_mirror, benchmark_copy_without_its_answer,
    benchmark_copy_not_utf8, benchmark_copy_missing,
]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_bad_file_stops_the_plan_naming_file_line_and_field(tmp_path, case):
    layer, expected = case(tmp_path)
    message = plan_error(tmp_path, layer)
    head, *lines = message.splitlines()
    assert head == "invalid configuration:" and len(lines) == 1, message
    assert lines[0].startswith("  " + expected), f"\n{lines[0]}\n  {expected}"


def test_every_bad_file_is_named_at_once(tmp_path):
    write(tmp_path / "a.jsonl", jsonl(GOOD, {"instruction": "x", "response": 3}))
    layer = {"train_sets": [{"name": "a", "source": "local", "path": str(tmp_path / "a.jsonl")},
                            {"name": "b", "source": "local", "path": str(tmp_path / "b.jsonl")}]}
    assert plan_error(tmp_path, layer).splitlines()[1:] == [
        f"  train_sets[a].path: {tmp_path}/a.jsonl: line 2: column 'response' is a number, not text",
        f"  train_sets[b].path: {tmp_path}/b.jsonl does not exist"]


def test_good_files_pass_and_hub_files_are_not_looked_for(tmp_path):
    write(tmp_path / "toy.jsonl", b"\xef\xbb\xbf" + jsonl(GOOD, GOOD))  # a BOM is no content
    write(tmp_path / "toy.json", json.dumps([GOOD]).encode())
    write_parquet(tmp_path / "toy.parquet", {"instruction": ["a"], "response": ["b"]})
    write(tmp_path / "medqa.jsonl", jsonl(MEDQA_ROW))
    layer = {"train_sets": [{"name": name, "source": "local", "path": str(tmp_path / f"toy.{name}")}
                            for name in ("jsonl", "json", "parquet")]
             + [{"name": "hub", "source": "hub", "repo": "nobody/nothing", "filename": "x.jsonl"}],
             **benchmark_layer("medqa", tmp_path / "medqa.jsonl")}
    plan = build_plan(load_config(preset(tmp_path, layer)))
    assert len(plan.nodes["data"]) == 4


def test_asft_plan_prints_the_message(tmp_path, capsys):
    from asft.ops.cli import main

    layer, expected = null_response_at_line_12(tmp_path)
    assert main(["plan", "--configfile", str(preset(tmp_path, layer)), "--results", str(tmp_path / "r")]) == 2
    assert "asft: error: invalid configuration:\n  " + expected in capsys.readouterr().err


def test_large_files_are_checked_in_part_streaming(tmp_path, monkeypatch):
    """Over LARGE_FILE_BYTES: the first HEAD_ROWS rows fully, the rest for UTF-8 only, in chunks cut after
    a newline (here 7 bytes, so lines span several chunks and the line numbers must still be exact)."""
    import asft.train.data_checks as checks

    monkeypatch.setattr(checks, "LARGE_FILE_BYTES", 100)
    monkeypatch.setattr(checks, "HEAD_ROWS", 3)
    monkeypatch.setattr(checks, "CHUNK_BYTES", 7)
    rows = jsonl(GOOD, GOOD, GOOD, "not json: past the rows checked", GOOD)
    write(tmp_path / "big.jsonl", rows)
    parse_config({**DEFAULT, **train_set(tmp_path / "big.jsonl")})  # the bad JSON at line 4 is the job's to find
    write(tmp_path / "big.jsonl", rows + jsonl(GOOD, "") + LATIN1_LINE + jsonl(GOOD))
    with pytest.raises(ConfigError, match=re.escape("big.jsonl: line 8: not UTF-8 text (byte 0xe9 at column 21)")):
        parse_config({**DEFAULT, **train_set(tmp_path / "big.jsonl")})
    write(tmp_path / "big.jsonl", rows + b'{"instruction": "no newline at the end \xff"}')
    with pytest.raises(ConfigError, match=re.escape("big.jsonl: line 6: not UTF-8 text (byte 0xff at column 40)")):
        parse_config({**DEFAULT, **train_set(tmp_path / "big.jsonl")})


# --- the data job's readers: the same messages, never a bare decode error ------------------------------

def test_the_data_job_names_file_and_line_of_bad_bytes_and_bad_json(tmp_path):
    bad_bytes = write(tmp_path / "bytes.jsonl", jsonl(GOOD, GOOD) + LATIN1_LINE)
    expected = f"{bad_bytes}: line 3: not UTF-8 text (byte 0xe9 at column 21)"
    for read in (read_jsonl, read_rows, load_train_rows):
        with pytest.raises(ValueError) as error:
            read(bad_bytes)
        assert str(error.value) == expected and not isinstance(error.value, UnicodeDecodeError)
    with pytest.raises(ValueError, match=re.escape(expected)):
        build_dataset(LocalData(path=str(bad_bytes)), tmp_path)

    bad_json = write(tmp_path / "rows.json", b'[{"instruction": "a", "response": "b"},\n {"instruction": "\xff"}]')
    with pytest.raises(ValueError, match=re.escape(f"{bad_json}: line 2: not UTF-8 text (byte 0xff at column 19)")):
        read_rows(bad_json)
    write(bad_json, b'[{"instruction": "a", "response": "b"},\n {"instruction" "a"}]')
    with pytest.raises(ValueError, match=re.escape(f"{bad_json}: line 2: not JSON (Expecting ':' delimiter")):
        build_dataset(LocalData(path=str(bad_json)), tmp_path)
    lines_json = write(tmp_path / "lines.json", jsonl(GOOD, "[1, 2]"))  # a .json file of JSON lines
    with pytest.raises(ValueError, match=re.escape(f"{lines_json}: line 2: a list, not a JSON object")):
        read_rows(lines_json)
    not_parquet = write(tmp_path / "rows.parquet", b"PAR1 but not really")
    with pytest.raises(ValueError, match=re.escape(f"{not_parquet}: not a readable parquet file")):
        build_dataset(LocalData(path=str(not_parquet)), tmp_path)


def test_the_benchmark_reader_names_the_line_of_bad_bytes(tmp_path):
    from asft.eval.benchmarks import read_checked_jsonl

    copy = write(tmp_path / "medqa.jsonl", jsonl(MEDQA_ROW) + LATIN1_LINE)
    with pytest.raises(ValueError, match=re.escape(f"{copy}: line 2: not UTF-8 text (byte 0xe9 at column 21)")):
        read_checked_jsonl(copy, None)


# --- config messages name each field once -----------------------------------------------------------

@pytest.mark.parametrize("patch, line", [
    ({"modes": ["sft", "asfd"]}, "modes: unknown mode 'asfd' (did you mean 'asft'?)"),
    ({"modes": []}, "modes: the list is empty; name at least one of"),
    ({"modes": ["sft", "sft"]}, "modes: a mode is listed twice"),
    ({"seeds": []}, "seeds: the list is empty; give at least one seed, e.g. [0]"),
    ({"seeds": [1, 1]}, "seeds: must be distinct non-negative integers, got [1, 1]"),
    ({"train_sets": []}, "train_sets: the list is empty"),
    ({"train_sets": [{"name": "x", "task": "mul"}] * 2}, "train_sets: names must be unique"),
    ({"train_sets": [{"name": "x", "source": "hub", "repo": "a/b"}]},
     "train_sets[x].filename: required when source is 'hub'"),
    ({"model": {"source": "hub"}}, "model.id: required when model.source is 'hub'"),
    ({"model": {"special_tokens": {"bos_token": ""}}}, "model.special_tokens: bos_token: the token text is empty"),
    ({"train": {"global_batch_size": 30, "per_device_batch_size": 4}},
     "train.global_batch_size: 30 is not a multiple of train.per_device_batch_size (4)"),
    ({"eval": {"benchmarks": ["math500"]}}, "eval.benchmarks: unknown benchmark 'math500' (did you mean 'math_oai' (MATH-500)?); known: aime24"),
    ({"table": {"target": ["gsm8k"]}}, "table.target: 'gsm8k' is not in eval.benchmarks"),
    ({"loss": {"kl_weight": -1}}, "loss.kl_weight: Input should be greater than or equal to 0"),
])
def test_config_messages_name_each_field_once(patch, line):
    raw = {key: {**DEFAULT[key], **value} if isinstance(value, dict) else value for key, value in patch.items()}
    with pytest.raises(ConfigError) as error:
        parse_config({**DEFAULT, **raw})
    head, first, *_ = str(error.value).splitlines()
    assert head == "invalid configuration:" and first.startswith("  " + line), first
    field = first.split(":")[0].strip()
    assert not first.startswith(f"  {field}: {field}") and "config:" not in first, first


# --- snakemake -n: the message, no traceback, no job ---------------------------------------------------

def test_snakemake_dry_run_stops_on_a_bad_file_with_the_message_only(tmp_path):
    layer, expected = null_response_at_line_12(tmp_path)
    config = preset(tmp_path, layer)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                             str(workdir), "-n", "--configfile", str(config)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-3000:]
    assert expected in text and "WorkflowError" in text, text[-3000:]
    assert "Traceback (most recent call last)" not in text, text[-3000:]
    assert not (workdir / "results").exists() and not (workdir / ".snakemake" / "asft" / "nodes").exists()


# --- the training data formats (docs/data.md, "Training data formats") ---------------------------------

CHAT = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]
CHAT_LAYER = {"tokenize": {"template": "chat", "max_length": 64}}


def conversations_read_as_alpaca(tmp: Path):
    write(tmp / "chat.jsonl", jsonl({"messages": CHAT}))
    return {**CHAT_LAYER, **train_set(tmp / "chat.jsonl")}, (
        f"train_sets[toy].path: {tmp}/chat.jsonl: line 1: no column 'instruction' (train_sets[toy].prompt_field); the "
        "row has columns 'messages'; set train_sets[toy].prompt_field to the right one (column 'messages' holds "
        "conversations: set train_sets[toy].format: messages)")


def sharegpt_read_as_messages(tmp: Path):
    write(tmp / "chat.jsonl", jsonl({"messages": [{"from": "human", "value": "2 + 2?"}, {"from": "gpt", "value": "4"}]}))
    return {**CHAT_LAYER, **train_set(tmp / "chat.jsonl", format="messages")}, (
        f"train_sets[toy].path: {tmp}/chat.jsonl: line 1: column 'messages' turn 1 of 2 has no 'role' (its keys: "
        "'from', 'value'); these are sharegpt's keys: set format: sharegpt")


def conversation_without_an_assistant_turn(tmp: Path):
    write(tmp / "chat.json", json.dumps([{"messages": CHAT}, {"messages": CHAT[:1]}]).encode())
    return {**CHAT_LAYER, **train_set(tmp / "chat.json", format="messages")}, (
        f"train_sets[toy].path: {tmp}/chat.json: row 1 (counting from 0): column 'messages' has no assistant turn "
        "(assistant): nothing to learn")


def parquet_alpaca_input_not_text(tmp: Path):
    write_parquet(tmp / "toy.parquet", {"instruction": ["a"], "input": [3], "response": ["b"]})
    return train_set(tmp / "toy.parquet"), (
        f"train_sets[toy].path: {tmp}/toy.parquet: column 'input' (train_sets[toy].input_field) holds int64, not text")


FORMAT_CASES: list[Case] = [conversations_read_as_alpaca, sharegpt_read_as_messages,
                            conversation_without_an_assistant_turn, parquet_alpaca_input_not_text]


@pytest.mark.parametrize("case", FORMAT_CASES, ids=[case.__name__ for case in FORMAT_CASES])
def test_bad_rows_of_each_format_stop_the_plan(tmp_path, case):
    layer, expected = case(tmp_path)
    message = plan_error(tmp_path, layer)
    head, *lines = message.splitlines()
    assert head == "invalid configuration:" and len(lines) == 1, message
    assert lines[0] == "  " + expected, f"\n{lines[0]}\n  {expected}"
