"""Kill harness: a run SIGKILLed anywhere resumes with the documented command and gives the same table.

The documented resume after any kill (docs/reliability.md, "After a kill") is `snakemake --unlock`
with the killed run's --configfile, then the same snakemake command; nothing else (no
`asft verify --fix`, no --rerun-incomplete typed by hand: the workflow profile sets it). Every test
here kills the whole Snakemake process group (Snakemake and every job it started) with SIGKILL, runs
exactly those two commands, and checks that the second exits 0 with `results/table.csv` and
`results/runs.csv` byte-identical to an uninterrupted reference run of tests/configs/tiny.yaml, that
`asft verify` exits 0, that a dry run has nothing left to do and that nothing is left behind.

Kill points, per stage (model, data, tokenize, train, merge, generate, score, aggregate, publish):
- running: the stage's job is writing (its `<key>.tmp-<pid>` folder exists); for train also
  `checkpoint` (a complete checkpoint exists in `<key>.partial/`) and `saving` (a checkpoint folder
  without its trainer_state.json: killed while saving it);
- renamed: just after the rename (the artifact's manifest.json, the aggregate's keyed table, the
  published results/table.csv appeared) while Snakemake has not yet recorded the job: its incomplete
  mark is still there, which is checked after the kill (the hardest point);
- before: the stage has not begun writing although its parent is complete and recorded by Snakemake
  (for model and data, which have no parent: Snakemake has dispatched the job, nothing written yet).

Default suite (`pytest`; about 2.5 minutes on 2 cores): one uninterrupted reference run (shared by
every test here); one fresh run killed just after the rename of each stage in turn (9 kills, each
followed by --unlock; each next command is itself killed at the next stage, the last one must
finish), then compared with the reference; and the score -> aggregate corruption case below (20 s).

Full matrix (opt-in, about 20 minutes on 2 cores): every stage x point above, each from a copy of
the reference run with the stage's artifact (or its parent, for `before`) and everything made from
it removed, and a corruption case per parent kind (a flipped byte in the model weights, the data's
train.jsonl, the tokenized dataset's arrow file, the train adapter, the merged weights, a
generation's samples.jsonl, a score's scores.json): the child job must stop before using it, its log and Snakemake's output naming the
file and `asft verify --fix`, and after `asft verify --fix` the same command must give the reference
table again. Run everything in this file with

    ASFT_KILL_MATRIX=1 .venv/bin/python -m pytest tests/test_kill_harness.py -rA

(`-m kill_matrix` selects the opt-in part only). Without ASFT_KILL_MATRIX=1 it is skipped.

Besides the table, every resumed run's weights, data and generations (the content files of every
artifact) must equal the reference's; stats.json, scores.json and metrics.jsonl record wall times,
and peft writes a LoRA adapter_config.json's target_modules in set order, so those differ between any
two runs. A kill meant to fall just after a rename that came after Snakemake had recorded the job
(the data job leaves only about 50 ms) is undone and tried again, up to ATTEMPTS times.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from asft.workflow.artifacts import KEY_RE
from tests.snakemake_runs import SNAKEMAKE, TINY, asft, group_gone, output, smk

CONFIG = ["--configfile", str(TINY)]
COMMAND = [*CONFIG, "--cores", "2"]  # "the same snakemake command", every time
COMPARED = ("table.csv", "runs.csv")
# Seconds between looks at the results folder while waiting for a kill point. Between a rename and
# Snakemake recording the job there are about 1 s for the stages that load torch, 0.3 s for the
# aggregate, 0.1 s for publish, and only about 50 ms for the data job (measured here, 2 cores).
POLL = 0.005
ATTEMPTS = 3  # a kill meant to fall in that window that came too late is tried again (it is reported)
# Stage -> folder under results/ (the aggregate writes results/tables/<key>/; publish the fixed names).
FOLDERS = {"model": "model", "data": "data", "tokenize": "tokenize", "train": "train", "merge": "merge",
           "generate": "generate", "score": "score", "aggregate": "tables"}
ORDER = ["data", "model", "tokenize", "train", "merge", "generate", "score", "aggregate", "publish"]
PUBLISHED = ["table.csv", "table.md", "table.html", "table.tex", "runs.csv", "table.png", "curves.png",
             "sweep.png", "dynamics.png", "models.png", "cost.csv"]
# The full matrix: marked slow and kill_matrix, and skipped unless ASFT_KILL_MATRIX=1.
OPT_IN = [pytest.mark.slow, pytest.mark.kill_matrix,
          pytest.mark.skipif(os.environ.get("ASFT_KILL_MATRIX") != "1",
                             reason="the full kill matrix is opt-in: ASFT_KILL_MATRIX=1 "
                                    "(see tests/test_kill_harness.py)")]


# --- running Snakemake and looking at its working directory ---------------------------------------

def mark_path(workdir: Path, output: str) -> Path:
    """Snakemake's incomplete mark of an output (path relative to the working directory)."""
    return workdir / ".snakemake" / "incomplete" / base64.urlsafe_b64encode(output.encode()).decode()


def marked(workdir: Path) -> set[str]:
    folder = workdir / ".snakemake" / "incomplete"
    if not folder.is_dir():
        return set()
    out = set()
    for marker in folder.iterdir():
        try:
            out.add(base64.urlsafe_b64decode(marker.name.encode()).decode())
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def manifest_files(workdir: Path) -> list[Path]:
    """The manifest.json of every artifact folder `results/<stage>/<key>/` (not of a `<key>.tmp-<pid>`
    folder being written: its manifest is written before the rename)."""
    return [p for p in (workdir / "results").glob("*/*/manifest.json") if KEY_RE.match(p.parent.name)]


def done(workdir: Path) -> set[str]:
    """'stage/key' of every artifact with a manifest (the aggregate's as 'tables/<key>')."""
    return {f"{p.parent.parent.name}/{p.parent.name}" for p in manifest_files(workdir)}


def leftovers(workdir: Path) -> list[str]:
    results = workdir / "results"
    found = [*results.glob("*/*.tmp-*"), *results.glob("*/*.partial"), *results.glob("*.tmp"),
             *results.glob("tables/*/*.tmp")]
    return sorted(str(p.relative_to(workdir)) for p in found)


def artifact_output(stage: str, key: str) -> str:
    """The output whose incomplete mark says Snakemake has not recorded the stage's job."""
    if stage == "publish":
        return "results/table.csv"
    if stage == "aggregate":
        return f"results/tables/{key}/table.csv"
    return f"results/{FOLDERS[stage]}/{key}/manifest.json"


@dataclass
class Kill:
    """What a kill hit: the point's description and the state frozen by the kill."""

    point: str
    hit: str | None  # what the condition saw (None: the run ended or timed out first)
    seconds: float
    log: Path
    marks: set[str] = field(default_factory=set)
    tmp: list[str] = field(default_factory=list)


def run_and_kill(workdir: Path, condition: Callable[[Path], str | None], log: Path, point: str,
                 timeout: float = 900) -> Kill:
    """Start the same snakemake command in its own session, look every POLL seconds, SIGKILL the whole
    process group as soon as `condition` returns something, and wait until every process is gone."""
    started = time.time()
    with open(log, "w") as handle:
        proc = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), *COMMAND], stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    hit = None
    try:
        while time.time() - started < timeout and proc.poll() is None:
            hit = condition(workdir)
            if hit:
                break
            time.sleep(POLL)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
        except ProcessLookupError:
            pass
        proc.wait()
    assert group_gone(proc.pid, timeout=30), "a job survived the SIGKILL of its process group"
    kill = Kill(point, hit, time.time() - started, log, marked(workdir), leftovers(workdir))
    assert hit, f"{point}: the point was never reached (rc {proc.returncode}):\n{log.read_text()[-4000:]}"
    return kill


def resume(workdir: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The documented resume: `snakemake --unlock` with the same --configfile, then the same command."""
    unlock = smk(workdir, *CONFIG, "--unlock")
    assert unlock.returncode == 0, output(unlock)[-3000:]
    return unlock, smk(workdir, *COMMAND)


def table_bytes(workdir: Path) -> dict[str, bytes]:
    return {name: (workdir / "results" / name).read_bytes() for name in COMPARED}


def content(name: str) -> bool:
    """Files whose bytes two runs of the same config share: weights, data, generations. Not stats.json,
    scores.json and metrics.jsonl (they record wall times), nor a LoRA adapter_config.json (peft writes
    target_modules from a set: its order changes from one process to the next)."""
    return name.endswith((".safetensors", ".arrow")) or Path(name).name in ("train.jsonl", "samples.jsonl", "graded.jsonl")


def file_tables(workdir: Path) -> dict[str, dict[str, str]]:
    """'stage/key' -> name -> sha256 of the content files of every artifact (from its manifest)."""
    return {f"{p.parent.parent.name}/{p.parent.name}": {name: digest for name, digest in
                                                        json.loads(p.read_text())["files"].items() if content(name)}
            for p in manifest_files(workdir) if p.parent.parent.name != "tables"}


def check_resumed(workdir: Path, reference: "Reference", result: subprocess.CompletedProcess) -> None:
    """Exit 0, the reference's table and per-run rows byte for byte, `asft verify` sound, nothing left
    to do, nothing left behind."""
    assert result.returncode == 0, f"the resumed run failed:\n{output(result)[-6000:]}"
    assert table_bytes(workdir) == reference.tables, "the resumed run's table differs from the reference"
    verify = asft(workdir, "verify")
    assert verify.returncode == 0, f"asft verify after the resumed run:\n{output(verify)[-3000:]}"
    assert leftovers(workdir) == []
    assert marked(workdir) == set(), f"Snakemake still marks outputs incomplete: {sorted(marked(workdir))}"
    dry = smk(workdir, *CONFIG, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in output(dry), f"a dry run after it:\n{output(dry)[-3000:]}"
    files = file_tables(workdir)
    assert set(files) == set(reference.files), f"artifacts: {sorted(set(files) ^ set(reference.files))} differ"
    changed = {ref for ref, table in files.items() if reference.files[ref] != table}
    assert not changed, f"artifacts whose weights, data or generations differ from the reference: {sorted(changed)}"


@dataclass
class Reference:
    workdir: Path
    tables: dict[str, bytes]
    files: dict[str, dict[str, str]]
    seconds: float


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """One uninterrupted run of the tiny config: the bytes every resumed run must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    started = time.time()
    result = smk(workdir, *COMMAND)
    assert result.returncode == 0, output(result)[-4000:]
    return Reference(workdir, table_bytes(workdir), file_tables(workdir), time.time() - started)


def manifests(workdir: Path) -> dict[str, dict]:
    return {f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
            for p in manifest_files(workdir)}


def remove_with_descendants(workdir: Path, refs: set[str]) -> set[str]:
    """Remove artifacts, every artifact made from them, and the table made from a removed evaluation
    (what `asft verify --fix` removes for a corrupted one: Snakemake then recomputes exactly those)."""
    parents = {ref: set((m.get("parents") or {}).values()) for ref, m in manifests(workdir).items()}
    gone = set(refs)
    while grown := {ref for ref, ps in parents.items() if ref not in gone and ps & gone}:
        gone |= grown
    if any(ref.startswith("score/") for ref in gone) and (workdir / "results" / "tables").is_dir():
        gone |= {f"tables/{table.name}" for table in (workdir / "results" / "tables").iterdir()}
    for ref in gone:
        shutil.rmtree(workdir / "results" / ref)
    return gone


def remove_published(workdir: Path) -> None:
    for name in PUBLISHED:
        (workdir / "results" / name).unlink(missing_ok=True)


# --- kill conditions ------------------------------------------------------------------------------

def renamed(stage: str, before: set[str]) -> Callable[[Path], str | None]:
    """A manifest of `stage` that was not there before (publish: results/table.csv appeared)."""
    if stage == "publish":
        return lambda w: "results/table.csv" if (w / "results" / "table.csv").exists() else None
    folder = FOLDERS[stage]

    def condition(workdir: Path) -> str | None:
        new = sorted(ref for ref in done(workdir) - before if ref.startswith(folder + "/"))
        return new[0] if new else None
    return condition


def key_of(hit: str) -> str:
    return hit.split("/", 1)[1]


# --- default suite: one fresh run, killed just after each stage's rename --------------------------

@pytest.mark.slow
def test_a_run_killed_just_after_each_stages_rename_resumes_with_unlock_and_the_same_command(reference,
                                                                                            tmp_path):
    """Nine SIGKILLs of one fresh run, each just after a stage's artifact was renamed into place while
    Snakemake still marks it incomplete; each followed by `snakemake --unlock` and the same command.
    The last command must finish with the reference's bytes."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    kills, missed = [], []
    for stage in ORDER:
        for attempt in range(ATTEMPTS):
            kill = run_and_kill(workdir, renamed(stage, done(workdir)), tmp_path / f"{stage}-{attempt}.log",
                                f"{stage} renamed")
            unlock = smk(workdir, *CONFIG, "--unlock")
            assert unlock.returncode == 0, output(unlock)[-3000:]
            # The kill must fall between the rename and Snakemake recording the job: its mark is still there.
            if artifact_output(stage, key_of(kill.hit) if stage != "publish" else "") in kill.marks:
                kills.append(kill)
                break
            missed.append(kill.hit)  # too late: Snakemake had recorded the job; undo it and try again
            if stage == "aggregate":
                shutil.rmtree(workdir / "results" / kill.hit)
            elif stage != "publish":
                remove_with_descendants(workdir, {kill.hit})
            remove_published(workdir)
        else:
            pytest.fail(f"{stage}: {ATTEMPTS} kills all came after Snakemake had recorded the job: {missed}")
    print(f"reference run {reference.seconds:.0f}s; killed just after the rename of {[kill.hit for kill in kills]}; "
          f"windows missed and retried: {missed}")
    final = smk(workdir, *COMMAND)
    check_resumed(workdir, reference, final)
    # Each artifact caught just after its rename was kept, not made again: its job found it sound.
    for kill in kills[:-2]:
        stage, key = kill.hit.split("/")
        log = (workdir / "logs" / stage / f"{key}.log").read_text()
        assert "is already complete and sound: nothing to do" in log, log[-3000:]


# --- the full matrix (opt-in): every stage x kill point, from a copy of the reference -------------

POINTS = {
    "model": ["running", "renamed", "before"],
    "data": ["running", "renamed", "before"],
    "tokenize": ["running", "renamed", "before"],
    "train": ["running", "checkpoint", "saving", "renamed", "before"],
    "merge": ["running", "renamed", "before"],
    "generate": ["running", "renamed", "before"],
    "score": ["running", "renamed", "before"],
    "aggregate": ["running", "renamed", "before"],
    # publish copies five files (milliseconds): no `running` point to aim at
    "publish": ["renamed", "before"],
}
# The parent whose completion is the `before` point of each stage (None: the job's dispatch).
PARENT = {"model": None, "data": None, "tokenize": "data", "train": "tokenize", "merge": "train",
          "generate": "merge", "score": "generate", "aggregate": "score", "publish": "aggregate"}
MATRIX = [(stage, point) for stage in ORDER for point in POINTS[stage]]


def instances(workdir: Path) -> dict[str, str]:
    """stage -> 'folder/key' of the instance the matrix aims at: the sft run's train, merge and first
    evaluation (by benchmark), and the single model, data, tokenize and table."""
    found = manifests(workdir)

    def one(folder: str, test: Callable[[dict], bool] = lambda m: True) -> str:
        refs = sorted((m.get("labels") or {}).get("benchmark", "") + " " + ref for ref, m in found.items()
                      if ref.startswith(folder + "/") and test(m))
        return refs[0].split(" ", 1)[1]
    train = one("train", lambda m: m["labels"]["mode"] == "sft")
    merge = one("merge", lambda m: m["parents"]["train"] == train)
    generate = one("generate", lambda m: m["parents"]["model"] == merge)
    return {"model": one("model"), "data": one("data"), "tokenize": one("tokenize"), "train": train,
            "merge": merge, "generate": generate, "score": one("score", lambda m: m["parents"]["samples"] == generate),
            "aggregate": one("tables"), "publish": "results/table.csv"}


def copy_reference(reference: Reference, workdir: Path) -> dict[str, str]:
    shutil.copytree(reference.workdir, workdir, symlinks=True)  # copy2: modification times kept
    shutil.rmtree(workdir / "logs")  # the copy's logs would hide what the resumed jobs write
    return instances(workdir)


def aim(stage: str, point: str, workdir: Path, targets: dict[str, str]) -> Callable[[Path], str | None]:
    """Remove what makes the run reach the point, and return the kill condition."""
    target = targets[stage]
    if point == "before" and PARENT[stage] is not None:
        remove_with_descendants(workdir, {targets[PARENT[stage]]})
    elif stage != "publish":
        remove_with_descendants(workdir, {target})
    remove_published(workdir)
    results = workdir / "results"
    key = key_of(target) if stage != "publish" else ""
    output = artifact_output(stage, key)
    if stage == "publish":
        started = lambda: (results / "table.csv").exists() or bool(list(results.glob("*.tmp")))  # noqa: E731
    else:
        started = lambda: (results / target / "manifest.json").exists() or bool(  # noqa: E731
            list(results.glob(f"{target}.tmp-*")))

    def condition(w: Path) -> str | None:
        if point == "running":
            tmp = sorted(results.glob(f"{target}.tmp-*"))
            return str(tmp[0].relative_to(w)) if tmp else None
        if point == "checkpoint":
            found = sorted(results.glob(f"{target}.partial/checkpoint-*/trainer_state.json"))
            return str(found[0].parent.relative_to(w)) if found else None
        if point == "saving":  # a checkpoint folder without its trainer_state.json yet: being written
            found = [p for p in sorted(results.glob(f"{target}.partial/checkpoint-*"))
                     if not (p / "trainer_state.json").exists()]
            return str(found[0].relative_to(w)) if found else None
        if point == "renamed":
            path = results / "table.csv" if stage == "publish" else results / target / "manifest.json"
            return str(path.relative_to(w)) if path.exists() else None
        # before: the parent is complete and Snakemake recorded it (or, without a parent, Snakemake has
        # dispatched the job), and the stage has not begun writing.
        if started():
            return None
        if PARENT[stage] is None:
            return f"{output} marked, nothing written" if mark_path(w, output).exists() else None
        parent = targets[PARENT[stage]]
        parent_output = artifact_output(PARENT[stage], key_of(parent))
        if (results / parent / "manifest.json").exists() and not mark_path(w, parent_output).exists():
            return f"{parent} recorded, {stage} not begun"
        return None

    condition.started = started  # type: ignore[attr-defined]
    condition.output = output  # type: ignore[attr-defined]
    return condition


@pytest.mark.parametrize(("stage", "point"), [pytest.param(s, p, id=f"{s}-{p}", marks=OPT_IN) for s, p in MATRIX])
def test_kill_matrix(reference, tmp_path, stage, point):
    workdir = tmp_path / "work"
    targets = copy_reference(reference, workdir)
    missed = []
    for attempt in range(ATTEMPTS):
        condition = aim(stage, point, workdir, targets)
        kill = run_and_kill(workdir, condition, tmp_path / f"killed-{attempt}.log", f"{stage} {point}")
        if point != "renamed" or condition.output in kill.marks:
            break
        missed.append(kill.hit)  # too late: Snakemake had recorded the job; unlock, undo it (aim), try again
        assert smk(workdir, *CONFIG, "--unlock").returncode == 0
    else:
        pytest.fail(f"{ATTEMPTS} kills all came after Snakemake had recorded the job: {missed}")
    target = targets[stage]
    results = workdir / "results"
    if point in ("running", "checkpoint", "saving"):
        assert not (results / target / "manifest.json").exists(), "a killed job left a complete-looking artifact"
    elif point == "before":
        assert not condition.started(), f"{stage} had begun writing: the kill was not before it ({kill.tmp})"
    unlock, result = resume(workdir)
    print(f"{stage} {point}: killed after {kill.seconds:.1f}s at {kill.hit}; marks {sorted(kill.marks)}; "
          f"leftovers {kill.tmp}; missed windows {missed}; resumed rc {result.returncode}")
    check_resumed(workdir, reference, result)
    log = workdir / "logs" / (f"{stage}.log" if stage in ("aggregate", "publish") else f"{stage}/{key_of(target)}.log")
    if point == "renamed" and stage not in ("aggregate", "publish"):
        assert "is already complete and sound: nothing to do" in log.read_text(), log.read_text()[-3000:]
    if point == "checkpoint":
        stats = json.loads((results / target / "stats.json").read_text())
        assert stats.get("resumed_from") == Path(kill.hit).name, stats


# --- corrupted inputs (opt-in): the child stops before using them; verify --fix, then the same command

CORRUPTIONS = {  # parent stage: (file in it, child stage that reads it)
    "model": ("model.safetensors", "train"),
    "data": ("train.jsonl", "tokenize"),
    "tokenize": ("dataset/data-00000-of-00001.arrow", "train"),
    "train": ("model/adapter_model.safetensors", "merge"),
    "merge": ("model.safetensors", "generate"),
    "generate": ("samples.jsonl", "score"),
    "score": ("scores.json", "aggregate"),
}


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# The score -> aggregate case takes 20 s: it runs in the default suite too.
@pytest.mark.parametrize("parent", [pytest.param(p, marks=[] if p == "score" else OPT_IN) for p in CORRUPTIONS])
@pytest.mark.slow
def test_corrupted_parent_stops_its_child_then_verify_fix_and_the_same_command_restore_the_table(
        reference, tmp_path, parent):
    workdir = tmp_path / "work"
    targets = copy_reference(reference, workdir)
    name, child = CORRUPTIONS[parent]
    folder = workdir / "results" / targets[parent]
    flip_byte(folder / name)
    remove_with_descendants(workdir, {targets[child]})  # the child must run again, and read its parent
    remove_published(workdir)
    failed = smk(workdir, *COMMAND)
    out = output(failed)
    assert failed.returncode != 0, out[-4000:]
    log_name = "aggregate.log" if child == "aggregate" else f"{child}/{key_of(targets[child])}.log"
    log = (workdir / "logs" / log_name).read_text()
    message = [f"results/{targets[parent]} is not what its manifest says", f"{name}: sha256 mismatch",
               "Nothing was read from it", "asft verify --fix"]
    for where, said in (("Snakemake's output", out), (f"logs/{log_name}", log)):
        missing = [part for part in message if part not in said]
        assert not missing, f"{where} lacks {missing}:\n{said[-4000:]}"
    assert not (workdir / "results" / targets[child] / "manifest.json").exists()
    found = asft(workdir, "verify")
    assert found.returncode == 1 and targets[parent].split("/")[1] in found.stdout, output(found)
    fixed = asft(workdir, "verify", "--fix")
    assert fixed.returncode == 0, output(fixed)
    assert not folder.exists()
    result = smk(workdir, *COMMAND)
    print(f"{parent}/{name} corrupted: {child} stopped with the message; verify --fix, rerun rc {result.returncode}")
    check_resumed(workdir, reference, result)
