"""The sandbox worker: runs EvalPlus's correctness check on one batch of samples, inside its limits.

Started by `asft.eval.code.sandbox` as `python -I worker.py RESULT_FD`, with the scratch directory as
its working directory, a cleared environment and `job.json` (the batch) beside it. It imports only the
standard library until it has locked itself in, in this order:

1. resource limits (`SandboxLimits`): CPU seconds, address space, file size, no core files;
2. a pids cgroup (`join_cgroup`; v1 `pids` or v2 with the pids controller), `asft-sandbox-<worker pid>`,
   whose pids.max (the worker's threads + the test runner + `extra_processes`) bounds the worker and
   everything it forks, fork bombs included; the parent kills whatever is left in it and removes it
   (`release_cgroup`), so nothing escapes by setsid. Where there is none, RLIMIT_NPROC (which does not
   bind root) is the fallback;
3. a new network namespace (no interface but a down loopback); for a user other than root, first a
   user namespace that gives it the right to make this one and the next two;
4. a new mount namespace (`read_only_filesystem`) in which every mount is remounted read-only, nosuid
   and nodev, except the scratch directory (bound onto itself, writable) and a fresh 64 MB tmpfs on
   /dev/shm (multiprocessing's semaphores); /dev/null, zero, full, random and urandom stay usable, no
   other device can be opened (a read-only mount alone would not stop writes to a disk device);
5. a new pid namespace: the worker forks the test runner as its pid 1 (`fork_runner`) and only waits
   for it; the runner mounts its own /proc (read-only), so the model's processes cannot see or signal
   anything outside, die with the runner, and are killed after each sample (`end_strays`);
6. the runner drops to the user `nobody` when it can read the interpreter, and in any case drops every
   capability (bounding set included) and sets no_new_privs: a root without capabilities cannot
   remount, leave its namespaces, or gain anything back through a setuid program;
7. an audit hook (`sys.addaudithook`, which cannot be removed) that, in every process other than the
   runner itself (EvalPlus forks one child per test execution: that is where model code runs), refuses
   `refusal()`'s events: process creation and signals, sockets, ctypes library loading and symbol
   lookup, writes, removals and renames outside the scratch directory, and reading or listing the
   user's home (except the interpreter's own import paths).

Each OS layer is used when the kernel allows it; the report (scores.json's `sandbox`) says which held
and why one did not. The audit hook is a tripwire, not a boundary: `_posixsubprocess.fork_exec` (no
audit event) starts a shell past it, and then only layers 1-6 hold.

Then it imports EvalPlus, whose loaders read the shipped data file through HUMANEVAL_OVERRIDE_PATH /
MBPP_OVERRIDE_PATH (set by the sandbox), computes the ground truth of the batch's tasks with EvalPlus's
`trusted_exec` and runs `evalplus.evaluate.check_correctness` on each sample, writing one JSON line
per finished sample to RESULT_FD. That descriptor is closed in every forked child, so model code cannot
forge a result.

What this does not stop: reading files any user may read (outside the home, and the home itself for
code that got past the hook, since the interpreter lives there on our machines); CPU-bound code within
the CPU limit (the parent's wall-clock kill ends it); a kernel exploit (namespaces share the kernel);
disk use inside the scratch directory up to the file size limit per file; memory is bounded per
process (RLIMIT_AS), not per cgroup. On a machine where a layer is refused, what it stops falls back to
the layers below it, as the report says.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys

ROOT_UID = 0
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
#: Per-mount flags a bind remount must keep (the kernel refuses to clear them where they are locked).
KEPT_MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 0x400,
                    "nodiratime": 0x800, "relatime": 0x200000}
#: Devices the test processes may open (read-only mounts still let a device be written); every other
#: mount gets nodev, so e.g. the root user's disk devices cannot be opened at all.
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SHM = "/dev/shm"  # multiprocessing's semaphores and shared arrays (EvalPlus's verdicts) live there
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
CAPABILITY_VERSION_3 = 0x20080522
CGROUP_ROOT = "/sys/fs/cgroup"

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


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _call(result: int) -> str | None:
    """None when a libc call succeeded, else its error."""
    import ctypes

    return None if result == 0 else os.strerror(ctypes.get_errno())


def _unshare(flags: int) -> str | None:
    return _call(_libc().unshare(flags))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> str | None:
    encode = lambda value: None if value is None else os.fsencode(value)  # noqa: E731
    return _call(_libc().mount(encode(source), encode(target), encode(fstype), flags, encode(data)))


# --- the pids cgroup (shared with the parent, which empties and removes it) ---

def cgroup_dir(worker_pid: int) -> str | None:
    """The pids cgroup of the worker `worker_pid`, under the caller's own (None: no pids controller).

    The parent calls this with the worker's pid before or after the worker runs; both are in the same
    cgroup then, so both name the same folder.
    """
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            lines = [line.rstrip("\n").split(":", 2) for line in handle]
    except OSError:
        return None
    try:
        with open(f"{CGROUP_ROOT}/cgroup.controllers", encoding="utf-8") as handle:
            unified = "pids" in handle.read().split()
    except OSError:
        unified = False
    own = None
    for _, controllers, path in lines:
        if unified and controllers == "":
            own = (CGROUP_ROOT, path)
        elif not unified and "pids" in controllers.split(","):
            own = (f"{CGROUP_ROOT}/pids", path)
    if own is None or not os.path.isdir(own[0]):
        return None
    return f"{own[0]}{own[1].rstrip('/')}/asft-sandbox-{worker_pid}"


def join_cgroup(extra_processes: int) -> str:
    """Put the worker in a new pids cgroup that holds it and everything it forks; the report's line."""
    path = cgroup_dir(os.getpid())
    if path is None:
        return "no pids cgroup controller"
    parent = os.path.dirname(path)
    try:
        if os.path.exists(f"{parent}/cgroup.subtree_control"):  # cgroup v2: the controller must reach children
            with open(f"{parent}/cgroup.subtree_control", "r+", encoding="utf-8") as handle:
                if "pids" not in handle.read().split():
                    handle.write("+pids")
        os.mkdir(path)
        # every thread counts: the worker's own, the test runner it forks, and the model's processes
        allowed = len(os.listdir("/proc/self/task")) + 1 + int(extra_processes)
        with open(f"{path}/pids.max", "w", encoding="utf-8") as handle:
            handle.write(str(allowed))
        with open(f"{path}/cgroup.procs", "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
    except OSError as error:
        return f"no pids cgroup ({path}: {error.strerror})"
    return f"cgroup pids.max {allowed}"


def release_cgroup(path: str | None, timeout: float = 10.0) -> None:
    """Kill every process left in the worker's cgroup, then remove it (the parent's side)."""
    import signal
    import time

    if path is None or not os.path.isdir(path):
        return
    deadline = time.monotonic() + timeout
    if os.path.exists(f"{path}/cgroup.kill"):  # cgroup v2 kills the lot atomically
        with open(f"{path}/cgroup.kill", "w", encoding="utf-8") as handle:
            handle.write("1")
    while True:
        with open(f"{path}/cgroup.procs", encoding="utf-8") as handle:
            pids = [int(line) for line in handle if line.strip()]
        if not pids:
            try:
                os.rmdir(path)
                return
            except OSError as error:  # the last tasks are still being torn down
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sandbox: cannot remove the cgroup {path}: {error.strerror}") from error
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sandbox: processes {pids} survive SIGKILL in the cgroup {path}")
        time.sleep(0.01)


# --- the mount namespace ---

def _mount_points() -> list[tuple[str, set[str]]]:
    """Each visible mount point (the topmost of stacked ones) with its per-mount options."""
    points: dict[str, set[str]] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            points[point] = set(fields[5].split(","))  # later lines are mounted on top
    return list(points.items())


def read_only_filesystem(scratch: str) -> str:
    """Layer 2: in a new mount namespace, every mount read-only, nosuid and nodev except the scratch
    directory and a fresh /dev/shm; the harmless devices stay usable. The report's line."""
    scratch = os.path.realpath(scratch)
    error = _unshare(CLONE_NEWNS)
    if error is None:
        error = _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do here reaches the machine
    if error is not None:
        return f"audit hook only (mount namespace: {error})"
    steps = [(scratch, scratch, None, MS_BIND, None),
             ("tmpfs", SHM, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64m,mode=1777")]
    steps += [(device, device, None, MS_BIND, None) for device in DEVICES if os.path.exists(device)]
    for source, target, fstype, flags, data in steps:
        error = _mount(source, target, fstype, flags, data)
        if error is not None:
            return f"audit hook only (mount {target}: {error})"
    failed = []
    for point, options in _mount_points():
        if point == SHM:
            continue
        kept = sum(flag for name, flag in KEPT_MOUNT_FLAGS.items() if name in options)
        flags = MS_REMOUNT | MS_BIND | MS_NOSUID | kept
        if point != scratch:
            flags |= MS_RDONLY
        if point not in DEVICES:
            flags |= MS_NODEV
        error = _mount(None, point, None, flags)
        if error is not None:
            failed.append(f"{point}: {error}")
    if failed:
        return "read-only except the scratch directory, but not: " + "; ".join(failed)
    return "read-only except the scratch directory (mount namespace)"


# --- processes and privileges ---

def own_pid_namespace() -> str:
    """Layer 3, part one: the next child is pid 1 of a new pid namespace (see `fork_runner`)."""
    error = _unshare(CLONE_NEWPID)
    return "own pid namespace" if error is None else f"shared (pid namespace: {error})"


def fork_runner(result_fd: int) -> None:
    """Fork the process that runs the tests; the worker waits for it and exits with its status.

    In a new pid namespace the child is its pid 1: the model's processes cannot see or signal anything
    outside it, and they all die with it. It mounts its own /proc (read-only) so /proc shows only them.
    """
    child = os.fork()
    if child == 0:
        if os.getpid() == 1:
            _mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return
    os.close(result_fd)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        sys.stderr.write(f"sandbox: the test runner was killed by signal {-code}\n")
    os._exit(1 if code < 0 else code)


def drop_capabilities(bounding_only: bool = False) -> str | None:
    """No capability now or after any exec (a root without them cannot remount, load modules, trace
    other users, ...), and no setuid program gives any back."""
    libc = _libc()
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="utf-8") as handle:
            last = int(handle.read())
    except OSError:
        last = 63
    for capability in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)  # EINVAL past the kernel's last one: fine
    if bounding_only:
        return None
    import ctypes

    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    error = _call(libc.capset(header, (ctypes.c_uint32 * 6)()))
    return error or _call(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


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


def lock_in(limits: dict, needed: list[str], scratch: str, result_fd: int) -> dict:
    """Layers 1-6 (see the module's docstring); returns what held, for the report.

    Returns in the forked test runner: the worker itself only waits for it (`fork_runner`).
    """
    report: dict = {}
    set_limits(limits)
    root = os.getuid() == ROOT_UID
    nobody = int(limits.get("nobody_uid", 65534))
    to_nobody = root and _world_readable(needed)
    # RLIMIT_NPROC counts the user's processes machine-wide: count them while /proc still shows them all
    nproc = count_processes(nobody if to_nobody else os.getuid()) + int(limits["extra_processes"])
    cgroup = join_cgroup(int(limits["extra_processes"]))  # before anything forks
    if not root:  # a user namespace gives an ordinary user the right to make the others
        error = _unshare(CLONE_NEWUSER)
        report["user_namespace"] = "yes" if error is None else f"no ({error})"
    error = _unshare(CLONE_NEWNET)
    report["network"] = "namespace" if error is None else f"audit hook only (unshare: {error})"
    report["filesystem"] = read_only_filesystem(scratch)
    report["processes"] = own_pid_namespace()
    fork_runner(result_fd)
    if root:  # the tests' user owns the scratch directory (a root without capabilities is no exception)
        for folder, _, files in os.walk(scratch):
            for path in [folder] + [os.path.join(folder, name) for name in files]:
                os.chown(path, nobody if to_nobody else ROOT_UID, nobody if to_nobody else ROOT_UID)
    if to_nobody:
        drop_capabilities(bounding_only=True)
        os.setgroups([])
        os.setgid(nobody)
        os.setuid(nobody)
        report["user"] = "nobody"
    else:
        report["user"] = "root (the interpreter is not readable by nobody)" if root else "unchanged (not root)"
    error = drop_capabilities()
    report["capabilities"] = "none" if error is None else f"kept ({error})"
    if cgroup.startswith("cgroup"):
        report["max_processes"] = cgroup
    elif not root or to_nobody:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        report["max_processes"] = f"RLIMIT_NPROC {nproc} ({cgroup})"
    else:
        report["max_processes"] = f"not enforced for root ({cgroup})"
    return report


def end_strays() -> None:
    """After each sample, as pid 1 of the sandbox's pid namespace: kill and reap whatever the model's
    code left running (a fork bomb's survivors would otherwise slow every later sample)."""
    import signal

    if os.getpid() != 1:  # kill(-1) outside our own namespace would hit the whole machine
        return
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:  # nothing left
        return
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


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
            end_strays()
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
    report = lock_in(job["limits"], needed, scratch, result_fd)
    install_hook(Jail(scratch, job.get("home"), [p for p in sys.path if p and os.path.isdir(p)]))
    os.register_at_fork(after_in_child=lambda: os.close(result_fd))  # no forged results from a test process
    with os.fdopen(os.dup(result_fd), "w", buffering=1) as out:
        out.write(json.dumps({"sandbox": report}) + "\n")
    run(job, result_fd)


if __name__ == "__main__":
    main()
