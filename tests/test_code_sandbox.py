"""The code sandbox: hostile completions are contained and scored failed, nothing outside the scratch
directory is touched, a worker past its wall-clock limit is killed and the rest of its batch still scored;
code that gets past the audit hook (a shell started through _posixsubprocess) is held by the OS layers;
and the audit hook's rules, one by one."""

from __future__ import annotations

import glob
import io
import json
import os
import socket
import threading
import time

import pytest

from asft.eval.code.sandbox import KILLED, SandboxLimits
from asft.eval.code.scoring import execute
from asft.eval.code.worker import Jail
from asft.eval.settings import ExecuteSettings

TASK = "HumanEval/0"
SIGNATURE = "def has_close_elements(numbers, threshold):\n"
# the right answer: a hostile sample that got its way would pass, so a failure shows it was stopped
CORRECT = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"


def _shell(script: str, wait: bool = True) -> str:
    """Body that runs `/bin/sh -c script` through _posixsubprocess.fork_exec, which raises no audit event
    (Python 3.11's argument list), in its own session; with `wait`, `status` is the shell's exit status."""
    call = (f"_posixsubprocess.fork_exec([b'/bin/sh', b'-c', {script.encode()!r}], [b'/bin/sh'], True, (), None, "
            "None, -1, -1, -1, -1, -1, -1, r, w, True, True, -1, None, None, None, -1, None, False)")
    body = f"    import _posixsubprocess, os\n    r, w = os.pipe()\n    pid = {call}\n    os.close(w)\n"
    return body + ("    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n" if wait else "")


def _sandbox_cgroups() -> list[str]:
    return glob.glob("/sys/fs/cgroup/pids/**/asft-sandbox-*", recursive=True) + \
        glob.glob("/sys/fs/cgroup/asft-sandbox-*")


def _sample(problem: int, body: str) -> dict:
    return {"problem": problem, "sample": 0, "prompt": "", "completion": SIGNATURE + body + CORRECT, "gold": TASK}


def _graded(rows, suite="base", limits=None):
    handle = io.StringIO()
    verdicts, extra = execute(rows, ExecuteSettings(dataset="humaneval", suite=suite, prefix_prompt=False), handle,
                              limits=limits)
    return verdicts, extra, [json.loads(line) for line in handle.getvalue().splitlines()]


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """A folder outside the scratch directory with a file to delete, and a fake home with a secret."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.txt").write_text("s3cret")
    monkeypatch.setenv("HOME", str(home))
    return victim, home / "secret.txt"


def test_hostile_completions_are_contained_and_fail(outside):
    victim, secret = outside
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    hostile = {
        "fork bomb": "    import posix\n    while True:\n        posix.fork()\n",
        "rm -rf outside": f"    import posix\n    posix.system('rm -rf {victim}')\n    posix.unlink('{victim}/keep.txt')\n",
        "write outside": f"    import io\n    io.open('{victim}/planted.txt', 'w').write('x')\n",
        "infinite loop": "    while True:\n        pass\n",
        "10 GB": "    block = bytearray(10 * 2**30)\n",
        "socket": f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n",
        "read home": f"    import io\n    assert io.open('{secret}').read() != 's3cret'\n",
        "ctypes fork": "    import ctypes\n    ctypes.CDLL(None).fork()\n",
    }
    rows = [_sample(0, "")] + [_sample(i + 1, body) for i, body in enumerate(hostile.values())]
    verdicts, extra, graded = _graded(rows)
    thread.join()
    listener.close()
    assert verdicts[0] == (0, 0, True)  # the plain correct solution passes in the same sandbox
    failed = {name: not correct for name, (_, _, correct) in zip(hostile, verdicts[1:])}
    assert failed == {name: True for name in hostile}, graded
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and (victim / "keep.txt").read_text() == "keep"
    assert secret.read_text() == "s3cret" and accepted == []
    assert extra["sandbox"]["network"] == "namespace" or extra["sandbox"]["network"].startswith("audit hook")
    assert extra["killed_at_time_limit"] == 0 and _sandbox_cgroups() == []


def test_a_worker_past_its_wall_clock_limit_is_killed_and_the_rest_rescored(outside):
    # The worker itself is stopped in a loop (no EvalPlus timeout applies to the parent's kill): the
    # sample it was on is failed as killed, and the samples after it run in a new worker.
    rows = [_sample(0, ""), _sample(1, "    import time\n    time.sleep(600)\n"), _sample(2, "")]
    limits = SandboxLimits(wall_seconds=12, cpu_seconds=60)
    settings = ExecuteSettings(dataset="humaneval", suite="base", prefix_prompt=False, min_time_limit=300)
    handle = io.StringIO()
    verdicts, extra = execute(rows, settings, handle, limits=limits)
    graded = [json.loads(line) for line in handle.getvalue().splitlines()]
    assert [v[2] for v in verdicts] == [True, False, True]
    assert graded[1]["base"] == KILLED and extra["killed_at_time_limit"] == 1


def test_a_shell_started_past_the_audit_hook_is_held_by_the_os_layers(outside, tmp_path):
    # _posixsubprocess.fork_exec starts /bin/sh with no audit event: only the OS layers stand between it
    # and the machine. Each sample asserts that its attack worked, so a contained one fails.
    victim, _ = outside
    planted = tmp_path / "planted.txt"
    hostile = {
        "write and rm -rf outside": _shell(f"echo x > {planted}; rm -rf {victim}")
        + f"    assert status == 0 and not os.path.exists('{victim}')\n",
        "remount read-write": _shell(f"mount -o remount,bind,rw / || mount -o remount,rw /; echo x > {planted}")
        + "    assert status == 0\n",
        "see the test process": _shell(f"kill -0 {os.getpid()}") + "    assert status == 0\n",
        "leave the cgroup": _shell("for c in /sys/fs/cgroup/pids /sys/fs/cgroup; do "
                                   "[ -f $c/cgroup.procs ] && echo $$ > $c/cgroup.procs && exit 0; done; exit 1")
        + "    assert status == 0\n",
    }
    rows = [_sample(0, "")] + [_sample(i + 1, body) for i, body in enumerate(hostile.values())]
    verdicts, extra, graded = _graded(rows)
    report = extra["sandbox"]
    if not report["filesystem"].startswith("read-only"):
        pytest.skip(f"the kernel refused the read-only mount namespace: {report['filesystem']}")
    assert verdicts[0] == (0, 0, True)
    passed = {name: correct for name, (_, _, correct) in zip(hostile, verdicts[1:])}
    assert passed == dict.fromkeys(hostile, False), graded
    assert not planted.exists()
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and (victim / "keep.txt").read_text() == "keep"
    assert report["filesystem"] == "read-only except the scratch directory (mount namespace)"
    assert report["capabilities"] == "none" and _sandbox_cgroups() == []


def test_a_shell_fork_bomb_is_stopped_by_the_pids_cgroup(outside):
    # A tree of 2**10 shells (bounded, so that even uncontained it would not take the machine down),
    # started once, in its own session; the sample counts the processes it sees a second later (the test
    # time limit is raised so that only the count can fail it: uncontained, it passes).
    bomb = _shell("b() { if [ $1 -gt 0 ]; then b $(($1 - 1)) & b $(($1 - 1)) & fi; sleep 30; }; b 9", wait=False)
    count = "import time\ntime.sleep(1)\nassert sum(e.isdigit() for e in os.listdir('/proc')) > 500\n"
    once = "    import os\n    if not hasattr(os, 'bombed'):\n        os.bombed = True\n" + \
        "".join("    " + line + "\n" for line in (bomb + "    " + count.replace("\n", "\n    ")).rstrip().splitlines())
    rows = [_sample(0, ""), _sample(1, once), _sample(2, "")]
    settings = ExecuteSettings(dataset="humaneval", suite="base", prefix_prompt=False, min_time_limit=20)
    start = time.monotonic()
    handle = io.StringIO()
    verdicts, extra = execute(rows, settings, handle)
    elapsed = time.monotonic() - start
    report = extra["sandbox"]
    if not str(report["max_processes"]).startswith("cgroup pids.max"):
        pytest.skip(f"no pids cgroup on this machine: {report['max_processes']}")
    assert [v[2] for v in verdicts] == [True, False, True], handle.getvalue()  # survivors did not hold up sample 2
    assert elapsed < 30 and extra["killed_at_time_limit"] == 0
    assert _sandbox_cgroups() == []


@pytest.mark.parametrize(("event", "args", "refused"), [
    ("os.fork", (), True),
    ("os.system", (b"rm -rf /",), True),
    ("subprocess.Popen", ("rm", ["rm"], None, None), True),
    ("os.posix_spawn", ("/bin/sh", [], {}), True),
    ("socket.__new__", (None, 2, 1, 0), True),
    ("ctypes.dlopen", (None,), True),
    ("open", ("/etc/passwd", "r", 0), False),
    ("open", ("/etc/passwd", "w", 0), True),
    ("open", ("/etc/passwd", None, os.O_WRONLY), True),
    ("open", ("SCRATCH/out.txt", "w", 0), False),
    ("open", ("HOME/.ssh/id_rsa", "r", 0), True),
    ("open", ("HOME/venv/lib/x.py", "r", 0), False),  # an import path under the home is readable
    ("os.remove", ("/etc/hosts", -1), True),
    ("os.remove", ("SCRATCH/tmp", -1), False),
    ("os.rename", ("SCRATCH/a", "/etc/a", -1, -1), True),
    ("shutil.rmtree", ("/work", None), True),
    ("os.listdir", ("HOME",), True),
    ("open", (3, "r", 0), False),  # a descriptor: opened under the same rules
])
def test_audit_rules(tmp_path, event, args, refused):
    scratch, home = tmp_path / "scratch", tmp_path / "home"
    (home / "venv" / "lib").mkdir(parents=True)
    scratch.mkdir()
    jail = Jail(str(scratch), str(home), [str(home / "venv" / "lib")])
    args = tuple(a.replace("SCRATCH", str(scratch)).replace("HOME", str(home)) if isinstance(a, str) else a
                 for a in args)
    assert (jail.refusal(event, args) is not None) == refused
