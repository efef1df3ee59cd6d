"""The sandbox worker: runs EvalPlus's correctness check on one batch of samples, inside its limits.

Started by `asft.eval.code.sandbox` as `python -I worker.py RESULT_FD`, with the scratch directory as
its working directory, a cleared environment and `job.json` (the batch) beside it. It imports only the
standard library until it has locked itself in, in this order:

1. resource limits (`SandboxLimits`): CPU seconds, address space, file size, no core files, and a
   process count (RLIMIT_NPROC binds only a non-root user: see 3);
2. a new network namespace (no interface but a down loopback): as root `unshare(CLONE_NEWNET)`, as
   another user `unshare(CLONE_NEWUSER | CLONE_NEWNET)`; where the kernel refuses, the audit hook below
   is the only network barrier and the report says so;
3. as root: the user `nobody` (setgroups, setgid, setuid), so file permissions protect the machine
   and RLIMIT_NPROC binds; skipped, and reported, when `nobody` could not read the interpreter;
4. an audit hook (`sys.addaudithook`, which cannot be removed) that, in every process other than the
   worker itself (EvalPlus forks one child per test execution: that is where model code runs), refuses
   `refusal()`'s events: process creation and signals, sockets, ctypes library loading and symbol
   lookup, writes, removals and renames outside the scratch directory, and reading or listing the
   user's home (except the interpreter's own import paths).

Then it imports EvalPlus, whose loaders read the shipped data file through HUMANEVAL_OVERRIDE_PATH /
MBPP_OVERRIDE_PATH (set by the sandbox), computes the ground truth of the batch's tasks with EvalPlus's
`trusted_exec` and runs `evalplus.evaluate.check_correctness` on each sample, writing one JSON line
per finished sample to RESULT_FD. That descriptor is closed in every forked child, so model code cannot
forge a result.

What this does not stop: code that corrupts the interpreter's memory from Python (the audit hook is a
tripwire, not a boundary: the OS layers above are); CPU-bound code that stays within the CPU limit
(the parent's wall-clock kill ends it); a process that leaves the process group (setsid) after a fork
that got past the hook, until its CPU limit; disk use inside the scratch directory up to the file
size limit per file.
"""

from __future__ import annotations

import json
import os
import resource
import sys

ROOT_UID = 0
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

#: Audit events refused in the model's processes, by what they would do.
PROCESS_EVENTS = frozenset({"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                            "subprocess.Popen", "os.kill", "os.killpg", "pty.spawn", "os.startfile"})
NETWORK_EVENTS = frozenset({"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
                            "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg"})
NATIVE_EVENTS = frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function"})
#: Events whose first path argument (and for rename/link/copy, second) is changed on disk.
CHANGE_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod", "os.chown",
                           "os.mkdir", "os.symlink", "os.link", "os.utime", "os.chflags", "os.lchflags",
                           "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                           "shutil.copytree", "shutil.move", "shutil.chown", "os.setxattr", "os.removexattr"})
TWO_PATH_EVENTS = frozenset({"os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree",
                             "shutil.move", "shutil.copymode", "shutil.copystat"})
LIST_EVENTS = frozenset({"os.listdir", "os.scandir", "glob.glob", "os.walk"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
ALWAYS_WRITABLE = ("/dev/null",)


class Jail:
    """What the audit hook allows the model's processes: the scratch directory, the home to keep out of."""

    def __init__(self, scratch: str, home: str | None, import_roots: list[str]) -> None:
        self.scratch = os.path.realpath(scratch)
        self.home = os.path.realpath(home) if home else None
        self.import_roots = [os.path.realpath(p) for p in import_roots if p]

    @staticmethod
    def _path(value: object) -> str | None:
        if isinstance(value, (str, bytes, os.PathLike)):
            return os.path.realpath(os.fsdecode(value))
        return None  # a file descriptor: it was opened under these same rules

    @staticmethod
    def _under(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/")

    def writable(self, path: str) -> bool:
        return self._under(path, self.scratch) or path in ALWAYS_WRITABLE

    def readable(self, path: str) -> bool:
        if self.home is None or not self._under(path, self.home) or self._under(path, self.scratch):
            return True
        return any(self._under(path, root) for root in self.import_roots)

    def refusal(self, event: str, args: tuple) -> str | None:
        """Why the model's process may not do `event` (None: it may)."""
        if event in PROCESS_EVENTS:
            return "starting or signalling processes"
        if event in NETWORK_EVENTS:
            return "network access"
        if event in NATIVE_EVENTS:
            return "loading native code"
        if event == "open":
            path = self._path(args[0])
            if path is None:
                return None
            mode, flags = args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else 0
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            if writing and not self.writable(path):
                return f"writing {path} outside the scratch directory"
            if not writing and not self.readable(path):
                return f"reading {path} in the user's home"
            return None
        if event in CHANGE_EVENTS:
            paths = [self._path(a) for a in args[: 2 if event in TWO_PATH_EVENTS else 1]]
            for path in paths:
                if path is not None and not self.writable(path):
                    return f"changing {path} outside the scratch directory"
            return None
        if event in LIST_EVENTS and args:
            path = self._path(args[0])
            if path is not None and not self.readable(path):
                return f"listing {path} in the user's home"
        return None


def install_hook(jail: Jail) -> None:
    """The audit hook: the worker itself is trusted (it forks the test processes); its children are not."""
    worker = os.getpid()

    def hook(event: str, args: tuple) -> None:
        if os.getpid() == worker:
            return
        why = jail.refusal(event, args)
        if why is not None:
            raise PermissionError(f"sandbox: {why} is not allowed ({event})")

    sys.addaudithook(hook)


def set_limits(limits: dict) -> None:
    cpu = int(limits["cpu_seconds"])
    memory = int(limits["memory_mb"]) * 2**20
    for name, value in (("RLIMIT_CPU", (cpu, cpu + 1)), ("RLIMIT_AS", (memory, memory)),
                        ("RLIMIT_DATA", (memory, memory)), ("RLIMIT_FSIZE", (int(limits["file_mb"]) * 2**20,) * 2),
                        ("RLIMIT_CORE", (0, 0))):
        resource.setrlimit(getattr(resource, name), value)


def _unshare(flags: int) -> str | None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def _world_readable(paths: list[str]) -> bool:
    """Whether another user can read these files and reach them (every folder above searchable)."""
    import stat

    for path in paths:
        path = os.path.realpath(path)
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        folder = os.path.dirname(path)
        while True:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return False
            if folder == "/":
                break
            folder = os.path.dirname(folder)
    return True


def count_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def lock_in(limits: dict, needed: list[str]) -> dict:
    """Layers 1-3; returns what held, for the report."""
    report: dict = {}
    set_limits(limits)
    root = os.getuid() == ROOT_UID
    error = _unshare(CLONE_NEWNET if root else CLONE_NEWUSER | CLONE_NEWNET)
    report["network"] = "namespace" if error is None else f"audit hook only (unshare: {error})"
    user = os.getuid()
    if root:
        nobody = int(limits.get("nobody_uid", 65534))
        if _world_readable(needed):
            os.setgroups([])
            os.setgid(nobody)
            os.setuid(nobody)
            user = nobody
            report["user"] = "nobody"
        else:
            report["user"] = "root (the interpreter is not readable by nobody)"
    else:
        report["user"] = "unchanged (not root)"
    if os.getuid() != ROOT_UID:
        allowed = count_processes(os.getuid() if user == os.getuid() else user) + int(limits["extra_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (allowed, allowed))
        report["max_processes"] = allowed
    else:
        report["max_processes"] = "not enforced for root"
    return report


def _ground_truth(problem: dict, dataset: str) -> dict:
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.gen.util import trusted_exec

    code = problem["prompt"] + problem["canonical_solution"]
    not_none = dataset == "mbpp" and problem["entry_point"] in MBPP_OUTPUT_NOT_NONE_TASKS
    truth = {}
    for suite in ("base", "plus"):
        truth[suite], truth[f"{suite}_time"] = trusted_exec(code, problem[f"{suite}_input"], problem["entry_point"],
                                                            record_time=True, output_not_none=not_none)
    return truth


def run(job: dict, result_fd: int) -> None:
    """Check each sample of the job; one line per sample on result_fd as soon as it is known."""
    from evalplus.data import get_human_eval_plus, get_mbpp_plus
    from evalplus.evaluate import check_correctness

    dataset = job["dataset"]
    problems = get_human_eval_plus() if dataset == "humaneval" else get_mbpp_plus()
    truths: dict[str, dict] = {}
    with os.fdopen(result_fd, "w", buffering=1) as out:
        for sample in job["samples"]:
            task = sample["task_id"]
            if task not in problems:
                out.write(json.dumps({"index": sample["index"], "error": f"unknown task {task}"}) + "\n")
                continue
            if task not in truths:
                truths[task] = _ground_truth(problems[task], dataset)
            result = check_correctness(dataset, sample["index"], problems[task], sample["solution"], truths[task],
                                       base_only=job["suite"] == "base", fast_check=True,
                                       min_time_limit=job["min_time_limit"],
                                       gt_time_limit_factor=job["gt_time_limit_factor"])
            out.write(json.dumps({"index": sample["index"], "base": result["base"][0],
                                  "plus": result["plus"][0] if "plus" in result else None}) + "\n")


def main() -> None:
    result_fd = int(sys.argv[1])
    scratch = os.getcwd()
    with open(os.path.join(scratch, "job.json"), encoding="utf-8") as handle:
        job = json.load(handle)
    import importlib.util

    evalplus_dir = os.path.dirname(importlib.util.find_spec("evalplus").origin)
    needed = [sys.executable, os.__file__, os.path.join(evalplus_dir, "__init__.py"), os.path.abspath(__file__)]
    report = lock_in(job["limits"], needed)
    install_hook(Jail(scratch, job.get("home"), [p for p in sys.path if p and os.path.isdir(p)]))
    os.register_at_fork(after_in_child=lambda: os.close(result_fd))  # no forged results from a test process
    with os.fdopen(os.dup(result_fd), "w", buffering=1) as out:
        out.write(json.dumps({"sandbox": report}) + "\n")
    run(job, result_fd)


if __name__ == "__main__":
    main()
