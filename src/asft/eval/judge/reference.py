"""AlpacaEval's 805 instructions and the reference outputs they are judged against.

Both come from one shipped file, `data/benchmarks/alpaca_eval/gpt4_1106_preview.json` (alpaca-eval's
AlpacaEval 2 reference, GPT-4 Turbo's outputs; PROVENANCE.md there), checked against its sha256 on
every load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from asft.core.files import sha256_file

BENCHMARK = "alpaca_eval"
DISPLAY = "AlpacaEval 2"
REFERENCE_GENERATOR = "gpt4_1106_preview"
REFERENCE_FILE = Path(__file__).resolve().parents[4] / "data" / "benchmarks" / BENCHMARK / f"{REFERENCE_GENERATOR}.json"
REFERENCE_SHA256 = "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4"
FIELDS = ("dataset", "instruction", "output", "generator")


@dataclass(frozen=True)
class Reference:
    """One evaluation instruction, where it comes from, and the reference output for it."""

    instruction: str
    dataset: str
    output: str
    generator: str

    def as_row(self) -> dict[str, str]:
        return {"dataset": self.dataset, "instruction": self.instruction, "output": self.output,
                "generator": self.generator}


def load_reference(path: Path = REFERENCE_FILE, sha256: str | None = REFERENCE_SHA256) -> list[Reference]:
    """The reference rows in file order, after checking the file's bytes (errors name the file and row)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AlpacaEval reference file {path} is missing")
    if sha256 is not None and (actual := sha256_file(path)) != sha256:
        raise ValueError(f"AlpacaEval reference file {path} was changed: sha256 {actual}, expected {sha256}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON list of outputs ({error})") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{{', '.join(FIELDS)}}}")
    references = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or any(not isinstance(row.get(f), str) for f in FIELDS):
            raise ValueError(f"{path}: row {index} lacks a text field of {', '.join(FIELDS)}")
        references.append(Reference(*(row[f] for f in ("instruction", "dataset", "output", "generator"))))
    return references
