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


# --- the parse-time check of one training file -------------------------------------------------------

def check_train_file(path: Path, columns: Mapping[str, str]) -> None:
    """Check a local training file as the data job will read it (same readers, same order of checks).

    Streams the file once: every row of a JSON Lines file is decoded, parsed and its columns
    checked, except in files over LARGE_FILE_BYTES, where only the first HEAD_ROWS rows are and the
    rest is checked for UTF-8 (see LARGE_FILE_BYTES for why). Raises DataFileError.
    """
    path = Path(path)
    large = path.stat().st_size > LARGE_FILE_BYTES
    if path.suffix == ".parquet":
        _check_parquet(path, columns, HEAD_ROWS if large else None)
    elif path.suffix == ".json" and json_holds_a_list(path):
        _check_json_list(path, columns, large)
    else:
        _check_jsonl(path, columns, HEAD_ROWS if large else None)


def empty_file(path: Path | str) -> DataFileError:
    return DataFileError(f"{path}: no rows (the file is empty)")


def check_jsonl_file(path: Path, columns: Mapping[str, str] | None = None) -> None:
    """A JSON Lines file: UTF-8, every non-empty line a JSON object holding `columns` as text, not empty
    (only the first HEAD_ROWS rows of a file over LARGE_FILE_BYTES, then the rest's encoding)."""
    path = Path(path)
    large = path.stat().st_size > LARGE_FILE_BYTES
    _check_jsonl(path, columns or {}, HEAD_ROWS if large else None)


def _check_jsonl(path: Path, columns: Mapping[str, str], head: int | None) -> None:
    rows, last_line = 0, 0
    with open(path, "rb") as handle:
        for number, row in islice(jsonl_rows(handle, path), head):
            check_text_columns(row, columns, line_at(path, number))
            rows, last_line = rows + 1, number
        if head is not None and rows == head:
            check_utf8_rest(handle, path, last_line + 1)
    if rows == 0:
        raise empty_file(path)


def _check_json_list(path: Path, columns: Mapping[str, str], large: bool) -> None:
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
        check_text_columns(row, columns, row_at(path, index))


def _check_parquet(path: Path, columns: Mapping[str, str], head: int | None) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    parquet = open_parquet(path)
    schema = parquet.schema_arrow
    for column, setting in columns.items():
        if column not in schema.names:
            raise DataFileError(f"{path}: no column '{column}' ({setting}); the file has columns "
                                f"{', '.join(map(repr, schema.names)) or 'none'}; set {setting} to the right one")
        arrow_type = schema.field(column).type
        if not _is_text_type(arrow_type) and not pa.types.is_null(arrow_type):
            raise DataFileError(f"{path}: column '{column}' holds {arrow_type}, not text")
    rows = 0
    try:
        for batch in parquet.iter_batches(batch_size=4096, columns=list(columns)):
            for column in columns:
                values = batch.column(column)
                if values.null_count:
                    first = pc.index(values.is_null(), True).as_py()
                    raise DataFileError(f"{row_at(path, rows + first)}: column '{column}' is null, not text")
            rows += batch.num_rows
            if head is not None and rows >= head:
                break
    except (pa.ArrowException, OSError) as error:
        raise DataFileError(f"{path}: not a readable parquet file ({error})") from None
    if rows == 0:
        raise empty_file(path)
