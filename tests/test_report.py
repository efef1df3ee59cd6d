"""The results as users open them: table.html (table.md rendered), the figures, runs.csv's columns, and the
Snakemake HTML report opened in a real headless browser (Chromium), whose front page shows the table."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from asft.eval.table import aggregate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
BENCHMARKS = ["embedded_mul", "embedded_add", "embedded_sub"]


class _Tables(HTMLParser):
    """The text of every table cell, per table and row, and the headings."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)


def _markdown_tables(markdown: str) -> list[list[list[str]]]:
    tables, current = [], None
    for line in markdown.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            if not set(line) <= set("|-"):
                current.append([c.strip().replace("`", "") for c in line.strip().strip("|").split("|")])
        else:
            current = None
    return tables


def _hand_made(tmp_path: Path, *, policies=("strict",)) -> tuple[Path, object]:
    """An aggregate of hand-made scores (as tests/test_evaluation.py) and two fake training runs per mode."""
    rows, dirs = [], {}
    values = {  # (mode, seed) -> (target acc, retention acc a, retention acc b, drift)
        ("base", None): (50.0, 100.0, 100.0, None),
        ("sft", 0): (90.0, 60.0, 70.0, 0.2), ("sft", 1): (80.0, 50.0, 60.0, 0.4),
        ("asft", 0): (85.0, 90.0, 100.0, 0.05), ("asft", 1): (87.0, 94.0, 98.0, 0.07),
    }
    for policy in policies:
        for (mode, seed), (t, a, b, d) in values.items():
            # score keys sorted in another order than the benchmarks: the columns must not follow them
            for bench, acc in (("embedded_sub", b), ("embedded_mul", t), ("embedded_add", a)):
                key = f"{policy}-{mode}-{seed}-{bench}"
                folder = tmp_path / "scores" / key
                folder.mkdir(parents=True)
                drift = d if bench == "embedded_mul" else 0.0
                (folder / "scores.json").write_text(json.dumps({"accuracy": acc - (policy != "strict"),
                                                                "drift": drift}))
                dirs[key] = folder
                rows.append({"train_set": "-" if mode == "base" else "mul", "mode": mode, "seed": seed,
                             "benchmark": bench, "grading": policy, "score_key": key})
    train_rows, train_dirs = [], {}
    for mode, seed in [k for k in values if k[0] != "base"]:
        key = f"train-{mode}-{seed}"
        folder = tmp_path / "train" / key
        folder.mkdir(parents=True)
        with open(folder / "metrics.jsonl", "w") as handle:
            for step in (2, 4, 6):
                ce = 2.0 - 0.1 * step - 0.05 * seed
                handle.write(json.dumps({"step": step, "loss": ce if mode == "sft" else 0.2 * ce, "ce": ce,
                                         "kl": 0.0 if mode == "sft" else 0.01 * step}) + "\n")
            handle.write(json.dumps({"step": 6, "train_runtime": 1.0, "train_loss": 1.0}) + "\n")
        settings = {"mode": mode, "seed": seed, "kl_weight": 0.05 if mode == "asft" else 0,
                    "kl_direction": "ref_policy" if mode == "asft" else None}
        (folder / "manifest.json").write_text(json.dumps({"settings": settings}))
        train_rows.append({"train_set": "mul", "mode": mode, "seed": seed, "train_key": key})
        train_dirs[key] = folder
    out = tmp_path / "out"
    table = aggregate(rows, dirs, out, benchmarks=BENCHMARKS, target=["embedded_mul"],
                      retention=["embedded_add", "embedded_sub"], mode_order=["sft", "asft"], title="hand-made",
                      train_rows=train_rows, train_dirs=train_dirs)
    return out, table


def test_table_html_renders_every_table_of_table_md(tmp_path):
    out, _ = _hand_made(tmp_path, policies=("strict", "qwen_harness"))
    page = (out / "table.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page and '<div id="asft-table">' in page
    parsed = _Tables()
    parsed.feed(page)
    markdown = (out / "table.md").read_text()
    # the same tables, cell for cell, as table.md (nothing re-derived): both grading policies' tables
    assert parsed.tables == _markdown_tables(markdown) and len(parsed.tables) == 2
    main = parsed.tables[0]
    assert main[0] == ["train set", "mode", "seeds", "mul", "add", "sub", "target", "retention", "drift (KL)"]
    assert main[3][:4] == ["mul", "asft", "2", "86.0 ± 1.4"] and main[1][1] == "base"
    assert parsed.headings == ["hand-made", "The same runs graded with qwen_harness"]
    assert '<tr class="base">' in page and '<td class="number">86.0 ± 1.4</td>' in page
    assert "<code>strict</code>" in page  # `code` in table.md


def test_runs_csv_has_integer_seeds_and_columns_in_the_configured_order(tmp_path):
    out, _ = _hand_made(tmp_path)
    with open(out / "runs.csv") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["train_set", "mode", "seed", "grading", *BENCHMARKS, "target", "retention", "drift"]
    assert [(r[1], r[2]) for r in rows] == [("base", ""), ("sft", "0"), ("sft", "1"), ("asft", "0"), ("asft", "1")]
    with open(out / "table.csv") as handle:
        header = next(csv.reader(handle))
    means = [c for c in header if c.endswith("_mean")]
    assert means == [f"{m}_mean" for m in [*BENCHMARKS, "target", "retention", "drift"]]
    assert header[:4] == ["train_set", "mode", "grading", "n_seeds"]


def test_figures_are_written_as_png_and_pdf(tmp_path):
    out, _ = _hand_made(tmp_path)
    for name in ("table.png", "curves.png"):
        width, height = _png_size(out / name)
        assert width > 800 and height > 300 and (out / name).stat().st_size > 10_000
    for name in ("table.pdf", "curves.pdf"):
        assert (out / name).read_bytes().startswith(b"%PDF") and (out / name).stat().st_size > 5_000
    assert not list(out.glob("*.tmp"))


def test_curves_read_the_logged_steps_and_whether_a_mode_has_kl(tmp_path):
    from asft.eval.figures import read_training_run

    _hand_made(tmp_path)
    entries, uses_kl = read_training_run(tmp_path / "train" / "train-asft-0")
    assert [e["step"] for e in entries] == [2, 4, 6] and uses_kl is True  # the summary line is not a step
    assert read_training_run(tmp_path / "train" / "train-sft-1")[1] is False


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# --- the report, in a real browser ------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if found := shutil.which(name):
            return found
    return None


CHROMIUM = _chromium()
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--virtual-time-budget=10000"]


def _browser(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *BROWSER_FLAGS, *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A tiny run (tests/configs/tiny.yaml, as tests/test_workflow.py's) and its report."""
    workdir = tmp_path_factory.mktemp("report")
    for args in (["--cores", "2"], ["--report", "results/report.html"]):
        result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(TINY), *args],
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium/Chrome found on PATH (Debian: apt-get install chromium)")
def test_report_front_page_shows_the_table_in_a_browser(report, tmp_path):
    page = report / "results" / "report.html"
    shot = tmp_path / "report.png"
    result = _browser(f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert shot.exists(), result.stderr[-2000:]
    assert _png_size(shot) == (1280, 2000) and shot.stat().st_size > 30_000
    from matplotlib.image import imread

    pixels = imread(str(shot))[..., :3]
    assert (pixels.min(axis=-1) < 0.5).mean() > 0.005  # text and a graph, not a blank page

    dom = _browser("--dump-dom", page.as_uri()).stdout
    rendered = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)  # what React put on the page, not its data
    assert '<div id="asft-table">' in rendered and "The results table of this run is below" in rendered
    with open(report / "results" / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert f"<td>{row['mode']}</td>" in rendered
    sft = next(row for row in rows if row["mode"] == "sft")
    assert f">{float(sft['drift_mean']):.4f}</td>" in rendered and f">{float(sft['target_mean']):.1f}</td>" in rendered
    assert not math.isnan(float(sft["drift_mean"]))
    for name in ("table.html", "table.png", "curves.png"):  # listed under Results
        assert name in dom


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium/Chrome found on PATH (Debian: apt-get install chromium)")
def test_table_html_opens_on_its_own_in_a_browser(report, tmp_path):
    shot = tmp_path / "table.png"
    page = report / "results" / "table.html"
    _browser(f"--screenshot={shot}", "--window-size=1280,800", page.as_uri())
    assert shot.exists() and _png_size(shot) == (1280, 800)
    dom = _browser("--dump-dom", page.as_uri()).stdout
    assert "<td>asft</td>" in dom and "<td>sft</td>" in dom and "<h1>ASFT results: tiny</h1>" in dom
