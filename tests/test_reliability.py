"""Reliability: killed runs resume, corrupted artifacts are found and recomputed, bad inputs fail
cleanly, and two workflows on one directory do not corrupt each other.

The workflow tests share one real Snakemake run of tests/configs/tiny.yaml (with longer training):
it is SIGKILLed mid-training, then unlocked and re-run, and later corrupted, fixed and re-run.
What a user types after a kill: `snakemake --unlock` (a SIGKILLed Snakemake leaves its lock), then
the same `snakemake` command; nothing else (an artifact's manifest only appears once it is complete;
a kill in the instant between a job's rename and Snakemake's bookkeeping leaves Snakemake's mark on
a complete artifact, and the profiles' rerun-incomplete re-runs that job, which returns at once:
tests/test_kill_harness.py kills every stage there).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from asft.core.files import sha256_file
from asft.core.settings import StageSettings
from asft.workflow.artifacts import MANIFEST, Node, atomic_folder, write_manifest, writing_artifact
from asft.ops import status
from asft.ops.status import job_states, run_status, train_progress
from asft.workflow.config import load_config
from asft.workflow.job_records import (
    ERROR_CHARS,
    FAILED,
    JOBS_DIR,
    RUNNING,
    JobRecord,
    job_record,
    now,
    read_record,
    record_path,
    recorded_process_alive,
    write_record,
)
from asft.workflow.plan import build_plan
from asft.ops.verify import run_verify, scan
from tests.conftest import RUNTIME, train_settings
from tests.snakemake_runs import SNAKEMAKE, TINY, asft, group_gone, output, smk

LONG_TRAIN = "train: {max_steps: 60, save_steps: 20, logging_steps: 5}\n"
LOCKED = "Directory cannot be locked"


def manifests(workdir: Path) -> dict[str, int]:
    """'stage/key' -> mtime (ns) of every artifact manifest."""
    return {f"{p.parent.parent.name}/{p.parent.name}": p.stat().st_mtime_ns
            for p in (workdir / "results").glob("*/*/manifest.json")}


def leftovers(workdir: Path) -> list[Path]:
    return sorted((workdir / "results").glob("*/*.tmp-*")) + sorted((workdir / "results").glob("*.tmp"))


def read_table(workdir: Path) -> list[dict[str, str]]:
    with open(workdir / "results" / "table.csv") as handle:
        return list(csv.DictReader(handle))


# --- one real run: SIGKILL mid-training, unlock, re-run --------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    layers = tmp_path_factory.mktemp("layers")
    (layers / "long_train.yaml").write_text(LONG_TRAIN)
    configs = ["--configfile", str(TINY), str(layers / "long_train.yaml")]
    workdir = tmp_path_factory.mktemp("killed")
    first_log = layers / "first_run.log"
    with open(first_log, "w") as log:
        # Two cores, but a training job takes both: one training at a time, so none is mid-save at the kill.
        proc = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), *configs, "--cores", "2",
                                 "--set-threads", "train=2"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoint = None
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            found = sorted(workdir.glob("results/train/*.partial/checkpoint-*/trainer_state.json"))
            if found:
                checkpoint = found[0].parent
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
        proc.wait()
    assert checkpoint is not None, f"no checkpoint appeared before the run ended:\n{first_log.read_text()[-3000:]}"
    assert group_gone(proc.pid, timeout=20), "a job survived the SIGKILL of its process group"
    key = checkpoint.parent.name.removesuffix(".partial")
    state = SimpleNamespace(workdir=workdir, configs=configs, key=key, checkpoint=checkpoint.name)
    state.after_kill = {
        "manifest": (workdir / "results" / "train" / key / MANIFEST).exists(),
        "partial": sorted(p.name for p in checkpoint.parent.iterdir()),
        "locks": sorted(p.name for p in (workdir / ".snakemake" / "locks").glob("*.lock")),
        "record": read_record("train", key, workdir / JOBS_DIR),
    }
    state.status_after_kill = asft(workdir, "status", *configs)
    state.verify_after_kill = asft(workdir, "verify")
    state.plain_rerun = smk(workdir, *configs, "--cores", "2")
    state.unlock = smk(workdir, *configs, "--unlock")
    state.rerun = smk(workdir, *configs, "--cores", "2")
    assert state.rerun.returncode == 0, output(state.rerun)[-4000:]
    state.stats = json.loads((workdir / "results" / "train" / key / "stats.json").read_text())
    state.table = read_table(workdir)
    state.status_done = asft(workdir, "status", *configs)
    state.verify_done = asft(workdir, "verify")
    state.leftovers = leftovers(workdir) + sorted((workdir / "results").glob("train/*.partial"))
    state.records_done = sorted((workdir / JOBS_DIR).rglob("*.json"))
    return state


@pytest.mark.slow
def test_sigkill_mid_training_then_unlock_and_rerun_resumes_from_the_checkpoint(run):
    assert run.checkpoint == "checkpoint-20"
    assert not run.after_kill["manifest"]  # the killed run left nothing that looks complete
    assert "checkpoint-20" in run.after_kill["partial"] and run.after_kill["locks"]
    # A plain re-run is refused: the SIGKILLed Snakemake could not remove its lock.
    assert run.plain_rerun.returncode != 0
    assert LOCKED in output(run.plain_rerun) and "--unlock" in output(run.plain_rerun)
    assert run.unlock.returncode == 0 and "Unlocked" in output(run.unlock)
    # After `snakemake --unlock`, the same command resumes the killed training and finishes.
    assert run.stats["resumed_from"] == "checkpoint-20" and run.stats["steps"] == 60
    assert [row["mode"] for row in run.table] == ["base", "sft", "asft"]
    assert all(0 <= float(row["target_mean"]) <= 100 for row in run.table)
    assert run.leftovers == []


@pytest.mark.slow
def test_status_shows_the_interrupted_run_then_all_done(run):
    assert run.status_after_kill.returncode == 0, output(run.status_after_kill)
    text = run.status_after_kill.stdout
    killed = next(line for line in text.splitlines() if run.key in line)
    assert "interrupted" in killed and "checkpoint-20" in killed and "/60" in killed
    assert "pending" in text and "stale lock" in text and "snakemake --unlock" in text
    # The killed job could not update its record: it still says running, with a process that is gone.
    record = run.after_kill["record"]
    assert record is not None and record.state == "running" and record.error is None
    assert not recorded_process_alive(record)
    assert "0/2" in next(line for line in text.splitlines() if line.startswith("train "))
    done = run.status_done.stdout
    assert run.status_done.returncode == 0, output(run.status_done)
    assert done.count(" done ") + done.count(" done\n") >= 2 and "interrupted" not in done
    for stage, total in (("model", 1), ("train", 2), ("merge", 2), ("generate", 9), ("score", 9)):
        assert f"{total}/{total}" in next(line for line in done.splitlines() if line.startswith(stage + " "))
    assert "up to date" in done and "not running, no lock" in done
    assert run.records_done == []  # every job succeeded in the end: no record is left


@pytest.mark.slow
def test_verify_reports_a_killed_runs_leftovers_as_notes_and_a_complete_run_as_sound(run):
    after_kill = run.verify_after_kill
    assert after_kill.returncode == 0, output(after_kill)
    assert f"{run.key}.partial" in after_kill.stdout and "resume point: checkpoint-20" in after_kill.stdout
    assert "0 problem(s)" in after_kill.stdout
    assert run.verify_done.returncode == 0 and "25 sound, 0 problem(s), 0 note(s)" in run.verify_done.stdout


@pytest.mark.slow
def test_corrupted_artifacts_are_found_fixed_and_only_they_and_their_descendants_recomputed(run):
    workdir, results = run.workdir, run.workdir / "results"
    evals = {p.parent.name: json.loads(p.read_text()) for p in results.glob("generate/*/manifest.json")}
    scores = {p.parent.name: json.loads(p.read_text()) for p in results.glob("score/*/manifest.json")}
    merge_key = sorted(p.name for p in (results / "merge").iterdir())[0]
    base_eval = next(k for k, m in evals.items() if m["labels"]["mode"] == "base")
    expected = {f"merge/{merge_key}", f"generate/{base_eval}"} | {
        f"generate/{k}" for k, m in evals.items() if m["parents"]["model"] == f"merge/{merge_key}"}
    assert len(expected) == 5
    expected |= {f"score/{k}" for k, m in scores.items() if m["parents"]["samples"] in expected}
    assert len(expected) == 9
    expected |= {f"tables/{p.name}" for p in (results / "tables").iterdir()}  # it read a removed evaluation
    weights = results / "merge" / merge_key / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    samples = results / "generate" / base_eval / "samples.jsonl"
    samples.write_text(samples.read_text()[:100])
    before = manifests(workdir)
    table_before = (results / "table.csv").stat().st_mtime_ns

    found = asft(workdir, "verify")
    assert found.returncode == 1, output(found)
    corrupted = [line for line in found.stdout.splitlines() if line.startswith("corrupted")]
    assert len(corrupted) == 2
    assert any(merge_key in line and "model.safetensors: sha256 mismatch" in line for line in corrupted)
    assert any(base_eval in line and "samples.jsonl: sha256 mismatch" in line for line in corrupted)

    # --fix removes them and what was made from them: Snakemake would not regenerate a missing
    # intermediate while the files made from it (the merge's evaluations, the table) are up to date.
    fixed = asft(workdir, "verify", "--fix")
    assert fixed.returncode == 0, output(fixed)
    assert not any((results / ref).exists() for ref in expected)
    made_from = [line for line in fixed.stdout.splitlines() if f"made from merge/{merge_key}" in line]
    assert len(made_from) == 3 + 3 and "aggregate of a removed evaluation" in fixed.stdout
    assert not (results / "table.csv").exists()

    # Re-run; while it holds the lock, a second workflow on the same directory is refused.
    with open(workdir.parent / "fix_rerun.log", "w") as log:
        first = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), *run.configs, "--cores", "2"],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list((workdir / ".snakemake" / "locks").glob("*.lock")) and first.poll() is None:
            assert time.time() < deadline, "the re-run never took its lock"
            time.sleep(0.1)
        second = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), *run.configs, "--cores", "1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        running = asft(workdir, "status", *run.configs).stdout
        while not re.search(r"\d running", running) and first.poll() is None:
            running = asft(workdir, "status", *run.configs).stdout  # until a job has started
        second_output, _ = second.communicate(timeout=300)
        assert first.poll() is None, "the first run ended before the second was checked: inconclusive"
        assert second.returncode != 0 and LOCKED in second_output, second_output[-3000:]
        assert f"snakemake: running in {workdir}" in running and re.search(r"\d running", running), running
        assert first.wait(timeout=900) == 0, (workdir.parent / "fix_rerun.log").read_text()[-4000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)

    after = manifests(workdir)
    assert set(after) == set(before), f"new {sorted(set(after) - set(before))}, lost {sorted(set(before) - set(after))}"
    changed = {name for name in after if after[name] != before[name]}
    assert changed == expected, f"recomputed {sorted(changed)}, expected {sorted(expected)}"
    assert (results / "table.csv").stat().st_mtime_ns > table_before
    log = (workdir.parent / "fix_rerun.log").read_text()
    assert not any(f"rule {rule}:" in log for rule in ("train", "tokenize", "download_model", "download_data"))
    assert [row["mode"] for row in read_table(workdir)] == ["base", "sft", "asft"]
    clean = asft(workdir, "verify")
    assert clean.returncode == 0 and "0 problem(s)" in clean.stdout, output(clean)
    assert leftovers(workdir) == []


# --- bad inputs: stop with a message naming the problem, leave nothing that looks complete ---

@pytest.mark.slow
def test_bad_configs_stop_at_parse_time_naming_the_field(tmp_path):
    cases = {
        "modes": ("modes: [sft, asfd]\n", ["modes: unknown mode 'asfd'", "did you mean 'asft'"]),
        "kl_weight": ("loss: {kl_weight: -0.1}\n", ["loss.kl_weight", "greater than or equal to 0"]),
        "seeds": ("seeds: []\n", ["seeds: the list is empty"]),
    }
    procs = {}
    for name, (text, _) in cases.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        (tmp_path / name).mkdir()
        procs[name] = subprocess.Popen(
            [*SNAKEMAKE, "--directory", str(tmp_path / name), "-n", "--configfile", str(tmp_path / f"{name}.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, (_, messages) in cases.items():
        out, _ = procs[name].communicate(timeout=300)
        assert procs[name].returncode != 0, out
        for message in messages:
            assert message in out, out[-2000:]
        assert "Traceback" not in out  # a message, not a crash
        assert not (tmp_path / name / "results").exists()


@pytest.mark.slow
def test_a_model_without_weights_fails_its_job_cleanly(tmp_path):
    """A local model folder is only read by its job (a bad local data file stops the parse instead:
    tests/test_bad_input.py)."""
    model = tmp_path / "model_without_weights"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2"}\n')
    layer = tmp_path / "bad_inputs.yaml"
    layer.write_text(f"model: {{source: local, local_path: '{model}'}}\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    configs = ["--configfile", str(TINY), str(layer)]
    result = smk(workdir, *configs, "--cores", "2", "--keep-going")
    text = output(result)
    assert result.returncode != 0
    assert f"model.local_path {model}: no weights" in text, text[-4000:]
    assert not list(workdir.glob("results/model/*/manifest.json")) and leftovers(workdir) == []
    status = asft(workdir, "status", *configs)
    assert status.returncode == 0, output(status)
    lines = status.stdout.splitlines()
    assert "1 failed" in next(line for line in lines if line.startswith("model "))
    # the failure with its error, from the job's record (not from Snakemake's log)
    assert f"model.local_path {model}: no weights" in status.stdout, status.stdout
    assert asft(workdir, "verify").returncode == 0


def test_benchmark_row_without_gold_answer_names_the_file_and_row(tmp_path, monkeypatch):
    """The file-benchmark loader on a doctored copy of GSM8K registered under a temporary name
    (with the copy's own sha256: the shipped files are checked against theirs)."""
    import asft.eval.benchmarks as benchmarks

    original = benchmarks.get_benchmark("gsm8k")
    rows = [json.loads(line) for line in original.path.read_text().splitlines()[:5]]
    folder = tmp_path / "gsm8k_doctored"
    folder.mkdir()
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(benchmarks, "DATA_DIR", tmp_path)

    def register(sha: str) -> None:
        bench = benchmarks._file_benchmark("gsm8k_doctored", "GSM8K (doctored)", sha, benchmarks._gsm8k_gold, None)
        monkeypatch.setitem(benchmarks._REGISTRY, bench.name, bench)

    register(sha256_file(path))
    assert [p.gold for p in benchmarks.load_problems("gsm8k_doctored")] == ["18", "3", "70000", "540", "20"]
    rows[3]["answer"] = "She runs 3 sprints, 3 times a week, without a final answer marker."
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    register(sha256_file(path))
    with pytest.raises(ValueError) as error:
        benchmarks.load_problems("gsm8k_doctored")
    assert str(path) in str(error.value) and "row 3 has no gold answer" in str(error.value)
    register(original.sha256)  # a changed file under a recorded sha256 is refused before any row is read
    with pytest.raises(ValueError, match="was changed: sha256"):
        benchmarks.load_problems("gsm8k_doctored")


def test_nan_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, tiny_base, tiny_dataset,
                                                                             monkeypatch):
    import asft.train.trainer as trainer
    from asft.workflow.artifacts import partial_dir
    from asft.workflow.jobs import run_stage
    from asft.train.trainer import NonFiniteLossError

    real = trainer.chunked_loss
    calls = []

    def nan_from_step_3(*args, **kwargs):  # 2 micro-batches per step: calls 5, 6, ... are step 3 on
        out = real(*args, **kwargs)
        calls.append(1)
        return dataclasses.replace(out, loss=out.loss * float("nan")) if len(calls) > 4 else out

    monkeypatch.setattr(trainer, "chunked_loss", nan_from_step_3)
    settings = train_settings("sft", max_steps=8, global_batch_size=8, per_device_batch_size=4)
    final = tmp_path / "results" / "train" / "00000000000000aa"
    node = Node("train", final.name, settings, {}, {"mode": "sft"}, RUNTIME.model_copy(update={"save_steps": 2}))
    with pytest.raises(NonFiniteLossError) as error:
        # the fixtures are plain folders, not artifacts with manifests: nothing to verify
        run_stage(node, {"model": tiny_base, "tokenize": tiny_dataset.parent}, final, verify_parents_first=False)
    partial = partial_dir(final)
    assert "at step 3" in str(error.value) and str(partial) in str(error.value)
    checkpoints = sorted(p.name for p in partial.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"]
    assert json.loads((partial / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert not final.exists() and not list(final.parent.glob("*.tmp-*"))  # no partial artifact


# --- verify and status on hand-made folders (fast) ---------------------------------------------

class NoSettings(StageSettings):
    """Hand-made artifacts record no settings."""


def make_artifact(results: Path, stage: str, key: str, files: dict[str, bytes], parents=None) -> Path:
    final = results / stage / key
    with writing_artifact(final, Node(stage, key, NoSettings(), parents or {}, {})) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    # Hand-made keys (1111...) are no hashes of settings: such a manifest records none, so verify does not
    # recompute a key for it (test_verify_recomputes_the_key_from_the_manifest checks that part).
    manifest = json.loads((final / MANIFEST).read_text())
    manifest.pop("settings")
    (final / MANIFEST).write_text(json.dumps(manifest))
    return final


def kinds(results: Path) -> dict[tuple[str, str], str]:
    return {(f.stage, f.name): f.kind for f in scan(results)}


def test_verify_finds_every_kind_of_damage_and_fix_removes_only_what_it_must(tmp_path, capsys):
    results = tmp_path / "results"
    good = make_artifact(results, "data", "a" * 16, {"train.jsonl": b"{}\n", "stats.json": b"{}"})
    make_artifact(results, "model", "b" * 16, {"model.safetensors": b"w" * 100, "sub/tok.json": b"{}"})
    (results / "model" / ("b" * 16) / "model.safetensors").write_bytes(b"w" * 50)  # truncated
    make_artifact(results, "merge", "c" * 16, {"config.json": b"{}"})
    (results / "merge" / ("c" * 16) / "extra.bin").write_bytes(b"x")  # unlisted
    make_artifact(results, "score", "d" * 16, {"scores.json": b"{}"})
    (results / "score" / ("d" * 16) / "scores.json").unlink()  # missing
    moved = make_artifact(results, "score", "e" * 16, {"scores.json": b"{}"})
    moved.rename(results / "score" / ("f" * 16))  # key differs from the folder
    make_artifact(results, "tokenize", "1" * 16, {"stats.json": b"{}"})
    (results / "tokenize" / ("1" * 16) / MANIFEST).write_text("{not json")
    (results / "train" / ("2" * 16)).mkdir(parents=True)
    (results / "train" / ("2" * 16) / "stats.json").write_text("{}")  # files, no manifest
    (results / "train" / ("3" * 16)).mkdir()  # empty: Snakemake pre-created it
    partial = results / "train" / f"{'4' * 16}.partial"
    (partial / "checkpoint-2").mkdir(parents=True)
    (partial / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (partial / "checkpoint-4").mkdir()  # killed while saving
    (results / "train" / f"{'5' * 16}.tmp-999999999").mkdir()  # dead pid
    (results / "train" / f"{'6' * 16}.tmp-{os.getpid()}").mkdir()  # a live process
    (results / "table.csv.tmp").write_text("half a table")

    found = kinds(results)
    assert found == {
        ("model", "b" * 16): "corrupted", ("tokenize", "1" * 16): "corrupted", ("train", "2" * 16): "incomplete",
        ("train", "3" * 16): "empty", ("train", f"{'4' * 16}.partial/checkpoint-4"): "bad-checkpoint",
        ("train", f"{'4' * 16}.partial"): "checkpoint", ("train", f"{'5' * 16}.tmp-999999999"): "leftover",
        ("train", f"{'6' * 16}.tmp-{os.getpid()}"): "leftover", ("merge", "c" * 16): "corrupted",
        ("score", "d" * 16): "corrupted", ("score", "f" * 16): "corrupted", ("aggregate", "table.csv.tmp"): "leftover",
    }
    details = {f.name: f.detail for f in scan(results)}
    assert "model.safetensors: sha256 mismatch (50 bytes" in details["b" * 16]
    assert "extra.bin: not listed" in details["c" * 16] and "scores.json: missing" in details["d" * 16]
    assert "manifest key 'eeeeeeeeeeeeeeee' differs" in details["f" * 16]
    assert "does not parse" in details["1" * 16] and "checkpoint-2 (step 2)" in details[f"{'4' * 16}.partial"]
    assert run_verify(results) == 1

    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("x\n")
    assert run_verify(results, fix=True) == 1 and "refusing to fix" in capsys.readouterr().out
    assert kinds(results) == found  # nothing removed under a lock
    (locks / "0.input.lock").unlink()

    assert run_verify(results, fix=True) == 0
    assert kinds(results) == {("train", f"{'4' * 16}.partial"): "checkpoint",
                              ("train", f"{'6' * 16}.tmp-{os.getpid()}"): "leftover"}
    assert (partial / "checkpoint-2").is_dir() and not (partial / "checkpoint-4").exists()
    assert (good / MANIFEST).is_file() and run_verify(results) == 0


def test_verify_removes_the_checkpoints_of_a_run_that_completed_since(tmp_path):
    results = tmp_path / "results"
    make_artifact(results, "train", "7" * 16, {"stats.json": b"{}"})
    (results / "train" / f"{'7' * 16}.partial" / "checkpoint-2").mkdir(parents=True)
    assert kinds(results) == {("train", f"{'7' * 16}.partial"): "leftover"}
    assert run_verify(results, fix=True) == 0 and kinds(results) == {}


def status_of(results: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(stage, key) -> (state, progress) of every job of the tiny configuration."""
    states, _ = job_states(build_plan(load_config(TINY)), results)
    return {(s.stage, s.key): (s.state, s.progress) for s in states}


def running_record(workdir: Path, stage: str, key: str, **fields) -> JobRecord:
    """A job record as a job writes it when it starts, with `fields` overridden."""
    record = dataclasses.replace(
        JobRecord(stage, key, RUNNING, os.getpid(), socket.gethostname(), now()), **fields)
    write_record(record, workdir / JOBS_DIR)
    return record


def make_checkpoints(partial: Path, complete: list[int], incomplete: tuple[int, ...] = (),
                     logged: int | None = None) -> None:
    """`checkpoint-N` folders (complete ones with their trainer_state.json) and a metrics log up to `logged`."""
    for step in [*complete, *incomplete]:
        (partial / f"checkpoint-{step}").mkdir(parents=True)
    for step in complete:
        (partial / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    partial.mkdir(parents=True, exist_ok=True)
    if logged is not None:
        (partial / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                                                       for s in range(1, logged + 1)))


def test_status_reads_job_records_artifacts_and_snakemakes_markers(tmp_path, monkeypatch, capsys):
    """Every state from the signals the workflow writes itself; no Snakemake log exists here."""
    import base64

    plan = build_plan(load_config(TINY))
    results = tmp_path / "results"
    model, data, tokenize = plan.keys("model")[0], plan.keys("data")[0], plan.keys("tokenize")[0]
    train_a, train_b = plan.keys("train")
    merge_a, merge_b = plan.keys("merge")
    evals = plan.keys("generate")
    dead = 999999999  # above any pid_max: no such process

    make_artifact(results, "model", model, {"w.safetensors": b"w"})
    running_record(tmp_path, "data", data)  # this process: alive on this host
    failed = dataclasses.replace(running_record(tmp_path, "tokenize", tokenize), state=FAILED, finished=now(),
                                 error="ValueError: data.jsonl has no column 'instruction'",
                                 log=f"logs/tokenize/{tokenize}.log")
    write_record(failed, tmp_path / JOBS_DIR)
    make_checkpoints(results / "train" / f"{train_a}.partial", [3], [6], logged=2)  # metrics behind the checkpoint
    running_record(tmp_path, "train", train_a, pid=dead)
    running_record(tmp_path, "train", train_b, pid=dead, host="gpu-node-7")  # a cluster node's job
    running_record(tmp_path, "merge", merge_a, pid=dead)
    running_record(tmp_path, "merge", merge_b, started="2000-01-01T00:00:00+00:00")  # a reused pid: not the job
    (results / "generate" / f"{evals[0]}.tmp-{os.getpid()}").mkdir(parents=True)  # a job writing, without a record
    marks = tmp_path / ".snakemake" / "incomplete"
    marks.mkdir(parents=True)
    (marks / base64.urlsafe_b64encode(f"results/generate/{evals[1]}/manifest.json".encode()).decode()).write_text("{}")

    found = status_of(results)
    assert found[("model", model)] == ("done", "")
    assert found[("data", data)][0] == "running" and f"pid {os.getpid()}" in found[("data", data)][1]
    assert found[("tokenize", tokenize)] == (
        "failed", f"ValueError: data.jsonl has no column 'instruction' (log: logs/tokenize/{tokenize}.log)")
    assert found[("train", train_a)] == (
        "interrupted", "step 3/6, last checkpoint checkpoint-3; the next run resumes from it")
    assert found[("train", train_b)][0] == "interrupted" and "gpu-node-7" in found[("train", train_b)][1]
    assert found[("merge", merge_a)][0] == "interrupted"
    assert f"pid {dead} on {socket.gethostname()}" in found[("merge", merge_a)][1]
    assert "process is gone" in found[("merge", merge_a)][1]
    assert found[("merge", merge_b)][0] == "interrupted"
    assert found[("generate", evals[0])] == ("running", "")
    assert found[("generate", evals[1])] == ("interrupted", "killed (Snakemake marks its output incomplete); "
                                                        "the next run starts it again")
    assert {found[("generate", key)] for key in evals[2:]} == {("pending", "")}

    assert run_status([str(TINY)], results) == 0
    text = capsys.readouterr().out
    assert "1 failed" in next(line for line in text.splitlines() if line.startswith("tokenize "))
    assert f"failed: tokenize {tokenize}" in text and "has no column 'instruction'" in text
    assert "2 interrupted" in next(line for line in text.splitlines() if line.startswith("train "))
    assert "snakemake: not running, no lock" in text

    # While a Snakemake lock is held, the cluster node's job counts as running; while Snakemake runs
    # here, a dead job's record is a leftover of the killed run: pending until the new run starts it.
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir()
    (locks / "0.input.lock").write_text("x\n")
    assert status_of(results)[("train", train_b)][0] == "running"
    monkeypatch.setattr(status, "live_snakemake_pids", lambda workdir: [4242])
    found = status_of(results)
    assert found[("merge", merge_a)] == ("pending", "") and found[("generate", evals[1])] == ("pending", "")
    assert found[("train", train_a)][0] == "interrupted"  # its checkpoint is still the resume point


def test_status_shows_a_step_never_below_the_newest_complete_checkpoint(tmp_path):
    partial = tmp_path / "0123456789abcdef.partial"
    assert train_progress(partial, 60) == "no checkpoint yet"
    make_checkpoints(partial, [], logged=1)
    assert train_progress(partial, 60) == "step 1/60, no checkpoint yet"
    # checkpoint-3 is complete, checkpoint-4 was being saved; the metrics of step 3 are not flushed yet
    shutil.rmtree(partial)
    make_checkpoints(partial, [3], [4], logged=2)
    assert train_progress(partial, 60) == "step 3/60, last checkpoint checkpoint-3"
    make_checkpoints(partial, [], logged=5)  # the metrics catch up, and pass it
    assert train_progress(partial, 60) == "step 5/60, last checkpoint checkpoint-3"
    assert train_progress(partial, None) == "step 5, last checkpoint checkpoint-3"


def fake_snakemake_job(tmp_path: Path, stage_rule: str, key: str) -> SimpleNamespace:
    return SimpleNamespace(rule=stage_rule, wildcards=SimpleNamespace(key=key), input={},
                           log=[str(tmp_path / "logs" / f"{key}.log")],
                           output=[str(tmp_path / "results" / "data" / key / MANIFEST)], threads=1)


def test_a_job_records_running_before_its_runner_then_failed_with_the_error_and_nothing_after_success(
        tmp_path, monkeypatch):
    import asft.workflow.jobs as jobs
    from asft.workflow.plan import write_node_files

    monkeypatch.chdir(tmp_path)  # jobs run in the working directory; records live under its .snakemake/
    plan = build_plan(load_config(TINY))
    write_node_files(plan)
    key = plan.keys("data")[0]
    seen: list[JobRecord | None] = []

    def runner_that_checks_its_record(node, inputs, final, *, threads):
        seen.append(read_record("data", key))
        if len(seen) == 1:
            raise ValueError("the dataset has no 'instruction'\ncolumn " + "x" * 1000)
        return {}

    monkeypatch.setattr(jobs, "run_stage", runner_that_checks_its_record)
    smk = fake_snakemake_job(tmp_path, "download_data", key)
    with pytest.raises(ValueError):
        jobs.run_from_snakemake(smk)
    started = seen[0]
    assert started is not None and started.state == RUNNING and started.pid == os.getpid()
    assert started.host == socket.gethostname() and started.started_epoch() is not None
    assert started.log == smk.log[0]
    failed = read_record("data", key)
    assert failed is not None and failed.state == FAILED and failed.finished is not None
    assert failed.error.startswith("ValueError: the dataset has no 'instruction' column xxx")
    assert "\n" not in failed.error and len(failed.error) <= ERROR_CHARS

    jobs.run_from_snakemake(smk)  # the re-run: running again, then success removes the record
    assert seen[1] is not None and seen[1].state == RUNNING and seen[1].error is None
    assert read_record("data", key) is None and not list((tmp_path / JOBS_DIR).rglob("*.tmp"))

    # A job that cannot even read its node file is recorded as failed too.
    with pytest.raises(FileNotFoundError):
        jobs.run_from_snakemake(fake_snakemake_job(tmp_path, "download_data", "f" * 16))
    missing = read_record("data", "f" * 16)
    assert missing is not None and missing.state == FAILED and "missing" in missing.error


def test_job_records_that_do_not_read_are_ignored_and_ctrl_c_leaves_the_running_record(tmp_path):
    path = record_path("train", "a" * 16, tmp_path)
    path.parent.mkdir(parents=True)
    for text in ("{not json", "[]", '{"stage": "train"}', json.dumps({**dataclasses.asdict(
            JobRecord("train", "a" * 16, RUNNING, 1, "h", now())), "state": "exploded"}), json.dumps({
            **dataclasses.asdict(JobRecord("train", "a" * 16, FAILED, 1, "h", now())), "error": ["not text"]})):
        path.write_text(text)
        assert read_record("train", "a" * 16, tmp_path) is None
    with pytest.raises(KeyboardInterrupt), job_record("train", "b" * 16, jobs_dir=tmp_path):
        raise KeyboardInterrupt  # the process ends now: status sees a running record without its process
    assert read_record("train", "b" * 16, tmp_path).state == RUNNING


def test_fix_removes_descendants_and_the_aggregate_and_clears_snakemakes_stale_marks(tmp_path):
    import base64

    results = tmp_path / "results"
    model = "0" * 16
    make_artifact(results, "model", model, {"w.safetensors": b"w"})
    make_artifact(results, "train", "1" * 16, {"a.bin": b"a"}, {"model": f"model/{model}"})
    make_artifact(results, "merge", "2" * 16, {"w.bin": b"m"},
                  {"train": f"train/{'1' * 16}", "model": f"model/{model}"})
    make_artifact(results, "score", "3" * 16, {"s.json": b"{}"},
                  {"model": f"merge/{'2' * 16}", "base": f"model/{model}"})
    make_artifact(results, "score", "4" * 16, {"s.json": b"{}"}, {"model": f"model/{model}"})
    for folder, keys in (("aaaaaaaaaaaaaaaa", ["3" * 16, "4" * 16]), ("bbbbbbbbbbbbbbbb", ["4" * 16])):
        with atomic_folder(results / "tables" / folder) as tmp:  # as the aggregate writes a table
            (tmp / "plan.json").write_text(json.dumps({"rows": [{"score_key": k} for k in keys]}))
            write_manifest(tmp, {"stage": "tables", "key": folder}, 0.0)
    (results / "table.csv").write_text("mode\n")
    (results / "train" / ("1" * 16) / "a.bin").write_bytes(b"changed")

    marks = tmp_path / ".snakemake" / "incomplete"
    marks.mkdir(parents=True)

    def mark(path: str) -> Path:
        marker = marks / base64.urlsafe_b64encode(path.encode()).decode()
        marker.write_text('{"external_jobid": null}')
        return marker
    sound = mark(f"results/score/{'4' * 16}/manifest.json")
    mark("results/runs.csv")
    (results / "runs.csv").write_text("half")
    mark(f"results/score/{'5' * 16}/manifest.json")  # no such file: harmless, not reported

    assert kinds(results) == {("train", "1" * 16): "corrupted"}
    out = io.StringIO()
    assert run_verify(results, out=out) == 1
    assert "marks results/score/4444444444444444/manifest.json incomplete" in out.getvalue()
    assert "incomplete  aggregate  results/runs.csv" in out.getvalue()
    assert run_verify(results, fix=True) == 0
    remaining = {p.parent.name for p in results.glob("*/*/manifest.json") if p.parent.parent.name != "tables"}
    assert remaining == {model, "4" * 16}  # train, and the merge and eval made from it, are gone
    assert not (results / "tables" / "aaaaaaaaaaaaaaaa").exists() and (results / "tables" / "bbbbbbbbbbbbbbbb").exists()
    assert not (results / "table.csv").exists() and not (results / "runs.csv").exists()
    assert not sound.exists()  # the mark of a sound artifact is cleared, the artifact kept
    assert run_verify(results) == 0


def test_an_artifact_whose_parent_was_deleted_is_reported_but_kept(tmp_path):
    import shutil

    results = tmp_path / "results"
    make_artifact(results, "model", "8" * 16, {"w.safetensors": b"w"})
    make_artifact(results, "generate", "9" * 16, {"s.json": b"{}"}, {"model": f"model/{'8' * 16}"})
    shutil.rmtree(results / "model" / ("8" * 16))
    assert kinds(results) == {("generate", "9" * 16): "orphan"}
    assert run_verify(results, fix=True) == 0 and (results / "generate" / ("9" * 16) / MANIFEST).is_file()


def test_verify_recomputes_the_key_from_the_manifest(tmp_path):
    """An edited manifest (a setting changed by hand) no longer hashes to its folder's key."""
    from asft.workflow.config import load_config
    from asft.workflow.plan import build_plan

    results = tmp_path / "results"
    node = build_plan(load_config()).nodes["data"][build_plan(load_config()).keys("data")[0]]
    final = results / "data" / node.key
    with writing_artifact(final, node) as tmp:
        (tmp / "train.jsonl").write_text("{}\n")
    assert kinds(results) == {}
    manifest = json.loads((final / MANIFEST).read_text())
    manifest["settings"]["size"] = 5
    (final / MANIFEST).write_text(json.dumps(manifest))
    findings = {(f.stage, f.name): f for f in scan(results)}
    assert findings[("data", node.key)].kind == "corrupted"
    assert f"not {node.key} (the manifest was edited)" in findings[("data", node.key)].detail


def test_a_job_checks_its_parents_before_reading_them_and_records_their_content(tmp_path, capsys):
    """A flipped byte in a parent stops the child before it reads anything; a complete child is returned
    at once (the resume after a kill past the rename); a child whose parent content changed is made again."""
    from asft.workflow.config import load_config
    from asft.workflow.integrity import ArtifactError, files_digest, read_manifest
    from asft.workflow.jobs import run_stage
    from asft.workflow.plan import build_plan

    plan = build_plan(load_config())
    results = tmp_path / "results"
    data = plan.nodes["data"][plan.keys("data")[0]]
    run_stage(data, {}, results / "data" / data.key)
    model = results / "model" / plan.keys("model")[0]
    make_artifact(results, "model", model.name, {"config.json": b"{}", "weights.bin": b"w" * 64})
    tokenize = plan.nodes["tokenize"][plan.keys("tokenize")[0]]
    inputs = {"model": model, "data": results / "data" / data.key}
    (model / "weights.bin").write_bytes(b"x" + b"w" * 63)
    with pytest.raises(ArtifactError, match=r"the model artifact .* is not what its manifest says: weights.bin: "
                                            r"sha256 mismatch.*asft verify --fix"):
        run_stage(tokenize, inputs, results / "tokenize" / tokenize.key)
    assert not (results / "tokenize" / tokenize.key).exists()

    # The data artifact is real: a second run of its job finds it complete and sound and returns at once.
    before = (results / "data" / data.key / MANIFEST).read_text()
    run_stage(data, {}, results / "data" / data.key)
    assert "already complete and sound" in capsys.readouterr().out
    assert (results / "data" / data.key / MANIFEST).read_text() == before
    manifest, _ = read_manifest(results / "data" / data.key)
    assert manifest["parent_files"] == {} and manifest["version"] == 1
    assert files_digest(manifest) == files_digest(json.loads(before))

    # A child made from the parent as it was: after the parent's content changes it is stale, removed and made again.
    from asft.workflow.jobs import _already_complete

    child = results / "tokenize" / tokenize.key
    with writing_artifact(child, tokenize, {"parent_files": {"data": files_digest(manifest)}}) as tmp:
        (tmp / "stats.json").write_text("{}")
    parent_inputs = {"data": results / "data" / data.key}
    assert _already_complete(tokenize, child, parent_inputs) == {}
    shutil.rmtree(results / "data" / data.key)
    make_artifact(results, "data", data.key, {"train.jsonl": b'{"instruction": "1+1=", "response": "2"}\n'})
    assert _already_complete(tokenize, child, parent_inputs) is None and not child.exists()
