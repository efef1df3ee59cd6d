"""`asft status`: where every job of a configuration stands, read from files and processes alone.

One row per training run (train set, mode, seed, key) with its state, and one line per other
stage (done/total). It reads structured signals only, never Snakemake's human-readable log (its
text is not an interface): the artifacts themselves, the job records each stage job keeps while it runs
(`.snakemake/asft/jobs/<stage>/<key>.json`, asft.workflow.job_records: `running` with the job's pid,
host and start time, rewritten as `failed` with the error when it raises, removed on success),
Snakemake's lock and incomplete markers (`.snakemake/locks/`, `.snakemake/incomplete/`) and the
Snakemake processes of the working directory. States, first match wins:

- done: `results/<stage>/<key>/manifest.json` exists (the folder is complete);
- running: the job's record says running and its process is alive on this host (the same process:
  a reused pid does not count), or the record comes from another host (a cluster node) while a
  Snakemake process runs in the working directory or its lock is held; or a `<key>.tmp-<pid>` folder
  belongs to a live process of this host;
- failed: the job's record says failed; the error (type and message) is shown, the traceback is in
  the rule's log;
- interrupted: a training run whose `<key>.partial/` folder holds a complete checkpoint and that
  nothing runs (the next `snakemake` run resumes from it); or a job that was killed: its record
  still says running but the process is gone (SIGKILL, SIGTERM, a lost node cannot update it) and no
  Snakemake runs here, or no record but Snakemake marks its output incomplete and no Snakemake runs;
- pending: none of the above (also a killed job's left-over record while a new Snakemake run has not
  restarted it yet).

For training runs the progress column shows the last step (the newest of the logged step and the
newest complete checkpoint, `trainer_state.json` of `checkpoint-N`), the checkpoint and `max_steps`.
The Snakemake lock is reported too: a lock with no Snakemake process in the directory was left by a
killed run (`snakemake --unlock`).

Nothing here runs a model; the only heavy import is the config validation's loss registry.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asft.ops.verify import format_table, incomplete_marks, pid_alive, snakemake_locks
from asft.train.checkpoints import complete_checkpoints
from asft.workflow.artifacts import MANIFEST, TMP_RE, artifact_dir, partial_dir
from asft.workflow.job_records import (
    FAILED,
    JOBS_DIR,
    RUNNING,
    JobRecord,
    is_this_host,
    read_record,
    recorded_process_alive,
)
from asft.workflow.stages import STAGE_NAMES

DONE, INTERRUPTED, PENDING = "done", "interrupted", "pending"
#: The trainer's metrics log in `<key>.partial/` (asft.train.trainer.METRICS_FILE; not imported: torch).
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class JobState:
    stage: str
    key: str
    labels: dict[str, Any]
    state: str
    progress: str = ""


@dataclass(frozen=True)
class Workflow:
    """What runs in a working directory, seen from this host."""

    workdir: Path
    pids: list[int] | None  # Snakemake processes in the working directory (None: no /proc to tell)
    locks: list[Path]  # Snakemake's lock files (a live run's, or a killed run's)
    marks: frozenset[str]  # outputs Snakemake marks incomplete, relative to the working directory

    @property
    def runs_here(self) -> bool:
        """A Snakemake process runs in the working directory (without /proc: a lock is held)."""
        return bool(self.pids) if self.pids is not None else bool(self.locks)

    @property
    def may_run(self) -> bool:
        """Snakemake may run somewhere: a process here, or a lock (held by a run on another host?)."""
        return bool(self.pids) or bool(self.locks)


# --- what Snakemake leaves in the working directory -------------------------------------------

def live_snakemake_pids(workdir: Path) -> list[int] | None:
    """Snakemake processes whose working directory is `workdir` (None: cannot tell, no /proc)."""
    proc = Path("/proc")
    if not (proc / "self" / "cmdline").exists():
        return None
    target = Path(workdir).resolve()
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args if a]
        is_snakemake = any(
            Path(w).name == "snakemake" or w.endswith("snakemake/__main__.py")
            or (w == "snakemake" and i > 0 and words[i - 1] == "-m")
            for i, w in enumerate(words[:4])
        )
        if is_snakemake and cwd == target:
            pids.append(int(entry.name))
    return sorted(pids)


def observe_workflow(workdir: Path) -> Workflow:
    workdir = Path(workdir)
    return Workflow(workdir, live_snakemake_pids(workdir), snakemake_locks(workdir),
                    frozenset(incomplete_marks(workdir)))


# --- training progress ------------------------------------------------------------------------

def _last_logged_step(partial: Path) -> int | None:
    try:
        with open(partial / METRICS_FILE, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def train_progress(partial: Path, max_steps: Any) -> str:
    """'step 45/60, last checkpoint checkpoint-40' from a training run's `<key>.partial/` folder.

    The metrics log and the checkpoints are written at different moments (a checkpoint may land
    before the metrics of its step are flushed), so the step shown is the newer of the two: never
    below the newest complete checkpoint."""
    good = complete_checkpoints(partial)
    known = [step for step in (_last_logged_step(partial), good[-1][0] if good else None) if step is not None]
    parts = []
    if known:
        parts.append(f"step {max(known)}{f'/{max_steps}' if max_steps else ''}")
    parts.append(f"last checkpoint {good[-1][1].name}" if good else "no checkpoint yet")
    return ", ".join(parts)


def _done_progress(final: Path, stage: str) -> str:
    if stage != "train":
        return ""
    try:
        steps = json.loads((final / MANIFEST).read_text()).get("stats", {}).get("steps")
    except (OSError, ValueError, AttributeError):
        return ""
    return f"{steps} steps" if steps is not None else ""


# --- the states -------------------------------------------------------------------------------

def _live_tmp_folder(final: Path) -> bool:
    """Whether a `<key>.tmp-<pid>` folder belongs to a process alive on this host."""
    return any(pid_alive(int(match.group("pid")))
               for tmp in final.parent.glob(f"{final.name}.tmp-*") if (match := TMP_RE.match(tmp.name)))


def record_runs(record: JobRecord, workflow: Workflow) -> bool:
    """Whether the job a running record names still runs: its process, on this host; on another host
    (a cluster node, whose processes this host cannot see), whether its workflow may still run."""
    return recorded_process_alive(record) if is_this_host(record) else workflow.may_run


def _where(record: JobRecord) -> str:
    return f"pid {record.pid} on {record.host}, started {record.started[:16].replace('T', ' ')}"


def _killed(record: JobRecord | None) -> str:
    """How a killed job was recognised."""
    if record is None:
        return "killed (Snakemake marks its output incomplete)"
    if is_this_host(record):
        return f"killed ({_where(record)}: that process is gone)"
    return f"killed? ({_where(record)}; no Snakemake runs here or holds a lock)"


def node_state(node: Any, results: Path, workflow: Workflow) -> tuple[str, str]:
    """(state, progress) of one job; the rules are in this module's docstring, in order."""
    stage, key = node.stage, node.key
    final = artifact_dir(results, stage, key)
    if (final / MANIFEST).is_file():
        return DONE, _done_progress(final, stage)
    partial = partial_dir(final)
    training = stage == "train" and partial.is_dir()
    max_steps = getattr(node.settings, "max_steps", None)
    record = read_record(stage, key, workflow.workdir / JOBS_DIR)
    recorded_running = record is not None and record.state == RUNNING
    if (recorded_running and record_runs(record, workflow)) or _live_tmp_folder(final):
        if training:
            return RUNNING, train_progress(partial, max_steps)
        return RUNNING, _where(record) if recorded_running else ""
    if record is not None and record.state == FAILED:
        return FAILED, (record.error or "failed") + (f" (log: {record.log})" if record.log else "")
    if training and complete_checkpoints(partial):
        return INTERRUPTED, train_progress(partial, max_steps) + "; the next run resumes from it"
    killed = recorded_running and not workflow.runs_here
    marked = record is None and not workflow.runs_here and _output_marked(final, workflow)
    if killed or marked:
        how = _killed(record)
        if training:
            return INTERRUPTED, f"{how}, {train_progress(partial, max_steps)}; the next run starts from step 0"
        return INTERRUPTED, f"{how}; the next run starts it again"
    return PENDING, ""


def _output_marked(final: Path, workflow: Workflow) -> bool:
    """Whether Snakemake marks this job's manifest incomplete (it started the job, never recorded its end)."""
    try:
        relative = (final / MANIFEST).resolve().relative_to(workflow.workdir.resolve())
    except ValueError:
        return False
    return str(relative) in workflow.marks


def job_states(plan: Any, results: Path) -> tuple[list[JobState], dict[str, Any]]:
    results = Path(results)
    workflow = observe_workflow(results.resolve().parent)
    states = []
    for stage in STAGE_NAMES:
        for key in plan.keys(stage):
            node = plan.node(stage, key)
            state, progress = node_state(node, results, workflow)
            states.append(JobState(stage, key, dict(node.labels), state, progress))
    info = {"pids": workflow.pids, "locks": workflow.locks, "workdir": workflow.workdir}
    return states, info


def aggregate_state(plan: Any, results: Path) -> str:
    """The results table of this configuration: up to date, out of date, or what it waits for."""
    results = Path(results)
    evals = [results / "score" / key / MANIFEST for key in plan.keys("score")]
    done = sum(e.is_file() for e in evals)
    if done < len(evals):
        return f"waiting for scores ({done}/{len(evals)} done)"
    table_key = plan.table_key() if hasattr(plan, "table_key") else None
    table = results / "tables" / table_key / "table.csv" if table_key else results / "table.csv"
    where = table.parent if table_key else table
    if not table.is_file():
        return f"not built yet ({where})"
    newer = sum(e.stat().st_mtime > table.stat().st_mtime for e in evals)
    return f"out of date: {newer} score(s) are newer ({where})" if newer else f"up to date ({where})"


def lock_line(info: dict[str, Any]) -> str:
    locks, pids = info["locks"], info["pids"]
    if pids:
        return f"snakemake: running in {info['workdir']} (pid {', '.join(map(str, pids))})"
    if locks and pids is None:
        return (f"snakemake: {len(locks)} lock file(s) in {info['workdir']}/.snakemake/locks "
                "(a run is active, or was killed)")
    if locks:
        return (f"snakemake: stale lock: no Snakemake process runs in {info['workdir']} on this host; a killed run "
                "left it. Run `snakemake --unlock` (with the same --configfile), then re-run to resume.")
    return "snakemake: not running, no lock"


def run_status(configfiles: list[str], results: Path, *, out=None) -> int:
    """The `asft status` command."""
    from asft.workflow.config import load_config
    from asft.workflow.plan import build_plan

    out = out or sys.stdout
    plan = build_plan(load_config(*configfiles))
    states, info = job_states(plan, results)
    modes = list(plan.config.modes)
    sets = [t.name for t in plan.config.train_sets]
    train = sorted((s for s in states if s.stage == "train"), key=lambda s: (
        sets.index(s.labels["train_set"]) if s.labels.get("train_set") in sets else len(sets),
        modes.index(s.labels["mode"]) if s.labels.get("mode") in modes else len(modes), str(s.labels.get("seed"))))
    rows = [(s.labels.get("train_set", ""), s.labels.get("mode", ""), s.labels.get("seed", ""), s.key, s.state,
             s.progress) for s in train]
    print(f"training runs of '{plan.config.name}' in {results}:", file=out)
    print(format_table(rows, ("train_set", "mode", "seed", "key", "state", "progress")), file=out)
    print("", file=out)
    lines = []
    for stage in STAGE_NAMES:
        counts = Counter(s.state for s in states if s.stage == stage)
        total = sum(counts.values())
        if total:
            extra = ", ".join(f"{counts[k]} {k}" for k in ("running", "failed", "interrupted") if counts[k])
            lines.append((stage, f"{counts['done']}/{total}", extra))
    lines.append(("aggregate", aggregate_state(plan, results), ""))
    print(format_table(lines, ("stage", "done/total", "")), file=out)
    print(lock_line(info), file=out)
    for job in states:  # the training runs' details are in their table above
        if job.state in (FAILED, INTERRUPTED) and job.stage != "train":
            print(f"{job.state}: {job.stage} {job.key} {json.dumps(job.labels)}: {job.progress}", file=out)
    return 0
