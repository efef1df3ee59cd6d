"""Published numbers to show beside ours (config/published.yaml): read and checked before any job runs.

Each table names its source; each row its train set and mode, then accuracies by benchmark and the
average the source printed. Printed averages are checked against their cells, so a mistyped number
is caught on load, and a real slip of the source (Table 1's four math rows) must be declared.
Light to import (yaml only): the config checks its `table.published` with it at parse time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asft.core.names import did_you_mean
from asft.eval.benchmarks import available_benchmarks

PUBLISHED_FILE = Path(__file__).resolve().parents[3] / "config" / "published.yaml"
#: Every published row is keyed by these (the results table's grouping columns).
ROW_KEYS = ("train_set", "mode")
#: The published rows' key for the average the source printed (compared with our `target` column).
AVERAGE_KEY = "target"
#: A published row whose printed average is not the mean of its printed cells says so with this flag.
DIFFERS_FLAG = "avg_printed_differs"
#: A table's `decimals`: how many its source prints (Table 1 and 2: two; Table 3: one). A printed average
#: within half a unit of its last digit of the mean of its cells is that mean.
DECIMALS_KEY = "decimals"
DEFAULT_DECIMALS = 2


def rounding_tolerance(decimals: int = DEFAULT_DECIMALS) -> float:
    """Half a unit of the last printed digit (the epsilon absorbs binary floating point)."""
    return 0.5 * 10.0 ** -decimals + 1e-9
#: A table of other numbers than accuracies names them (the paper's Table 4: `metrics: [hours, memory_gb]`).
METRICS_KEY = "metrics"
#: An accuracy table may name the cost table of the same setting (shown in table.md's "Training cost").
COST_KEY = "cost"


def load_published(name: str | None, path: Path = PUBLISHED_FILE) -> dict[str, Any] | None:
    """A named table of published numbers (config/published.yaml), checked, or None."""
    if not name:
        return None
    tables = read_published_file(path)
    if name not in tables:
        raise ValueError(f"table.published: no table '{name}' in {path}; known: {', '.join(sorted(tables))}")
    check_published_table(name, tables[name], path)
    return tables[name]


def read_published_file(path: Path = PUBLISHED_FILE) -> dict[str, Any]:
    """Every table of a published-numbers file, by name (unchecked: see check_published_table)."""
    import yaml

    tables = yaml.safe_load(Path(path).read_text())
    if not isinstance(tables, dict):
        raise ValueError(f"{path}: expected a mapping of table names to tables, got {type(tables).__name__}")
    return tables


def published_cell_mean(row: Mapping[str, Any], benchmarks: Sequence[str]) -> float:
    """The mean of a published row's cells on `benchmarks`; NaN unless every one is there."""
    cells = [row.get(b) for b in benchmarks]
    if not benchmarks or any(c is None for c in cells):
        return math.nan
    return sum(float(c) for c in cells) / len(cells)


def printed_average_differs(row: Mapping[str, Any], benchmarks: Sequence[str],
                            decimals: int = DEFAULT_DECIMALS) -> bool:
    """Whether the row's printed average is not the mean of its cells (beyond rounding to `decimals`)."""
    mean = published_cell_mean(row, benchmarks)
    if AVERAGE_KEY not in row or math.isnan(mean):
        return False
    return abs(float(row[AVERAGE_KEY]) - mean) > rounding_tolerance(decimals)


def check_published_table(name: str, table: Any, path: Path = PUBLISHED_FILE) -> None:
    """Raise ValueError, naming the file and field, for anything the results table could misread.

    Besides types and names, the printed averages are checked against their cells, so a mistyped cell
    or average is caught on load, and a real discrepancy in the source must be declared with
    `avg_printed_differs: true` (the printed value is then kept and shown beside the mean of the cells).
    """
    where = f"{path}: {name}"
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a mapping with source, protocol and rows")
    if not isinstance(table.get("source"), str) or not table["source"].strip():
        raise ValueError(f"{where}.source: missing; every published number names where it was printed")
    if METRICS_KEY in table:
        _check_metrics_table(table, where)
        return
    if table.get(COST_KEY) is not None:
        cost = table[COST_KEY]
        tables = read_published_file(path)
        if not isinstance(cost, str) or cost not in tables or METRICS_KEY not in (tables[cost] or {}):
            raise ValueError(f"{where}.{COST_KEY}: expected the name of a cost table (one with `{METRICS_KEY}`) "
                             f"in {path}, got {cost!r}")
        check_published_table(cost, tables[cost], path)
    known = available_benchmarks()
    average_of = table.get("average_of")
    if average_of is not None:
        if not isinstance(average_of, list) or not average_of or len(set(average_of)) != len(average_of):
            raise ValueError(f"{where}.average_of: expected a list of distinct benchmark names, got {average_of!r}")
        for bench in average_of:
            _check_benchmark_name(bench, known, f"{where}.average_of")
    decimals = table.get(DECIMALS_KEY, DEFAULT_DECIMALS)
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 4:
        raise ValueError(f"{where}.{DECIMALS_KEY}: expected how many decimals the source prints (0 to 4), "
                         f"got {decimals!r}")
    rows = table.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}.rows: expected a non-empty list of rows")
    seen: set[tuple[str, str]] = set()
    for index, row in enumerate(rows):
        at = f"{where}.rows[{index}]"
        _check_published_row(row, at, known, average_of, decimals)
        key = (str(row["train_set"]), str(row["mode"]))
        if key in seen:
            raise ValueError(f"{at}: a second row for train_set {key[0]!r}, mode {key[1]!r}")
        seen.add(key)


def _check_metrics_table(table: Mapping[str, Any], where: str) -> None:
    """A table of other numbers than accuracies (`metrics: [hours, memory_gb]`: the paper's Table 4): rows
    keyed by train_set, mode and optionally method (full or lora), each metric a number >= 0."""
    metrics = table[METRICS_KEY]
    if not isinstance(metrics, list) or not metrics or len(set(metrics)) != len(metrics) or not all(
            isinstance(m, str) and m for m in metrics):
        raise ValueError(f"{where}.{METRICS_KEY}: expected a list of distinct metric names, got {metrics!r}")
    if "average_of" in table:
        raise ValueError(f"{where}.average_of: a table of `{METRICS_KEY}` has no average")
    rows = table.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}.rows: expected a non-empty list of rows")
    seen: set[tuple[str, str, Any]] = set()
    for index, row in enumerate(rows):
        at = f"{where}.rows[{index}]"
        if not isinstance(row, Mapping):
            raise ValueError(f"{at}: expected a mapping with train_set, mode and numbers, got {row!r}")
        for field in ROW_KEYS:
            if not isinstance(row.get(field), str) or not row[field]:
                raise ValueError(f"{at}.{field}: missing (every row names its train_set and mode)")
        if row.get("method", "full") not in ("full", "lora"):
            raise ValueError(f"{at}.method: expected full or lora, got {row['method']!r}")
        for key, value in row.items():
            if key in (*ROW_KEYS, "method"):
                continue
            if key not in metrics:
                hint = did_you_mean(str(key), metrics)
                raise ValueError(f"{at}.{key}: not one of the table's metrics{hint}: {', '.join(metrics)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{at}.{key}: expected a number >= 0, got {value!r}")
        key = (str(row["train_set"]), str(row["mode"]), row.get("method"))
        if key in seen:
            raise ValueError(f"{at}: a second row for train_set {key[0]!r}, mode {key[1]!r}, method {key[2]!r}")
        seen.add(key)


def _check_benchmark_name(name: Any, known: Sequence[str], where: str) -> None:
    if name not in known:
        hint = did_you_mean(str(name), known)
        raise ValueError(f"{where}: unknown benchmark '{name}'{hint}; known: {', '.join(known)}")


def _check_published_row(row: Any, at: str, known: Sequence[str], average_of: Sequence[str] | None,
                         decimals: int) -> None:
    if not isinstance(row, Mapping):
        raise ValueError(f"{at}: expected a mapping with train_set, mode and numbers, got {row!r}")
    for field in ROW_KEYS:
        if not isinstance(row.get(field), str) or not row[field]:
            raise ValueError(f"{at}.{field}: missing (every row names its train_set, '-' for the base, and mode)")
    for key, value in row.items():
        if key in ROW_KEYS:
            continue
        if key == DIFFERS_FLAG:
            if not isinstance(value, bool):
                raise ValueError(f"{at}.{key}: expected true or false, got {value!r}")
            continue
        if key != AVERAGE_KEY:
            _check_benchmark_name(key, known, f"{at}.{key}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ValueError(f"{at}.{key}: expected an accuracy in % (0 to 100), got {value!r}")
    if AVERAGE_KEY in row and average_of is None:
        raise ValueError(f"{at}.{AVERAGE_KEY}: an average needs the table's `average_of` "
                         "(which benchmarks it averages)")
    _check_printed_average(row, at, average_of, decimals)


def _check_printed_average(row: Mapping[str, Any], at: str, average_of: Sequence[str] | None, decimals: int) -> None:
    """The printed average is the mean of its cells, or the row declares that it is not."""
    flagged = bool(row.get(DIFFERS_FLAG, False))
    if average_of is None or AVERAGE_KEY not in row or math.isnan(published_cell_mean(row, average_of)):
        if flagged:
            raise ValueError(f"{at}.{DIFFERS_FLAG}: needs the printed `{AVERAGE_KEY}` and every cell of `average_of`")
        return
    mean = published_cell_mean(row, average_of)
    differs = printed_average_differs(row, average_of, decimals)
    if differs and not flagged:
        raise ValueError(f"{at}.{AVERAGE_KEY}: {row[AVERAGE_KEY]} is not the mean of its cells ({mean:.3f}); "
                         f"a typo in a cell or the average? If the source prints it so, add {DIFFERS_FLAG}: true")
    if flagged and not differs:
        raise ValueError(f"{at}.{DIFFERS_FLAG}: true, but {AVERAGE_KEY} {row[AVERAGE_KEY]} is the mean of its cells "
                         f"({mean:.3f}); remove the flag")


def averages_are_comparable(published: Mapping[str, Any], target: Sequence[str]) -> bool:
    """Whether the published average is over the same benchmarks as our target mean (order aside)."""
    average_of = published.get("average_of")
    return bool(average_of) and set(average_of) == set(target)
