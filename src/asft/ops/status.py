"""`asft status`: where every job of a configuration stands, read from the files alone.

One row per training run (train set, mode, seed, key) with its state, and one line per other
stage (done/total). States:

- done: `results/<stage>/<key>/manifest.json` exists (the folder is complete);
- running: a job's `<key>.tmp-<pid>` folder belongs to a live process on this host, or a Snakemake
  process runs in the working directory and its log shows the job started and not failed;
- failed: the newest Snakemake log that mentions the job reports `Error in rule ...` for it, or
  the rule's log (`logs/<stage>/<key>.log`) ends with a traceback or an error line;
- interrupted (training only): a `<key>.partial/` folder holds checkpoints of a killed run and
  nothing runs it now; the next `snakemake` run resumes from the newest one;
- pending: none of the above.

For training runs the progress column shows the last logged step, the newest complete checkpoint
(`trainer_state.json` of `checkpoint-N`) and `max_steps`. The Snakemake lock is reported too: a
lock with no Snakemake process in the directory was left by a killed run (`snakemake --unlock`).

Nothing here runs a model; the only heavy import is the config validation's loss registry.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asft.workflow.artifacts import MANIFEST
from asft.ops.verify import format_table, pid_alive, snakemake_locks
from asft.train.checkpoints import complete_checkpoints
from asft.workflow.artifacts import TMP_RE
from asft.workflow.stages import STAGE_NAMES as STAGE_ORDER

RULES = {"model": "download_model", "data": "download_data"}  # stage -> rule name where they differ
STARTED, ERROR = "started", "error"
_ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Interrupt)\b.*|^Traceback \(most recent call last\):")
_RULE_START = re.compile(r"^(?:local)?rule (\S+):\s*$")
_RULE_ERROR = re.compile(r"^Error in rule (\S+):\s*$")


@dataclass(frozen=True)
class JobState:
    stage: str
    key: str
    labels: dict[str, Any]
    state: str
    progress: str = ""


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


def snakemake_events(workdir: Path, max_logs: int = 50) -> tuple[dict[str, str], dict[str, str], Path | None]:
    """Per output path: the last event over all Snakemake logs, and the events of the newest log.

    Events are 'started' (a `rule X:` block listing the output) and 'error' (`Error in rule X:`).
    """
    logs = sorted((Path(workdir) / ".snakemake" / "log").glob("*.snakemake.log"))[-max_logs:]
    overall: dict[str, str] = {}
    newest: dict[str, str] = {}
    for log in logs:
        events: dict[str, str] = {}
        kind = None
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if _RULE_ERROR.match(line):
                kind = ERROR
            elif _RULE_START.match(line):
                kind = STARTED
            elif line.startswith("    output: ") and kind:
                for path in line.removeprefix("    output: ").split(", "):
                    events[path.strip()] = kind
            elif line and not line[0].isspace():
                kind = None
        overall.update(events)
        newest = events
    return overall, newest, (logs[-1] if logs else None)


def log_error(log: Path, tail: int = 8192) -> str | None:
    """The last error line of a rule log that ends with a traceback or an error, else None."""
    try:
        with open(log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - tail))
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("[asft] ") and not line.endswith(" done")]
    if starts:
        lines = lines[starts[-1]:]  # the log is appended to: judge only the latest attempt
    if not lines:
        return None
    if any(line.startswith("Traceback (most recent call last):") for line in lines):
        errors = [line for line in lines if _ERROR_LINE.match(line) and not line.startswith("Traceback")]
        return errors[-1] if errors else "traceback"
    return lines[-1] if _ERROR_LINE.match(lines[-1]) else None


# --- training progress ------------------------------------------------------------------------

def _last_logged_step(partial: Path) -> int | None:
    try:
        with open(partial / "metrics.jsonl", "rb") as handle:
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
    """'step 45/60, checkpoint-40' from a training run's checkpoint folder."""
    good = complete_checkpoints(partial)
    logged = _last_logged_step(partial)
    parts = []
    total = f"/{max_steps}" if max_steps else ""
    step = logged if logged is not None else (good[-1][0] if good else None)
    if step is not None:
        parts.append(f"step {step}{total}")
    parts.append(f"last checkpoint {good[-1][1].name}" if good else "no checkpoint yet")
    return ", ".join(parts)


# --- the states -------------------------------------------------------------------------------

def job_states(plan: Any, results: Path) -> tuple[list[JobState], dict[str, Any]]:
    results = Path(results)
    workdir = results.resolve().parent
    try:
        prefix = str(results.resolve().relative_to(workdir))
    except ValueError:
        prefix = str(results)
    pids = live_snakemake_pids(workdir)
    locks = snakemake_locks(workdir)
    active = bool(pids) if pids is not None else bool(locks)
    overall, newest, newest_log = snakemake_events(workdir)
    states = []
    for stage in STAGE_ORDER:
        for key in plan.keys(stage):
            node = plan.node(stage, key)
            folder = results / stage / key
            output = f"{prefix}/{stage}/{key}/{MANIFEST}"
            partial = results / stage / f"{key}.partial"
            progress = ""
            if (folder / MANIFEST).is_file():
                state = "done"
                if stage == "train":
                    try:
                        steps = json.loads((folder / MANIFEST).read_text()).get("stats", {}).get("steps")
                        progress = f"{steps} steps" if steps is not None else ""
                    except (OSError, ValueError, AttributeError):
                        progress = ""
            else:
                live_tmp = any(
                    pid_alive(int(m.group("pid")))
                    for p in (results / stage).glob(f"{key}.tmp-*") if (m := TMP_RE.match(p.name))
                )
                error = log_error(workdir / "logs" / stage / f"{key}.log")
                if live_tmp or (active and newest.get(output) == STARTED):
                    state = "running"
                elif overall.get(output) == ERROR or error:
                    state = "failed"
                    progress = error or f"see {newest_log.relative_to(workdir) if newest_log else 'the Snakemake log'}"
                elif stage == "train" and partial.is_dir():
                    state = "interrupted"
                else:
                    state = "pending"
                if stage == "train" and partial.is_dir() and state in ("running", "interrupted"):
                    progress = train_progress(partial, node.settings.max_steps)
                    if state == "interrupted":
                        progress += "; the next run resumes from it" if "checkpoint-" in progress else ""
            states.append(JobState(stage, key, dict(node.labels), state, progress))
    info = {"pids": pids, "locks": locks, "active": active, "workdir": workdir, "newest_log": newest_log}
    return states, info


def aggregate_state(plan: Any, results: Path) -> str:
    """The results table of this configuration: up to date, out of date, or what it waits for."""
    results = Path(results)
    evals = [results / "eval" / key / MANIFEST for key in plan.keys("eval")]
    done = sum(e.is_file() for e in evals)
    if done < len(evals):
        return f"waiting for evaluations ({done}/{len(evals)} done)"
    table_key = plan.table_key() if hasattr(plan, "table_key") else None
    table = results / "tables" / table_key / "table.csv" if table_key else results / "table.csv"
    where = table.parent if table_key else table
    if not table.is_file():
        return f"not built yet ({where})"
    newer = sum(e.stat().st_mtime > table.stat().st_mtime for e in evals)
    return f"out of date: {newer} evaluation(s) are newer ({where})" if newer else f"up to date ({where})"


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
    for stage in STAGE_ORDER:
        counts = Counter(s.state for s in states if s.stage == stage)
        total = sum(counts.values())
        if total:
            extra = ", ".join(f"{counts[k]} {k}" for k in ("running", "failed", "interrupted") if counts[k])
            lines.append((stage, f"{counts['done']}/{total}", extra))
    lines.append(("aggregate", aggregate_state(plan, results), ""))
    print(format_table(lines, ("stage", "done/total", "")), file=out)
    print(lock_line(info), file=out)
    for job in states:
        if job.state == "failed" and job.stage != "train":
            print(f"failed: {job.stage} {job.key} {json.dumps(job.labels)}: {job.progress}", file=out)
    return 0
