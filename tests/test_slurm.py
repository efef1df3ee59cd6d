"""The workflow on a real one-node SLURM cluster, submitted through profiles/slurm.

A module fixture installs and starts slurmctld/slurmd/munged on localhost (tests/slurm/local_cluster.sh,
which needs root and apt), and always stops them again. The test runs a reduced tiny configuration
with `--profile profiles/slurm` and checks, from SLURM's own records, that every non-local job went
through SLURM: its job id, state, partition, and the resources the config asked for (the train job's
`gpu=1` arrives as a GPU request on the controller).
"""

from __future__ import annotations

import csv
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "local_cluster.sh"
PROFILE = ROOT / "profiles" / "slurm"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
STATE = Path(os.environ.get("ASFT_SLURM_STATE", "/tmp/asft-slurm"))
JOBCOMP = STATE / "log" / "jobcomp.txt"
PARTITION = "gpu"  # the cluster's non-default partition: proves ASFT_SLURM_PARTITION reaches sbatch
RUN_LIMIT_S = 420
LOCK_WAIT_S = 900  # the snakemake run; it takes about 2.5 minutes on 2 cores

# One mode, no base evaluation, two benchmarks: 7 SLURM jobs, each stage once, two evals in parallel.
LAYER = """\
modes: [asft]
evaluate_base: false
eval:
  benchmarks: [embedded_mul, embedded_add]
table:
  target: [embedded_mul]
  retention: [embedded_add]
resources:
  train: {threads: 1, mem_mb: 3000, runtime: 45, gpus: 1}
  eval: {threads: 1, mem_mb: 2500, runtime: 20, gpus: 0}
"""
EXPECTED_JOBS = Counter(download_model=1, download_data=1, tokenize=1, train=1, merge=1, generate=2, score=2)

# Minutes long like the other end-to-end runs: `-m "not slow"` leaves it out too.
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _cluster(action: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), action], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node SLURM cluster (installed on first use); stopped and wiped afterwards."""
    pytest.importorskip("snakemake_executor_plugin_slurm",
                        reason="snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    if os.geteuid() != 0:
        pytest.skip(f"needs root to install and start slurmctld/slurmd/munged (running as uid {os.geteuid()})")
    if not (shutil.which("apt-get") or shutil.which("slurmctld")):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    # One cluster per machine (fixed ports, /etc/slurm): a second test session waits for the first.
    lock = open(STATE.parent / f"{STATE.name}.lock", "w")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                pytest.skip(f"another test session has held the local SLURM cluster for over {LOCK_WAIT_S} s")
            time.sleep(2)
    try:
        started = _cluster("start", timeout=600)
        if started.returncode in (2, 3):  # cannot run here (2) or apt-get failed (3): see the script
            pytest.skip(f"local SLURM unavailable: {(started.stderr.strip().splitlines() or ['?'])[-1]}")
        if started.returncode != 0:
            pytest.fail(f"local SLURM did not start (exit {started.returncode}):\n{started.stderr[-3000:]}")
        yield STATE
    finally:
        stopped = _cluster("stop", timeout=120)
        lock.close()  # releases the lock
        assert stopped.returncode == 0, stopped.stderr


def _slurm_jobs(workdir: Path) -> dict[str, str]:
    """SLURM job id -> rule, from the plugin's per-job logs (.snakemake/slurm_logs/rule_<rule>/<key>/<id>.log)."""
    jobs = {}
    for log in (workdir / ".snakemake" / "slurm_logs").glob("rule_*/*/*.log"):
        jobs[log.stem] = log.parent.parent.name.removeprefix("rule_")
    return jobs


def _records(text: str) -> dict[str, dict[str, str]]:
    """`Key=Value Key=Value` lines (jobcomp/filetxt, `scontrol -o`) by JobId."""
    records = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w[\w/:]*)=(\S*)", line))
        if "JobId" in fields:
            records[fields["JobId"]] = fields
    return records


def _run_interruptibly(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run, except that an interrupted test (Ctrl-C, a CI timeout) stops the run cleanly:
    SIGINT to the run's process group (Snakemake cancels its SLURM jobs), SIGKILL 40 s later."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        stdout, stderr = process.communicate()
    except BaseException:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    layer = workdir / "layer.yaml"
    layer.write_text(LAYER)
    command = [
        # SIGINT (not SIGTERM) makes Snakemake scancel its jobs and exit; -k kills it if that hangs.
        "timeout", "-s", "INT", "-k", "30", str(RUN_LIMIT_S),
        sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
        "--profile", str(PROFILE), "--configfile", str(TINY), str(layer),
        # Test-only overrides: fail fast, and poll sooner than the profile's 40 s. The plugin checks
        # at i, 2i+10, 3i+30 ... seconds after a submission; these jobs take 12-23 s, so i=8 (checks at
        # 8, 26) sees most finish at the second check (i=2 gives 2, 14, 36: most wait 36 s).
        "--slurm-init-seconds-before-status-checks", "8", "--retries", "0",
    ]
    env = {**os.environ, "ASFT_SLURM_PARTITION": PARTITION}
    env.pop("ASFT_SLURM_ACCOUNT", None)  # accounts need slurmdbd, which this cluster does not run
    start = time.monotonic()
    result = _run_interruptibly(command, cwd=workdir, env=env)
    elapsed = time.monotonic() - start
    print(f"snakemake through SLURM: {elapsed:.0f} s, exit {result.returncode}")
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-1500:]}"
                         for p in (workdir / ".snakemake" / "slurm_logs").glob("rule_*/*/*.log"))
        raise AssertionError(f"snakemake via SLURM failed (exit {result.returncode}, {elapsed:.0f} s):\n"
                             f"{result.stderr[-5000:]}\n{logs[-6000:]}")
    return workdir


def test_tiny_run_through_slurm_produces_the_table(slurm_run):
    with open(slurm_run / "results" / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["mode"] for row in rows] == ["asft"]
    assert 0.0 <= float(rows[0]["target_mean"]) <= 100.0
    assert float(rows[0]["drift_mean"]) > 0


def test_every_job_ran_as_a_completed_slurm_job_in_the_requested_partition(slurm_run):
    jobs = _slurm_jobs(slurm_run)
    assert Counter(jobs.values()) == EXPECTED_JOBS  # aggregate and publish are localrules
    completed = _records(JOBCOMP.read_text())  # written by slurmctld when a job ends
    for job_id, rule in jobs.items():
        record = completed.get(job_id)
        assert record is not None, f"SLURM has no record of job {job_id} ({rule})"
        assert record["JobState"] == "COMPLETED", (rule, record)
        assert record["Partition"] == PARTITION, (rule, record)
        assert Path(record["WorkDir"]).resolve() == slurm_run.resolve()
    # Each job ran the stage for real: the rule's own log ends with the stage's completion line.
    train_log = next((slurm_run / "logs" / "train").glob("*.log")).read_text()
    assert re.search(r"\[asft\] train [0-9a-f]{16} done", train_log)


def test_config_resources_reach_slurm_including_the_gpu(slurm_run):
    jobs = _slurm_jobs(slurm_run)
    # Finished jobs stay in slurmctld for MinJobAge=600 s, with what was requested.
    shown = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=True).stdout
    records = _records(shown)
    by_rule = {rule: records[job_id] for job_id, rule in jobs.items() if job_id in records}
    assert set(by_rule) == set(EXPECTED_JOBS), shown
    train, evaluation, tokenize = by_rule["train"], by_rule["generate"], by_rule["tokenize"]
    # resources.train: {threads: 1, mem_mb: 3000, runtime: 45, gpus: 1}
    assert "gpu:1" in train.get("TresPerJob", ""), train  # --gpus=1 (plugin: gpu=1)
    assert train["TimeLimit"] == "00:45:00" and train["MinMemoryNode"] == "3000M" and train["NumCPUs"] == "1"
    # resources.eval: {mem_mb: 2500, runtime: 20, gpus: 0}: no GPU request at all.
    assert "gpu" not in evaluation.get("TresPerJob", "") and "gpu" not in tokenize.get("TresPerJob", "")
    assert evaluation["TimeLimit"] == "00:20:00" and evaluation["MinMemoryNode"] == "2500M"
    # sbatch --requeue (profile: slurm-requeue: true): SLURM may requeue a preempted job.
    assert train["Requeue"] == "1"
