"""A generation's outputs in alpaca-eval's format (`model_outputs.json` in the generate artifact).

A JSON list of {instruction, output, generator, dataset}, one row per instruction in the evaluation
set's order: what `alpaca_eval --model_outputs` reads, so the file can also be judged by hand with the
package's own command. With several samples per instruction, sample 0 is the output (AlpacaEval judges
one output per instruction).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asft.eval.judge.reference import load_reference

MODEL_OUTPUTS = "model_outputs.json"
FIELDS = ("instruction", "output", "generator", "dataset")


def run_name(labels: Mapping[str, Any]) -> str:
    """A readable generator name from a generation's labels: `asft-seed42-magpie10k`, or `base`."""
    mode = labels.get("mode") or "model"
    if mode == "base" or labels.get("seed") is None:
        return str(mode)
    train_set = labels.get("train_set")
    return f"{mode}-seed{labels['seed']}" + (f"-{train_set}" if train_set and train_set != "-" else "")


def write_model_outputs(samples: Path, out: Path, generator: str) -> dict[str, Any]:
    """model_outputs.json from samples.jsonl (sample 0 of each problem, problems in the evaluation set's
    order); returns what generation.json records of it."""
    completions: dict[int, str] = {}
    with open(samples, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if int(row["sample"]) == 0:
                completions[int(row["problem"])] = row["completion"]
    references = load_reference()
    if sorted(completions) != list(range(len(completions))) or len(completions) > len(references):
        raise ValueError(f"{samples}: expected problems 0..N-1 of the {len(references)} AlpacaEval instructions")
    rows = [{"instruction": ref.instruction, "output": completions[i], "generator": generator,
             "dataset": ref.dataset} for i, ref in enumerate(references[: len(completions)])]
    (out / MODEL_OUTPUTS).write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"file": MODEL_OUTPUTS, "generator": generator, "n": len(rows),
            "avg_length": round(sum(len(r["output"]) for r in rows) / max(1, len(rows)), 1)}


def read_model_outputs(path: Path) -> list[dict[str, str]]:
    """A model_outputs.json (ours or written by hand), each row checked; errors name the file and row."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; the generation of an AlpacaEval benchmark writes it") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON list of outputs ({error})") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{{', '.join(FIELDS)}}}")
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or any(not isinstance(row.get(f), str) for f in FIELDS):
            raise ValueError(f"{path}: row {index} lacks a text field of {', '.join(FIELDS)}")
    if len({row["generator"] for row in rows}) != 1:
        raise ValueError(f"{path}: the rows name more than one generator")
    return [{f: row[f] for f in FIELDS} for row in rows]
