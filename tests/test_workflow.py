"""The Snakemake workflow: the DAG, an end-to-end tiny run, and what a re-run schedules."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def planned_jobs(workdir: Path, *args: str) -> Counter:
    """Jobs a dry run would execute, by rule (parsed from the 'Job stats' table)."""
    out = snakemake(workdir, "-n", *args).stdout
    jobs: Counter = Counter()
    if "Nothing to be done" in out:
        return jobs
    table = out.split("Job stats:")[1].split("total")[0]
    for line in table.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match:
            jobs[match.group(1)] = int(match.group(2))
    return jobs


def test_dry_run_of_the_default_lists_the_expected_jobs(tmp_path):
    jobs = planned_jobs(tmp_path)
    # 4 modes x 2 seeds; 3 benchmarks for the base model and for each of the 8 runs.
    assert jobs == Counter(download_model=1, download_data=1, tokenize=1, train=8, merge=8, generate=27, score=27,
                           aggregate=1, publish=1, all=1)


def test_bad_config_fails_at_parse_time_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modes: [sft, asfd]\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    assert "asfd" in result.stdout + result.stderr and "did you mean 'asft'" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def tiny_run(tiny_workflow) -> Path:
    return tiny_workflow


@pytest.mark.slow
def test_end_to_end_tiny_run_produces_the_table(tiny_run):
    with open(tiny_run / "results" / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["mode"] for row in rows] == ["base", "sft", "asft"]
    for row in rows:
        for column in ("embedded_mul_mean", "embedded_add_mean", "embedded_sub_mean", "target_mean", "drift_mean"):
            value = float(row[column])
            assert 0.0 <= value <= 100.0
    trained = {row["mode"]: row for row in rows}
    assert float(trained["sft"]["drift_mean"]) > 0 and float(trained["asft"]["drift_mean"]) > 0
    assert "± " not in (tiny_run / "results" / "table.md").read_text().split("| base")[1].split("\n")[0]
    for name in ("table.md", "table.tex", "runs.csv", "table.png"):
        assert (tiny_run / "results" / name).stat().st_size > 0
    keyed = list((tiny_run / "results" / "tables").glob("*/table.csv"))
    assert len(keyed) == 1 and keyed[0].read_text() == (tiny_run / "results" / "table.csv").read_text()
    plan_rows = json.loads((keyed[0].parent / "plan.json").read_text())["rows"]
    assert len(plan_rows) == 9 and {r["mode"] for r in plan_rows} == {"base", "sft", "asft"}
    # Every artifact has a manifest whose file hashes match.
    from asft.workflow.artifacts import file_hashes

    manifests = list((tiny_run / "results").glob("*/*/manifest.json"))
    assert len(manifests) == 1 + 1 + 1 + 2 + 2 + 9 + 9 + 1  # model, data, tokenize, train, merge, generate, score, table
    for manifest in manifests:
        recorded = json.loads(manifest.read_text())
        assert recorded["files"] == file_hashes(manifest.parent)
        assert recorded["key"] == manifest.parent.name
    assert not list((tiny_run / "results").glob("*/*.tmp-*")) and not list((tiny_run / "results").glob("train/*.partial"))
    samples = (next((tiny_run / "results" / "generate").glob("*/samples.jsonl"))).read_text().splitlines()
    assert {"problem", "sample", "prompt", "completion", "gold"} <= set(json.loads(samples[0]))
    graded = (next((tiny_run / "results" / "score").glob("*/graded.jsonl"))).read_text().splitlines()
    assert {"problem", "sample", "extracted", "gold", "correct"} <= set(json.loads(graded[0]))


@pytest.mark.slow
def test_rerun_with_nothing_changed_schedules_no_job(tiny_run):
    assert planned_jobs(tiny_run, "--configfile", str(TINY)) == Counter()


@pytest.mark.slow
def test_eval_only_change_schedules_only_eval_and_aggregate(tiny_run, tmp_path):
    layer = tmp_path / "eval_change.yaml"
    layer.write_text("eval: {max_new_tokens: 30}\n")
    jobs = planned_jobs(tiny_run, "--configfile", str(TINY), str(layer))
    assert jobs == Counter(generate=9, score=9, aggregate=1, publish=1, all=1)
    # the explicit target users type, too
    assert planned_jobs(tiny_run, "results/table.csv", "--configfile", str(TINY), str(layer)) == Counter(
        generate=9, score=9, aggregate=1, publish=1)


@pytest.mark.slow
def test_config_change_rebuilds_the_table_even_without_snakemake_metadata(tiny_run, tmp_path):
    import shutil

    layer = tmp_path / "eval_change.yaml"
    layer.write_text("eval: {max_new_tokens: 31}\n")
    backup = tmp_path / "metadata"
    shutil.copytree(tiny_run / ".snakemake" / "metadata", backup)
    shutil.rmtree(tiny_run / ".snakemake" / "metadata")
    try:
        jobs = planned_jobs(tiny_run, "--configfile", str(TINY), str(layer))
    finally:
        shutil.copytree(backup, tiny_run / ".snakemake" / "metadata", dirs_exist_ok=True)
    assert jobs == Counter(generate=9, score=9, aggregate=1, publish=1, all=1)


@pytest.mark.slow
def test_new_seed_trains_only_the_new_seed(tiny_run, tmp_path):
    layer = tmp_path / "seeds.yaml"
    layer.write_text("seeds: [0, 1]\n")
    jobs = planned_jobs(tiny_run, "--configfile", str(TINY), str(layer))
    assert jobs == Counter(train=2, merge=2, generate=6, score=6, aggregate=1, publish=1, all=1)


@pytest.mark.slow
def test_runs_index_names_each_runs_content_keyed_folders(tiny_run):
    """results/runs/<train set>/<mode>/seed<k>/ links to the run's train, merge, generate and score folders."""
    runs = tiny_run / "results" / "runs"
    rows = list(csv.DictReader(open(runs / "index.csv")))
    assert len(rows) == 9 and {r["run"] for r in rows} == {"base", "mul/sft/seed0", "mul/asft/seed0"}

    def labels(link: Path) -> dict:
        assert link.is_symlink() and not Path(os.readlink(link)).is_absolute()  # relative: the folder can move
        return json.loads((link / "manifest.json").read_text())["labels"]

    for mode in ("sft", "asft"):
        run = runs / "mul" / mode / "seed0"
        assert labels(run / "train")["mode"] == mode and labels(run / "merge")["mode"] == mode
        for bench in ("embedded_mul", "embedded_add", "embedded_sub"):
            assert labels(run / "generate" / bench) == {"train_set": "mul", "mode": mode, "seed": 0,
                                                       "benchmark": bench}
            assert json.loads((run / "score" / bench / "strict" / "scores.json").read_text())["benchmark"] == bench
    assert labels(runs / "base" / "generate" / "embedded_mul")["mode"] == "base" and not (runs / "base" / "train").exists()


@pytest.mark.slow
def test_rescoring_with_another_policy_generates_nothing(tiny_run, tmp_path):
    """Grading is its own stage: another policy runs only `score` and the table, the samples are reused
    byte for byte, and a table of both policies then needs no job but the aggregate."""
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    generated = {p: p.stat().st_mtime_ns for p in (workdir / "results" / "generate").glob("*/samples.jsonl")}
    layer = tmp_path / "harness.yaml"
    layer.write_text("eval: {grading: [qwen_harness]}\n")
    assert planned_jobs(workdir, "--configfile", str(TINY), str(layer)) == Counter(score=9, aggregate=1, publish=1,
                                                                                  all=1)
    snakemake(workdir, "--configfile", str(TINY), str(layer), "--cores", "2")
    assert {p: p.stat().st_mtime_ns for p in generated} == generated  # no sample was made again
    rows = list(csv.DictReader(open(workdir / "results" / "table.csv")))
    assert {row["grading"] for row in rows} == {"qwen_harness"}
    scores = [json.loads(p.read_text()) for p in (workdir / "results" / "score").glob("*/scores.json")]
    assert {s["grading"]["policy"] for s in scores} == {"strict", "qwen_harness"} and len(scores) == 18
    both = tmp_path / "both.yaml"
    both.write_text("eval: {grading: [strict, qwen_harness]}\n")
    assert planned_jobs(workdir, "--configfile", str(TINY), str(both)) == Counter(aggregate=1, publish=1, all=1)
    snakemake(workdir, "--configfile", str(TINY), str(both), "--cores", "2")
    rows = list(csv.DictReader(open(workdir / "results" / "table.csv")))
    assert [row["grading"] for row in rows] == ["strict"] * 3 + ["qwen_harness"] * 3
    table = (workdir / "results" / "table.md").read_text()
    assert "## The same runs graded with `qwen_harness`" in table and "grading policy `strict` (version" in table


@pytest.mark.slow
def test_runtime_only_change_schedules_nothing(tiny_run, tmp_path):
    layer = tmp_path / "runtime.yaml"
    layer.write_text("eval: {batch_size: 7}\nloss: {chunk_size: 33}\nresources: {train: {threads: 2}}\n")
    assert planned_jobs(tiny_run, "--configfile", str(TINY), str(layer)) == Counter()


@pytest.mark.slow
def test_html_report_is_self_contained(tiny_run):
    snakemake(tiny_run, "--configfile", str(TINY), "--report", "results/report.html")
    html = (tiny_run / "results" / "report.html").read_text(errors="replace")
    assert len(html) > 100_000
    for text in ("Training curves", "Results", "Configuration"):
        assert text in html
