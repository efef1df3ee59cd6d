"""Reading training files row by row, with errors that name the file, the line (or row) and the column.

Two users: the data stage's readers (`asft.train.data.read_rows`), and the checks the workflow runs
when it parses a configuration (`asft.workflow.input_files`), so that a bad local file stops
`snakemake -n` before any job starts. Both read through the same functions here, so a file that
passes the parse-time check is read by the job the same way, and both give the same messages:

    /data/toy.jsonl: line 3: not UTF-8 text (byte 0xff at column 12)
    /data/toy.jsonl: line 12: column 'response' is null, not text
    /data/toy.json: row 4 (counting from 0): a list, not a JSON object

JSON Lines are located by their 1-based line number; a .json list and a parquet file by their row
index from 0 (the standard library's JSON parser does not give a row's line, and parquet has none).

No torch, no pandas: this module is imported when the Snakefile is parsed. pyarrow is imported only
for a parquet file.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

#: Files above this size are checked in part at parse time: the first HEAD_ROWS rows fully, the
#: rest for UTF-8 only. The Snakefile is parsed by every `snakemake` call (and on a cluster by every
#: job), so the check must stay well under a second or two; JSON parsing runs at ~100-300 MB/s in
#: Python, UTF-8 validation at GB/s. The data job reads every row anyway and names any later bad one.
LARGE_FILE_BYTES = 200 * 1024 * 1024
HEAD_ROWS = 10_000
#: Bytes read at a time when only the encoding of a large file's rest is checked.
CHUNK_BYTES = 8 * 1024 * 1024

_TEXT_ARROW_TYPES = ("string", "large_string", "string_view")


class DataFileError(ValueError):
    """A data file that cannot be read as rows; the message names the file, the line or row, the column."""


def json_type(value: Any) -> str:
    """A value's kind in JSON's words (what a user sees in the file), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # parquet values: dates, bytes, ...


def line_at(path: Path | str, number: int) -> str:
    return f"{path}: line {number}"


def row_at(path: Path | str, index: int) -> str:
    return f"{path}: row {index} (counting from 0)"


# --- encoding ----------------------------------------------------------------------------------

def _not_utf8(where: str, line: bytes, offset: int) -> DataFileError:
    """`offset` is the first bad byte in `line`; what precedes it decodes, so its length is the column."""
    column = len(line[:offset].decode("utf-8", errors="replace")) + 1
    return DataFileError(f"{where}: not UTF-8 text (byte 0x{line[offset]:02x} at column {column})")


def check_utf8_block(block: bytes, path: Path | str, first_line: int) -> None:
    """A block of whole lines decodes as UTF-8; otherwise name the line and column of the first bad byte."""
    try:
        block.decode("utf-8")
    except UnicodeDecodeError as error:
        start = block.rfind(b"\n", 0, error.start) + 1
        end = block.find(b"\n", error.start)
        line = block[start:end if end >= 0 else len(block)]
        number = first_line + block.count(b"\n", 0, error.start)
        raise _not_utf8(line_at(path, number), line, error.start - start) from None


def check_utf8_rest(handle: BinaryIO, path: Path | str, first_line: int) -> None:
    """The rest of an open file decodes as UTF-8, read in chunks cut after a newline (so no character
    is split between two chunks and line numbers stay exact)."""
    number, carry = first_line, b""
    while chunk := handle.read(CHUNK_BYTES):
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        whole, carry = data[:cut], data[cut:]
        check_utf8_block(whole, path, number)
        number += whole.count(b"\n")
    check_utf8_block(carry, path, number)


def _decode_line(raw: bytes, path: Path | str, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(line_at(path, number), raw.rstrip(b"\r\n"), error.start) from None


# --- JSON Lines ----------------------------------------------------------------------------------

def jsonl_rows(handle: BinaryIO, path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each non-empty line of an open binary file; blank lines are skipped."""
    for number, raw in enumerate(handle, 1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # editors on Windows write one; it is no content
        text = _decode_line(raw, path, number)
        if not text.strip():
            continue
        yield number, _json_object(text, line_at(path, number))


def _json_object(text: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFileError(f"{where}: not JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise DataFileError(f"{where}: not JSON (nested too deeply)") from None
    if not isinstance(row, dict):
        raise DataFileError(f"{where}: {json_type(row)}, not a JSON object")
    return row


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSON Lines file (the data job reads them all)."""
    with open(path, "rb") as handle:
        return [row for _, row in jsonl_rows(handle, path)]


# --- a .json file: one list of objects ---------------------------------------------------------------

def json_holds_a_list(path: Path) -> bool:
    """Whether a .json file starts (after whitespace) with '[': a list of objects, else JSON Lines."""
    with open(path, "rb") as handle:
        while chunk := handle.read(4096):
            text = chunk.removeprefix(codecs.BOM_UTF8).lstrip()
            if text:
                return text.startswith(b"[")
    return False


def read_json_list(path: Path) -> list[dict[str, Any]]:
    """The rows of a .json file holding one list of objects."""
    data = Path(path).read_bytes().removeprefix(codecs.BOM_UTF8)
    check_utf8_block(data, path, 1)
    try:
        rows = json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as error:
        raise DataFileError(f"{line_at(path, error.lineno)}: not JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise DataFileError(f"{path}: not JSON (nested too deeply)") from None
    if not isinstance(rows, list):
        raise DataFileError(f"{path}: {json_type(rows)}, expected a list of JSON objects")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataFileError(f"{row_at(path, index)}: {json_type(row)}, not a JSON object")
    return rows


# --- parquet -------------------------------------------------------------------------------------

def open_parquet(path: Path) -> Any:
    """A pyarrow ParquetFile; a file that is not parquet (or is damaged) is named, not a pyarrow traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataFileError(f"{path}: not a readable parquet file ({error})") from None


def read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa

    parquet = open_parquet(path)
    try:
        return parquet.read().to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise DataFileError(f"{path}: not a readable parquet file ({error})") from None


def _is_text_type(arrow_type: Any) -> bool:
    value_type = getattr(arrow_type, "value_type", arrow_type)  # a dictionary-encoded column of strings
    return str(value_type) in _TEXT_ARROW_TYPES


# --- columns ---------------------------------------------------------------------------------------

def text_column_problem(row: Mapping[str, Any], column: str, setting: str) -> str | None:
    """What is wrong with `row[column]` as training text, or None. `setting` names the config field
    that chose the column (e.g. train_sets[toy].response_field), so a missing column says what to set."""
    if column not in row:
        columns = ", ".join(map(repr, sorted(row))) or "none"
        return f"no column '{column}' ({setting}); the row has columns {columns}; set {setting} to the right one"
    value = row[column]
    if not isinstance(value, str):
        return f"column '{column}' is {json_type(value)}, not text"
    return None


def check_text_columns(row: Mapping[str, Any], columns: Mapping[str, str], where: str) -> None:
    """Each of `columns` (column -> the setting naming it) holds text in `row`, else name where and which."""
    for column, setting in columns.items():
        problem = text_column_problem(row, column, setting)
        if problem:
            raise DataFileError(f"{where}: {problem}")


# --- row formats: alpaca (prompt/input/response columns), messages and sharegpt (conversations) --------

#: Per conversation format: the turn's role key, its text key, and the roles it may name -> the role
#: the chat template is given. ShareGPT's are LLaMA-Factory's default tags (human, gpt, system).
CONVERSATION_KEYS: dict[str, tuple[str, str, dict[str, str]]] = {
    "messages": ("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "sharegpt": ("from", "value", {"system": "system", "human": "user", "gpt": "assistant",
                                   "user": "user", "assistant": "assistant"}),
}
#: The conversation column when train_sets[].messages_field is not given.
DEFAULT_MESSAGES_FIELD = {"messages": "messages", "sharegpt": "conversations"}
#: Column names that say a file holds conversations (a hint when a row has no prompt column).
_CONVERSATION_COLUMNS = ("messages", "conversations", "conversation")


@dataclass(frozen=True)
class RowSpec:
    """What each training row must hold, and the config setting naming each column (for messages).

    text: required text columns; optional_text: text, null or absent (alpaca's `input`);
    conversation: (column, setting, format) of a messages/sharegpt conversation column.
    """

    text: Mapping[str, str] = field(default_factory=dict)
    optional_text: Mapping[str, str] = field(default_factory=dict)
    conversation: tuple[str, str, str] | None = None

    @classmethod
    def of(cls, settings: Any, setting: str) -> RowSpec:
        """The spec of a train set's settings (a TrainSetConfig or HubData/LocalData/HubDataset); `setting`
        prefixes the field names in messages, e.g. `train_sets[toy]`."""
        fmt = getattr(settings, "format", "alpaca")
        if fmt != "alpaca":
            column = settings.messages_field or DEFAULT_MESSAGES_FIELD[fmt]
            return cls(conversation=(column, f"{setting}.messages_field", fmt))
        text = {settings.prompt_field: f"{setting}.prompt_field", settings.response_field: f"{setting}.response_field"}
        extra = getattr(settings, "input_field", None)
        optional = {extra: f"{setting}.input_field"} if extra and extra not in text else {}
        return cls(text=text, optional_text=optional)

    @property
    def setting_prefix(self) -> str:
        names = [*self.text.values(), *self.optional_text.values()] + ([self.conversation[1]] if self.conversation else [])
        return names[0].rsplit(".", 1)[0] if names else "train_sets[]"


def _format_hint(row: Mapping[str, Any], spec: RowSpec) -> str:
    """A pointer to `format` when the row's columns look like the other kind of data."""
    prefix = spec.setting_prefix
    if spec.conversation is None:
        found = [c for c in _CONVERSATION_COLUMNS if isinstance(row.get(c), list)]
        if found:
            turns = row[found[0]]
            kind = "sharegpt" if turns and isinstance(turns[0], Mapping) and "from" in turns[0] else "messages"
            extra = "" if found[0] == DEFAULT_MESSAGES_FIELD[kind] else f" and {prefix}.messages_field: {found[0]}"
            return f" (column '{found[0]}' holds conversations: set {prefix}.format: {kind}{extra})"
    elif any(isinstance(row.get(c), str) for c in ("instruction", "prompt", "question")):
        return f" (the rows hold prompt/response columns: set {prefix}.format: alpaca)"
    return ""


def conversation_problem(value: Any, column: str, fmt: str) -> str | None:
    """What is wrong with `value` as a `fmt` conversation (messages, sharegpt), or None."""
    role_key, text_key, roles = CONVERSATION_KEYS[fmt]
    if not isinstance(value, list):
        return f"column '{column}' is {json_type(value)}, not a list of turns"
    if not value:
        return f"column '{column}' is an empty list of turns"
    for number, turn in enumerate(value, 1):
        where = f"column '{column}' turn {number} of {len(value)}"
        if not isinstance(turn, Mapping):
            return f"{where} is {json_type(turn)}, not an object with '{role_key}' and '{text_key}'"
        if role_key not in turn or text_key not in turn:
            keys = ", ".join(map(repr, sorted(turn))) or "none"
            other = "sharegpt" if fmt == "messages" else "messages"
            other_role, other_text, _ = CONVERSATION_KEYS[other]
            hint = f"; these are {other}'s keys: set format: {other}" if {other_role, other_text} <= set(turn) else ""
            return f"{where} has no '{role_key if role_key not in turn else text_key}' (its keys: {keys}){hint}"
        role = turn[role_key]
        if role not in roles:
            return f"{where}: {role_key} {role!r} is not one of {', '.join(roles)}"
        if not isinstance(turn[text_key], str):
            return f"{where}: '{text_key}' is {json_type(turn[text_key])}, not text"
    if not any(roles[turn[role_key]] == "assistant" for turn in value):
        return f"column '{column}' has no assistant turn ({', '.join(k for k, v in roles.items() if v == 'assistant')}): nothing to learn"
    return None


def normalise_conversation(value: list[Mapping[str, Any]], fmt: str) -> list[dict[str, str]]:
    """A checked conversation as chat-template messages: [{role: system|user|assistant, content}]."""
    role_key, text_key, roles = CONVERSATION_KEYS[fmt]
    return [{"role": roles[turn[role_key]], "content": turn[text_key]} for turn in value]


def row_problem(row: Mapping[str, Any], spec: RowSpec) -> str | None:
    """What is wrong with a training row under `spec`, or None; a missing column names the columns there are."""
    for column, setting in spec.text.items():
        problem = text_column_problem(row, column, setting)
        if problem:
            return problem + (_format_hint(row, spec) if column not in row else "")
    for column, setting in spec.optional_text.items():
        value = row.get(column)
        if value is not None and not isinstance(value, str):
            return f"column '{column}' ({setting}) is {json_type(value)}, not text (or null, or absent)"
    if spec.conversation is not None:
        column, setting, fmt = spec.conversation
        if column not in row:
            columns = ", ".join(map(repr, sorted(row))) or "none"
            return (f"no column '{column}' ({setting}); the row has columns {columns}; set {setting} to the "
                    f"column holding the conversation{_format_hint(row, spec)}")
        return conversation_problem(row[column], column, fmt)
    return None


def check_row(row: Mapping[str, Any], spec: RowSpec, where: str) -> None:
    problem = row_problem(row, spec)
    if problem:
        raise DataFileError(f"{where}: {problem}")


# --- the parse-time check of one training file -------------------------------------------------------

def check_train_file(path: Path, columns: Mapping[str, str] | RowSpec) -> None:
    """Check a local training file as the data job will read it (same readers, same order of checks).

    `columns`: a RowSpec, or the required text columns (column -> the setting naming it).

    Streams the file once: every row of a JSON Lines file is decoded, parsed and its columns
    checked, except in files over LARGE_FILE_BYTES, where only the first HEAD_ROWS rows are and the
    rest is checked for UTF-8 (see LARGE_FILE_BYTES for why). Raises DataFileError.
    """
    path = Path(path)
    spec = columns if isinstance(columns, RowSpec) else RowSpec(text=dict(columns))
    large = path.stat().st_size > LARGE_FILE_BYTES
    if path.suffix == ".parquet":
        _check_parquet(path, spec, HEAD_ROWS if large else None)
    elif path.suffix == ".json" and json_holds_a_list(path):
        _check_json_list(path, spec, large)
    else:
        _check_jsonl(path, spec, HEAD_ROWS if large else None)


def empty_file(path: Path | str) -> DataFileError:
    return DataFileError(f"{path}: no rows (the file is empty)")


def check_jsonl_file(path: Path, columns: Mapping[str, str] | None = None) -> None:
    """A JSON Lines file: UTF-8, every non-empty line a JSON object holding `columns` as text, not empty
    (only the first HEAD_ROWS rows of a file over LARGE_FILE_BYTES, then the rest's encoding)."""
    path = Path(path)
    large = path.stat().st_size > LARGE_FILE_BYTES
    _check_jsonl(path, RowSpec(text=dict(columns or {})), HEAD_ROWS if large else None)


def _check_jsonl(path: Path, spec: RowSpec, head: int | None) -> None:
    rows, last_line = 0, 0
    with open(path, "rb") as handle:
        for number, row in islice(jsonl_rows(handle, path), head):
            check_row(row, spec, line_at(path, number))
            rows, last_line = rows + 1, number
        if head is not None and rows == head:
            check_utf8_rest(handle, path, last_line + 1)
    if rows == 0:
        raise empty_file(path)


def _check_json_list(path: Path, spec: RowSpec, large: bool) -> None:
    if large:
        # One JSON document cannot be parsed in part with the standard library, and parsing all of
        # it here would hold it in memory at every parse: check the encoding; the job checks the rows.
        with open(path, "rb") as handle:
            check_utf8_rest(handle, path, 1)
        return
    rows = read_json_list(path)
    if not rows:
        raise empty_file(path)
    for index, row in enumerate(rows):
        check_row(row, spec, row_at(path, index))


def _check_parquet(path: Path, spec: RowSpec, head: int | None) -> None:
    import pyarrow.compute as pc

    parquet = open_parquet(path)
    schema = parquet.schema_arrow
    columns = dict(spec.text)
    if spec.conversation is not None:
        _check_parquet_conversations(parquet, path, spec, head)
        return
    for column, setting in columns.items():
        if column not in schema.names:
            raise DataFileError(f"{path}: no column '{column}' ({setting}); the file has columns "
                                f"{', '.join(map(repr, schema.names)) or 'none'}; set {setting} to the right one"
                                f"{_format_hint(_first_row(parquet), spec)}")
        _require_text_type(path, schema, column, f"column '{column}'")
    for column, setting in spec.optional_text.items():  # may be absent or null; text where present
        if column in schema.names:
            _require_text_type(path, schema, column, f"column '{column}' ({setting})")

    def no_nulls(batch: Any, before: int) -> None:
        for column in columns:
            values = batch.column(column)
            if values.null_count:
                first = pc.index(values.is_null(), True).as_py()
                raise DataFileError(f"{row_at(path, before + first)}: column '{column}' is null, not text")

    _scan_parquet(parquet, path, list(columns), 4096, head, no_nulls)


def _require_text_type(path: Path, schema: Any, column: str, what: str) -> None:
    """A parquet column holds text (or only nulls); else a DataFileError naming it."""
    import pyarrow as pa

    arrow_type = schema.field(column).type
    if not _is_text_type(arrow_type) and not pa.types.is_null(arrow_type):
        raise DataFileError(f"{path}: {what} holds {arrow_type}, not text")


def _scan_parquet(parquet: Any, path: Path, columns: list[str], batch_size: int, head: int | None,
                  check_batch: Any) -> None:
    """`check_batch(batch, rows before it)` on each batch of `columns`, up to `head` rows; a read error
    names the file as unreadable, and a file without rows is an empty file."""
    import pyarrow as pa

    rows = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            check_batch(batch, rows)
            rows += batch.num_rows
            if head is not None and rows >= head:
                break
    except (pa.ArrowException, OSError) as error:
        raise DataFileError(f"{path}: not a readable parquet file ({error})") from None
    if rows == 0:
        raise empty_file(path)


def _first_row(parquet: Any) -> dict[str, Any]:
    """The first row of a parquet file (for a hint), or {} when it has none or cannot be read."""
    import pyarrow as pa

    try:
        first = next(parquet.iter_batches(batch_size=1), None)
    except (pa.ArrowException, OSError):
        return {}
    return first.to_pylist()[0] if first is not None and first.num_rows else {}


def _check_parquet_conversations(parquet: Any, path: Path, spec: RowSpec, head: int | None) -> None:
    """A conversation column of a parquet file: present, and each row's turns as the data job needs them."""
    column, setting, _ = spec.conversation
    names = parquet.schema_arrow.names
    if column not in names:
        raise DataFileError(f"{path}: {row_problem(_first_row(parquet) or dict.fromkeys(names), spec)}")

    def turns_as_needed(batch: Any, before: int) -> None:
        for offset, row in enumerate(batch.to_pylist()):
            check_row(row, spec, row_at(path, before + offset))

    _scan_parquet(parquet, path, [column], 1024, head, turns_as_needed)
