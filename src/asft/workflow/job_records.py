"""Job records: what a running or failed job says about itself, for `asft status`.

A stage job writes `.snakemake/asft/jobs/<stage>/<key>.json` (beside the node files,
asft.workflow.plan.NODES_DIR) when it starts, with `state: running`, its `pid`, `host` and `started`
time; if it raises, it rewrites the record with `state: failed`, `finished` and `error` (the
exception's type and message on one line). On success the record is removed: the artifact's
manifest is the record of success. A job killed outright (SIGKILL, SIGTERM, a lost node) cannot
write anything, so its record keeps saying `running` with a process that no longer exists; that is
how `asft status` tells a killed job from a running one.

A record is a status aid, never a result: writing one may fail (read-only or full disk) without
failing the job, and `asft verify` does not look at them (they are outside `results/`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: Where the jobs write their records, relative to the working directory (Snakemake's --directory).
JOBS_DIR = Path(".snakemake") / "asft" / "jobs"
RUNNING, FAILED = "running", "failed"
STATES = (RUNNING, FAILED)
#: Longest error message kept: a record is read for one table cell, the rule's log has the traceback.
ERROR_CHARS = 300


@dataclass(frozen=True)
class JobRecord:
    stage: str
    key: str
    state: str  # RUNNING or FAILED
    pid: int
    host: str
    started: str  # ISO 8601 with the UTC offset
    finished: str | None = None
    error: str | None = None  # "ExceptionType: message", one line
    log: str | None = None  # the rule's log file, where the traceback is

    def started_epoch(self) -> float | None:
        """`started` as seconds since the epoch (None: not a readable time)."""
        try:
            return datetime.fromisoformat(self.started).timestamp()
        except (TypeError, ValueError):
            return None


def record_path(stage: str, key: str, jobs_dir: Path = JOBS_DIR) -> Path:
    return Path(jobs_dir) / stage / f"{key}.json"


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def one_line_error(error: BaseException, limit: int = ERROR_CHARS) -> str:
    """'ValueError: the message' with its whitespace collapsed to one line, cut at `limit` characters."""
    message = " ".join(str(error).split())
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_record(record: JobRecord, jobs_dir: Path = JOBS_DIR) -> Path:
    """Write a record through a temporary file and a rename: a reader never sees half a record."""
    path = record_path(record.stage, record.key, jobs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(record), indent=1) + "\n")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a record behind
        raise
    return path


def read_record(stage: str, key: str, jobs_dir: Path = JOBS_DIR) -> JobRecord | None:
    """The record of one job, or None when there is none or it does not read as a record (a file
    edited by hand, or written by another version: status then falls back to the other signals)."""
    try:
        data: Any = json.loads(record_path(stage, key, jobs_dir).read_text())
        record = JobRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    return record if _well_typed(record) else None


def _well_typed(record: JobRecord) -> bool:
    texts = (record.stage, record.key, record.state, record.host, record.started)
    optional = (record.finished, record.error, record.log)
    return (record.state in STATES and isinstance(record.pid, int) and not isinstance(record.pid, bool)
            and all(isinstance(t, str) for t in texts) and all(t is None or isinstance(t, str) for t in optional))


def remove_record(stage: str, key: str, jobs_dir: Path = JOBS_DIR) -> None:
    record_path(stage, key, jobs_dir).unlink(missing_ok=True)


def mark_running(stage: str, key: str, *, log: str | None = None, jobs_dir: Path = JOBS_DIR) -> JobRecord:
    record = JobRecord(stage, key, RUNNING, os.getpid(), socket.gethostname(), now(), log=log)
    write_record(record, jobs_dir)
    return record


def mark_failed(record: JobRecord, error: BaseException, jobs_dir: Path = JOBS_DIR) -> JobRecord:
    failed = JobRecord(record.stage, record.key, FAILED, record.pid, record.host, record.started, now(),
                       one_line_error(error), record.log)
    write_record(failed, jobs_dir)
    return failed


def _warn(action: str, stage: str, key: str, error: OSError) -> None:
    print(f"[asft] warning: could not {action} the job record of {stage} {key} ({error}); "
          "`asft status` may misreport this job", file=sys.stderr, flush=True)


@contextmanager
def job_record(stage: str, key: str, *, log: str | None = None, jobs_dir: Path = JOBS_DIR) -> Iterator[None]:
    """Record one job around its body: running at the start, failed with its error if the body raises,
    no record after success. Ctrl-C (KeyboardInterrupt) leaves the running record: the process is
    about to end, and a dead process behind a running record is what status reports as interrupted."""
    record = None
    try:
        record = mark_running(stage, key, log=log, jobs_dir=jobs_dir)
    except OSError as error:
        _warn("write", stage, key, error)
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        if record is not None:
            try:
                mark_failed(record, error, jobs_dir)
            except OSError as write_error:
                _warn("update", stage, key, write_error)
        raise
    try:
        remove_record(stage, key, jobs_dir)
    except OSError as error:
        _warn("remove", stage, key, error)


# --- is the recorded process still the job? -----------------------------------------------------

def process_start_time(pid: int) -> float | None:
    """When process `pid` of this host started (seconds since the epoch), from /proc; None when it
    does not exist or this system has no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime; the name may hold spaces
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


#: Clock slack when comparing a process's start with its record's: /proc's boot time is whole seconds
#: and the wall clock may have been stepped since boot.
CLOCK_SLACK_S = 60.0


def recorded_process_alive(record: JobRecord) -> bool:
    """Whether the process a record of this host names still runs and is the one that wrote it (a
    process with the same pid that started after the record was written is another one: pids are
    reused, in containers within minutes)."""
    if record.pid <= 0:
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    started, recorded = process_start_time(record.pid), record.started_epoch()
    if started is None or recorded is None:
        return True  # cannot tell (no /proc): trust the pid
    return started <= recorded + CLOCK_SLACK_S


def is_this_host(record: JobRecord) -> bool:
    return record.host == socket.gethostname()
