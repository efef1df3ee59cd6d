"""The code sandbox: hostile completions are contained and scored failed, nothing outside the scratch
directory is touched, a worker past its wall-clock limit is killed and the rest of its batch still scored;
and the audit hook's rules, one by one."""

from __future__ import annotations

import io
import json
import os
import socket
import threading

import pytest

from asft.eval.code.sandbox import KILLED, SandboxLimits
from asft.eval.code.scoring import execute
from asft.eval.code.worker import Jail
from asft.eval.settings import ExecuteSettings

TASK = "HumanEval/0"
SIGNATURE = "def has_close_elements(numbers, threshold):\n"
# the right answer: a hostile sample that got its way would pass, so a failure shows it was stopped
CORRECT = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"


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
    assert extra["killed_at_time_limit"] == 0


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
