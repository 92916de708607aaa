"""Run one untrusted Python program, once, in a fresh sandboxed process (docs/design.md §6).

Every run is a new process that:

- starts in its own session and process group (``start_new_session``), with an empty
  environment and a private working directory that is gone afterwards (a tmpfs inside
  the namespaces under bwrap and unshare, else a host temp dir that is removed); its code and stdin
  come in through read-only in-memory files;
- runs as an unprivileged uid when the grader is root (RLIMIT_NPROC does not bind root):
  one uid per worker slot, leased from a host-wide range under a lock, so that parallel
  runs, and other graders on the host, cannot signal or count against each other;
- is isolated by the best mechanism this machine allows:
  ``bwrap``    bubblewrap: new user, network, pid, mount, ipc and uts namespaces, no
               nested user namespaces; the program sees only /usr (read-only), a
               size-limited tmpfs as cwd and /dev/shm, its own /proc and a minimal /dev.
               The program is pid 1 of its namespace (``--as-pid-1``): when it ends,
               every process it left behind dies with the namespace.
               Works for a non-root grader too (unprivileged user namespaces).
  ``unshare``  no bubblewrap: new user, network, ipc, mount, uts and pid namespaces made
               by the runner itself, private tmpfs over the shared temp folders, its own
               /proc; the rest of the host's files are protected by permissions only.
  ``none``     rlimits (and the uid switch when root) only; a keeper process (subreaper)
               kills whatever the program leaves behind;
- is proven, not assumed: at start a canary program (:data:`CANARY`) tries the network,
  a file of the grader's uid, the grader's command line in /proc and the host's temp
  folder; the level reported is the one its findings prove (:func:`proven_level`).
  Anything below ``bwrap`` is refused (RuntimeError) unless ``allow_weak`` is set;
- dies with the grader, even on kill -9 (bwrap ``--die-with-parent``, else the runner's
  PR_SET_PDEATHSIG); below bwrap, what the slot uid left in the shared temp folders and
  its SysV IPC objects are removed after every run;
- sets rlimits (CPU, address space, file size, open files, processes, core=0) from a
  small trusted prologue (``RUNNER``) before compiling the program, so that no
  ``preexec_fn`` runs in the (multi-threaded) grader;
- is killed whole (process group, and the pid namespace with it) at the wall-clock limit;
  stdout/stderr are capped while they are read.

Expected outputs never enter the sandbox: the parent compares. Call-based answers come
back as JSON text, so an object with a lying ``__eq__`` cannot pass.

This module uses the standard library only (no p3 imports), so that a test can load it
with the system Python under an unprivileged uid.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import math
import os
import queue
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

log = logging.getLogger("p3.sandbox")

# The sandbox uid cannot execute a virtualenv interpreter that resolves into root's home,
# and untrusted programs need only the standard library: use the system interpreter.
DEFAULT_PYTHON = "/usr/bin/python3"
DEFAULT_UID_BASE = 61000  # uids base .. base+workers-1 must own nothing on the host
LEVELS = ("bwrap", "unshare", "none")

# Exit codes the runner uses for its own outcomes (a program may fake them; that only
# makes it fail, since the parent never trusts a claim of success).
RC_COMPILE_ERROR = 97
RC_SANDBOX_ERROR = 96

# Writable by everyone on a Debian/Ubuntu host: what a weakly isolated program could leave
# files, sockets and fillers in. ``unshare`` mounts a private tmpfs over each; as root the
# grader also sweeps whatever the slot uid owns there after every run.
SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
MIN_MEMORY_MB = 64  # below this the interpreter itself cannot start: every program would "fail"
UID_RANGE = 4096  # slot uids come from uid_base .. uid_base + UID_RANGE - 1, leased per grader

# The trusted prologue, run as `python3 -I -S -B -c RUNNER mode cpu as fsize nofile nproc
# method dedicated_uid tmpfs_bytes grader_pid prog fn_name`. Any Python 3.8+; standard library only,
# and as little of it as possible at level bwrap (json alone costs ~10 ms of start-up,
# more than the whole trivial program).
#
# mode 2 (bwrap): bwrap made the namespaces and ties the program's life to the grader.
# mode 1 (unshare): the runner makes new user, network, ipc, mount, uts and pid namespaces
#   and forks the program as pid 1 of the new pid namespace, with private tmpfs over the
#   shared temp folders and a /proc of its own: nothing it starts or writes outlives it.
# mode 0 (none): no namespaces. The runner stays as a keeper: a child subreaper (orphaned
#   descendants come back to it, and it reaps them), signalled by the kernel when the
#   grader dies, that kills every descendant when the program ends or the grader goes.
#   With a root grader the keeper stays root (``dedicated_uid`` is the slot uid the
#   program gets), so that the program cannot kill it and leave zombies to an init that
#   may never reap them (a container's pid 1).
# In modes 0 and 1 the runner dies with the grader (PR_SET_PDEATHSIG), even on kill -9.
RUNNER = r"""
import sys, os, resource
mode, cpu, mem, fsize, nofile, nproc, is_method, dedicated, tmpfs, grader = (int(x) for x in sys.argv[1:11])
prog, fn_name = sys.argv[11], sys.argv[12]
R = resource
if mode < 2:
    import ctypes, signal
    libc = ctypes.CDLL(None, use_errno=True)
    def fail(what):
        os.write(2, b"p3-sandbox: " + what + b" failed\n")
        os._exit(96)
    R.setrlimit(R.RLIMIT_CORE, (0, 0))
    with open(prog, "rb") as fh:
        source = fh.read()
    if mode == 1:
        uid, gid = os.geteuid(), os.getegid()
        # CLONE_NEWUSER | NEWNET | NEWIPC | NEWNS | NEWUTS | NEWPID
        if libc.unshare(0x10000000 | 0x40000000 | 0x08000000 | 0x00020000 | 0x04000000 | 0x20000000) != 0:
            fail(b"unshare")
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
            with open("/proc/self/" + name, "w") as fh:
                fh.write(text)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the grader's death kills this keeper...
    else:
        libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
        libc.prctl(1, signal.SIGTERM)  # ...here the keeper first kills what the program left
    if os.getppid() != grader:
        os._exit(96)  # the grader died before the death signal was armed
    def sweep(*_):
        if dedicated:  # as the slot uid, kill(-1) reaches every process it has, at once
            helper = os.fork()
            if not helper:
                try:
                    os.setuid(dedicated)
                    os.kill(-1, 9)
                finally:
                    os._exit(0)
            os.waitpid(helper, 0)
        for _ in range(10000):
            kids = []
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open("/proc/self/task/%s/children" % tid) as fh:
                        kids += fh.read().split()
                except OSError:
                    pass
            if not kids:
                break
            for k in kids:
                try:
                    os.kill(int(k), 9)
                except OSError:
                    pass
            try:  # block until one is gone: a busy loop would starve the dying on a loaded host
                os.waitpid(-1, 0)
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                break
    def orphaned(*_):  # the grader is gone and cannot remove the work folder itself
        sweep()
        import shutil
        shutil.rmtree(os.getcwd(), ignore_errors=True)
        os._exit(137)
    if mode == 0:
        signal.signal(signal.SIGTERM, orphaned)
    child = os.fork()
    if child:
        _, status = os.waitpid(child, 0)
        if mode == 0:
            sweep()
        os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    if dedicated:  # mode 0 of a root grader: the keeper stays root, out of the program's reach
        os.setgroups([])
        os.setgid(dedicated)
        os.setuid(dedicated)
    libc.prctl(1, signal.SIGKILL)  # the program dies with its keeper
    if mode == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    else:  # pid 1 of the new namespaces: its death takes every process in them
        libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
        if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
            fail(b"mount --make-rprivate")
        for d in TMP_DIRS:
            if os.path.isdir(d) and libc.mount(b"tmpfs", d.encode(), b"tmpfs", 0x2 | 0x4, b"size=%d,mode=1777" % tmpfs) != 0:
                fail(b"tmpfs on " + d.encode())
        libc.mount(b"proc", b"/proc", b"proc", 0x2 | 0x4 | 0x8, None)  # best effort; the probe says if it failed
        os.chdir("/tmp")
        # no capability may survive into the program (it could unmount its tmpfs)
        hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
        if libc.capset(hdr, (ctypes.c_uint32 * 6)()) != 0 or libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            fail(b"dropping capabilities")
    del ctypes, libc, signal, sweep, orphaned
for lim, value in ((R.RLIMIT_CORE, 0), (R.RLIMIT_CPU, cpu), (R.RLIMIT_AS, mem), (R.RLIMIT_FSIZE, fsize),
                   (R.RLIMIT_NOFILE, nofile), (R.RLIMIT_NPROC, nproc)):
    R.setrlimit(lim, (value, value + 1 if lim == R.RLIMIT_CPU else value))  # SIGXCPU, then SIGKILL
del R, lim, value
import builtins
builtins.exit = builtins.quit = sys.exit  # -S drops site's exit(); programs use it
try:
    if mode == 2:
        with open(prog, "rb") as fh:
            source = fh.read()
    code = compile(source, "solution.py", "exec")
except BaseException as exc:
    os.write(2, ("%s: %s\n" % (type(exc).__name__, exc)).encode("utf-8", "replace"))
    os._exit(97)
del source
g = {"__name__": "__main__", "__builtins__": builtins, "__file__": "solution.py"}
if not fn_name:
    exec(code, g)
else:
    import io, json
    _dumps, _write, _exit = json.dumps, os.write, os._exit
    args = json.loads(sys.stdin.read())
    sys.stdin = io.StringIO("")
    out = os.dup(1)
    os.dup2(2, 1)  # the program's prints go to stderr; stdout carries only the answer
    exec(code, g)
    if (is_method or fn_name not in g) and "Solution" in g:
        fn = getattr(g["Solution"](), fn_name)  # LeetCode style
    else:
        fn = g[fn_name]
    data = _dumps(fn(*args)).encode("utf-8")
    sys.stdout.flush()
    while data:
        data = data[_write(out, data):]
    _exit(0)
""".replace("TMP_DIRS", repr(SHARED_TMP_DIRS))


@dataclass
class Limits:
    """Resource limits of one run."""

    timeout: float = 4.0  # wall clock, seconds; the whole process group is killed after it
    cpu: int | None = None  # CPU seconds; None = int(timeout) + 2
    memory_mb: int = 1024  # address space (Python itself needs ~30 MB)
    file_mb: int = 16  # largest file the program may write
    tmpfs_mb: int = 64  # size of the working directory (bwrap level)
    nofile: int = 64  # open files
    nproc: int = 32  # processes + threads (per user namespace under bwrap)
    stdout_bytes: int = 8 << 20  # capped while read; more = output_limit
    stderr_bytes: int = 64 << 10  # kept for diagnostics; more = output_limit

    def __post_init__(self):
        validate_limits(self.timeout, self.memory_mb)


def validate_limits(timeout: float, memory_mb: int) -> None:
    """Refuse limits under which every program fails (a zero, negative, NaN or infinite
    timeout; less memory than the interpreter needs): one clear error before any run."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout < math.inf):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < MIN_MEMORY_MB:
        raise ValueError(f"memory_mb must be an integer >= {MIN_MEMORY_MB} (the interpreter alone needs ~30 MB), "
                         f"got {memory_mb!r}")


@dataclass
class RunResult:
    """Outcome of one run. ``status``: ok, compile_error, runtime_error, timeout,
    memory_limit, output_limit or sandbox_error (``ok`` = exited 0, not "correct")."""

    status: str
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    wall: float = 0.0


@dataclass
class Job:
    """One program run: source code, stdin text, and for call-based problems the
    function name, its JSON argument list and whether it is a ``class Solution`` method."""

    code: str
    stdin: str = ""
    fn_name: str | None = None
    args: list = field(default_factory=list)
    method: bool = False


def sandbox_python() -> str:
    """The interpreter for untrusted programs: $P3_SANDBOX_PYTHON, else the system python3
    (/usr/bin/python3, or /usr/local/bin/python3 as in the python:*-slim images), else the
    first python3 on PATH."""
    env = os.environ.get("P3_SANDBOX_PYTHON")
    if env:
        return env
    for candidate in (DEFAULT_PYTHON, "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("python3") or sys.executable


MODES = {"none": 0, "unshare": 1, "bwrap": 2}  # the runner's first argument

# The canary: what a hostile program would try first. Each finding is True when the
# program reached it (the level is then weaker than its name promises).
CANARY = """
import json, os, socket
def holds(path, want):
    try:
        with open(path, "rb") as fh:
            return fh.read() == want
    except OSError:
        return False
found = {{"other_uid_file": holds({secret!r}, {token!r}), "host_tmp": holds({visible!r}, {token!r}),
         "parent_cmdline": holds("/proc/{grader}/cmdline", {cmdline!r})}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
    found["network"] = True
except OSError:
    found["network"] = False
try:
    with open({written!r}, "w") as fh:
        fh.write("x")
except OSError:
    pass
print(json.dumps(found))
"""
CANARY_CHECKS = {
    "network": "reached a server on the host's loopback (the host's network)",
    "other_uid_file": "read a file only the grader's uid may read (it runs as the grader's uid)",
    "parent_cmdline": "read the grader's command line in /proc (where paths to the tests are)",
    "host_tmp": "saw or wrote the host's temp folder (where problem tables and KFP artifacts lie)",
}


def proven_level(mechanism: str, found: dict) -> str:
    """The level the canary's findings prove, never above the mechanism's own: ``bwrap``
    when it reached nothing; ``unshare`` when it had neither network nor another uid's
    files; else ``none``."""
    if mechanism == "bwrap" and not any(found[k] for k in CANARY_CHECKS):
        return "bwrap"
    if mechanism in ("bwrap", "unshare") and not (found["network"] or found["other_uid_file"]):
        return "unshare"
    return "none"


def describe_findings(findings: dict) -> str:
    reached = [CANARY_CHECKS[k] for k in CANARY_CHECKS if findings.get(k)]
    text = ("the canary program " + "; ".join(reached)) if reached else \
        "the canary program reached no network, no other uid's file, no parent command line, no host temp folder"
    missing = findings.get("unavailable") or {}
    return text + "".join(f"; {k} unavailable: {v}" for k, v in missing.items())


def weak_isolation_message(level: str, findings: dict) -> str:
    """The one error of a grader that refuses to run programs below full isolation."""
    why = {"unshare": "programs see the host's files wherever permissions allow (no mount namespace of their own)",
           "none": "programs share the host's network, processes and files"}[level]
    return (f"refusing to grade APPS programs: sandbox isolation proven here is '{level}', not 'bwrap': {why}; "
            f"{describe_findings(findings)}. A program could read the expected outputs and pass. "
            "For full isolation install bubblewrap (apt-get install bubblewrap; `make install` does it as root) "
            "and allow user namespaces (in Kubernetes: the sandbox-isolation component, docs/security.md); "
            f"or pass --allow-weak-isolation to grade at level '{level}' anyway (recorded in the results)")


def _lock_dir() -> str:
    """A folder only root can write, shared by every grader on the host."""
    for path in ("/run/p3-sandbox", os.path.join(tempfile.gettempdir(), "p3-sandbox-root")):
        with contextlib.suppress(OSError):
            os.makedirs(path, mode=0o700, exist_ok=True)
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022:
                return path
    raise RuntimeError("no root-owned folder for the sandbox's uid locks (/run/p3-sandbox)")


def _lease_uids(base: int, n: int, clean) -> tuple[list[int], list[int]]:
    """``n`` slot uids no other grader on this host holds: an exclusive flock per uid,
    kept open for the Sandbox's life (the kernel drops it when the process dies, even on
    kill -9). Two graders sharing a uid would kill each other's programs in cleanup. A
    uid that still has processes after ``clean`` (zombies an init never reaps count
    against RLIMIT_NPROC) is passed over."""
    folder = _lock_dir()
    uids, fds = [], []
    for uid in range(base, base + UID_RANGE):
        if len(uids) == n:
            break
        fd = os.open(os.path.join(folder, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        clean(uid)
        if _has_processes(uid):
            log.warning("sandbox uid %d still has processes after cleanup; using another", uid)
            os.close(fd)
            continue
        uids.append(uid)
        fds.append(fd)
    if len(uids) < n:
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"all {UID_RANGE} sandbox uids from {base} are held by other graders")
    return uids, fds


def _has_processes(uid: int) -> bool:
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                return True
    return False


def _remove_stale_workdirs(tmp_root: str | None) -> None:
    """Work folders (level none) of graders that died before removing them."""
    root = tmp_root or tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            parts = entry.name.split("-")
            if entry.name.startswith("p3-sbx-") and len(parts) > 3 and parts[2].isdigit() \
                    and not os.path.exists(f"/proc/{parts[2]}"):
                shutil.rmtree(entry.path, ignore_errors=True)


def _remove_files_of(uid: int) -> None:
    """Whatever ``uid`` owns at the top of the shared temp folders (files, fillers, sockets)."""
    for folder in SHARED_TMP_DIRS:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)


_IPC_RMID = 0


def _remove_ipc_of(uid: int) -> None:
    """SysV shared memory, semaphores and message queues owned by ``uid`` (they outlive
    their creator unless removed)."""
    libc = None
    for kind, remove in (("shm", "shmctl"), ("sem", "semctl"), ("msg", "msgctl")):
        try:
            with open(f"/proc/sysvipc/{kind}") as fh:
                header, *lines = fh.read().splitlines()
        except OSError:
            continue
        cols = header.split()
        for line in lines:
            vals = line.split()
            if len(vals) == len(cols) and int(vals[cols.index("uid")]) == uid:
                libc = libc or ctypes.CDLL(None, use_errno=True)
                ident = int(vals[1])  # shmid / semid / msqid
                if kind == "sem":
                    libc.semctl(ident, 0, _IPC_RMID)
                else:
                    getattr(libc, remove)(ident, _IPC_RMID, None)


class Sandbox:
    """Runs jobs in fresh sandboxed processes, ``workers`` at a time.

    ``isolation``: "auto" (best available), or one of LEVELS to insist on it. Either way
    the level is *proven* at start by a canary program (:meth:`_prove`), and ``level`` is
    the proven one. Below ``bwrap`` the constructor raises (fail closed) unless
    ``allow_weak`` is set.
    """

    def __init__(
        self,
        workers: int = 2,
        limits: Limits | None = None,
        python: str | None = None,
        isolation: str = "auto",
        allow_weak: bool = False,
        uid_base: int = DEFAULT_UID_BASE,
        tmp_root: str | None = None,
    ):
        if isolation not in ("auto",) + LEVELS:
            raise ValueError(f"isolation must be auto or one of {LEVELS}, got {isolation!r}")
        self.workers = max(1, int(workers))
        self.limits = limits or Limits()
        self.python = python or sandbox_python()
        if not os.access(self.python, os.X_OK):
            raise RuntimeError(f"sandbox interpreter {self.python!r} is not executable (set P3_SANDBOX_PYTHON)")
        self.is_root = os.geteuid() == 0
        self.tmp_root = tmp_root
        self.bwrap = shutil.which("bwrap")
        self.uids: list[int] = []
        self._locks: list[int] = []
        if self.is_root:  # cleaned first: what a killed grader's programs may have left under them
            self.uids, self._locks = _lease_uids(uid_base, self.workers, self._clean_uid)
        _remove_stale_workdirs(tmp_root)
        self._slots: queue.Queue[int] = queue.Queue()
        for i in range(self.workers):
            self._slots.put(i)
        self.mechanism, self.level, self.findings = self._choose_level(isolation)
        if self.level != "bwrap" and not allow_weak:
            self.close()
            raise RuntimeError(weak_isolation_message(self.level, self.findings))
        if self.level != "bwrap":
            log.warning("SANDBOX ISOLATION IS WEAK (%s), allowed by --allow-weak-isolation: %s", self.level,
                        describe_findings(self.findings))
        else:
            log.info("sandbox isolation: bwrap, proven by a canary program (%s)", describe_findings(self.findings))

    def close(self) -> None:
        """Give the slot uids back (also done by the kernel when the process ends)."""
        for fd in getattr(self, "_locks", ()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._locks = []

    def __del__(self):
        self.close()

    # ---- isolation level -------------------------------------------------------------
    def _choose_level(self, isolation: str) -> tuple[str, str, dict]:
        """(mechanism, proven level, canary findings): the first mechanism that proves its
        own level, else the one that proved the most."""
        candidates = LEVELS if isolation == "auto" else (isolation,)
        findings: dict = {"unavailable": {}}
        best = None
        for mechanism in candidates:
            if mechanism == "bwrap" and not self.bwrap:
                findings["unavailable"]["bwrap"] = "bubblewrap (bwrap) is not installed"
                continue
            found, why = self._prove(mechanism)
            if found is None:
                findings["unavailable"][mechanism] = why
                log.debug("sandbox level %s unavailable: %s", mechanism, why)
                continue
            level = proven_level(mechanism, found)
            if best is None or MODES[level] > MODES[best[1]]:
                best = (mechanism, level, found)
            if level == mechanism:
                break
        if best is not None:
            return best[0], best[1], {**findings, **best[2]}
        raise RuntimeError(
            f"sandbox isolation '{isolation}' is not available on this machine: "
            + "; ".join(f"{k}: {v}" for k, v in findings["unavailable"].items())
        )

    def _prove(self, mechanism: str) -> tuple[dict | None, str]:
        """Run the canary program at ``mechanism``: what did it reach? (None, why) when
        the mechanism cannot run a program here."""
        token = os.urandom(16).hex()
        host_tmp = tempfile.gettempdir()
        bait = tempfile.mkdtemp(prefix="p3-probe-", dir=host_tmp)
        written = os.path.join(host_tmp, f"p3-canary-{token}")
        listener = socket.socket()
        try:
            os.chmod(bait, 0o755)  # a typical world-readable output folder
            secret, visible = os.path.join(bait, "secret"), os.path.join(bait, "visible")
            for path, mode in ((secret, 0o600), (visible, 0o644)):
                with open(path, "w") as fh:
                    fh.write(token)
                os.chmod(path, mode)
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            with open("/proc/self/cmdline", "rb") as fh:
                cmdline = fh.read()
            code = CANARY.format(port=listener.getsockname()[1], token=token.encode(), secret=secret, visible=visible,
                                 written=written, grader=os.getpid(), cmdline=cmdline)
            res = self.run(Job(code), Limits(timeout=10), mechanism=mechanism)
            if res.status != "ok":
                return None, f"the canary program did not run ({res.status}: {res.stderr.strip()[-300:]})"
            try:
                found = json.loads(res.stdout)
            except ValueError:
                return None, f"the canary program printed {res.stdout[-200:]!r}"
            found["host_tmp"] = bool(found["host_tmp"] or os.path.exists(written))
            return found, ""
        finally:
            listener.close()
            shutil.rmtree(bait, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(written)

    # ---- one run --------------------------------------------------------------------
    def run(self, job: Job, limits: Limits | None = None, mechanism: str | None = None) -> RunResult:
        """Run one job; never raises for anything the program does."""
        slot = self._slots.get()
        try:
            return self._run(job, limits or self.limits, slot, mechanism or self.mechanism)
        except Exception as exc:  # the grader must survive its own failures too
            log.exception("sandbox run failed")
            return RunResult("sandbox_error", stderr=f"{type(exc).__name__}: {exc}")
        finally:
            self._slots.put(slot)

    def run_many(self, jobs: Iterable[Job], limits: Limits | None = None) -> list[RunResult]:
        """Run jobs ``workers`` at a time; results in job order."""
        jobs = list(jobs)
        if self.workers == 1 or len(jobs) <= 1:
            return [self.run(j, limits) for j in jobs]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda j: self.run(j, limits), jobs))

    def _run(self, job: Job, lim: Limits, slot: int, mechanism: str) -> RunResult:
        uid = self.uids[slot] if self.is_root else None
        stdin_data = json.dumps(job.args) if job.fn_name is not None else job.stdin
        # The program goes in through a file descriptor: no host path has to be reachable
        # by the sandbox uid (bwrap copies it to a read-only file inside).
        with _readonly_temp(job.code.encode("utf-8", errors="surrogatepass")) as code_fd:
            if mechanism == "bwrap":  # the private cwd is a tmpfs that vanishes with the namespace
                argv = self._argv(mechanism, job, lim, code_fd, uid)
                return self._execute(argv, stdin_data, lim, uid, "/", (code_fd,), mechanism)
            # unshare: cwd becomes a private tmpfs inside; none: a host dir, removed after
            workdir = None if mechanism == "unshare" else tempfile.mkdtemp(prefix=f"p3-sbx-{os.getpid()}-",
                                                                            dir=self.tmp_root)
            try:
                if workdir is not None:
                    if uid is not None:
                        os.chown(workdir, uid, uid)
                    os.chmod(workdir, 0o700)
                argv = self._argv(mechanism, job, lim, code_fd, uid)
                # at none the root keeper switches to the slot uid itself, for the program only
                return self._execute(argv, stdin_data, lim, None if mechanism == "none" else uid, workdir or "/",
                                     (code_fd,), mechanism)
            finally:
                if workdir is not None:
                    shutil.rmtree(workdir, ignore_errors=True)
                if uid is not None:
                    self._clean_uid(uid)

    def _argv(self, mechanism: str, job: Job, lim: Limits, code_fd: int, uid: int | None) -> list[str]:
        cpu = lim.cpu if lim.cpu is not None else int(lim.timeout) + 2
        inner_prog = "/code/prog.py" if mechanism == "bwrap" else f"/proc/self/fd/{code_fd}"
        cfg = [MODES[mechanism], cpu, lim.memory_mb << 20, lim.file_mb << 20, lim.nofile, lim.nproc,
               bool(job.method), uid if uid is not None and mechanism == "none" else 0, lim.tmpfs_mb << 20,
               os.getpid()]
        py = [self.python, "-I", "-S", "-B", "-c", RUNNER, *(str(int(v)) for v in cfg), inner_prog, job.fn_name or ""]
        if mechanism != "bwrap":
            return py
        argv = [self.bwrap, "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net",
                "--unshare-uts", "--unshare-cgroup-try", "--disable-userns",
                "--die-with-parent", "--new-session", "--as-pid-1", "--cap-drop", "ALL", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--hostname", "sandbox",
                "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib32", "lib64", "sbin"):
            target = os.path.join("/", name)
            if os.path.islink(target):
                argv += ["--symlink", os.readlink(target), target]
            elif os.path.isdir(target):
                argv += ["--ro-bind", target, target]
        real = os.path.realpath(self.python)
        if not real.startswith("/usr/"):  # an interpreter outside /usr: show its prefix too
            prefix = os.path.dirname(os.path.dirname(real))
            argv += ["--ro-bind", prefix, prefix]
        # Writable: only /sandbox (cwd) and /dev/shm, both size-limited tmpfs. bwrap's root
        # and /dev are tmpfs too, without a size: made read-only once set up.
        tmpfs = str(lim.tmpfs_mb << 20)
        argv += ["--proc", "/proc", "--dev", "/dev", "--ro-bind-data", str(code_fd), "/code/prog.py",
                 "--size", tmpfs, "--tmpfs", "/sandbox", "--size", tmpfs, "--tmpfs", "/dev/shm",
                 "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/sandbox", "--"]
        return argv + py

    def _execute(self, argv: list[str], stdin_data: str, lim: Limits, uid: int | None, cwd: str,
                 pass_fds: tuple[int, ...], mechanism: str) -> RunResult:
        start = time.monotonic()
        with _readonly_temp(stdin_data.encode("utf-8", errors="surrogatepass")) as stdin_fd:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=stdin_fd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={} if mechanism == "bwrap" else {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                    cwd=cwd,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=pass_fds,
                    user=uid,
                    group=uid,
                    extra_groups=[] if uid is not None else None,
                )
            except OSError as exc:
                return RunResult("sandbox_error", stderr=f"cannot start sandbox: {exc}")
        # at none the keeper sweeps the program's leftovers itself: let it finish, so that no
        # orphan or zombie of the slot uid is left to the host's init (which may never reap it)
        out, err, why = self._collect(proc, start + lim.timeout, lim, grace=10.0 if mechanism == "none" else 0.5)
        wall = time.monotonic() - start
        return self._classify(proc.returncode, out, err, why, wall)

    def _collect(self, proc: subprocess.Popen, deadline: float, lim: Limits,
                 grace: float) -> tuple[bytes, bytes, str | None]:
        """Read stdout/stderr with caps until EOF or the deadline; kill the group on a breach."""
        bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        caps = {proc.stdout: lim.stdout_bytes, proc.stderr: lim.stderr_bytes}
        why: str | None = None
        sel = selectors.DefaultSelector()
        for f in bufs:
            os.set_blocking(f.fileno(), False)
            sel.register(f, selectors.EVENT_READ)
        exited_at: float | None = None
        try:
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    why = "timeout"
                    break
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > 0.25:
                    break  # a descendant holds the pipes open after the program ended
                wait = min(deadline - now, 0.05 if exited_at is None else 0.25)
                for key, _ in sel.select(wait):
                    f = key.fileobj
                    try:
                        chunk = os.read(f.fileno(), 1 << 16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(f)
                        continue
                    bufs[f] += chunk
                    if len(bufs[f]) > caps[f]:
                        why = "output_limit"
                        break
                if why:
                    break
            if why is None and proc.poll() is None:
                # both pipes closed but the program runs on: it still has its time limit
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    why = "timeout"
        finally:
            sel.close()
            self._kill(proc, grace)
            proc.stdout.close()
            proc.stderr.close()
        return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), why

    @staticmethod
    def _kill(proc: subprocess.Popen, grace: float) -> None:
        """SIGKILL the run's process group; under bwrap its pid 1 dies and takes the namespace.

        bwrap's child (the program, pid 1 of the namespace) is killed first, so that bwrap
        is still alive to reap it: killed the other way round it would be orphaned to the
        host's init, which in a container need not reap anything.
        """
        if proc.poll() is None:
            for child in _children(proc.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    def _clean_uid(self, uid: int) -> None:
        """Remove everything a slot uid may hold outside the sandbox: its processes (a
        setsid()'d descendant escapes the group without a pid namespace), its files in
        the shared temp folders and its SysV IPC objects. The uid is this grader's alone
        (leased), so nothing of anybody else's is touched."""
        for _ in range(2):  # twice: a fork racing the first sweep is caught by the second
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["/bin/kill", "-9", "-1"], user=uid, group=uid, extra_groups=[],
                               env={}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5)
        _remove_files_of(uid)
        _remove_ipc_of(uid)

    @staticmethod
    def _classify(rc: int, out: bytes, err: bytes, why: str | None, wall: float) -> RunResult:
        stdout = out.decode("utf-8", errors="replace")
        stderr = err[-4000:].decode("utf-8", errors="replace")
        res = RunResult("ok", stdout, stderr, rc, wall)
        sig = -rc if rc < 0 else (rc - 128 if rc > 128 else 0)  # bwrap reports 128+signal
        if why:
            res.status = why
        elif rc == 0:
            res.status = "ok"
        elif rc == RC_COMPILE_ERROR:
            res.status = "compile_error"
        elif rc == RC_SANDBOX_ERROR and "p3-sandbox:" in stderr:
            res.status = "sandbox_error"
        elif sig in (signal.SIGXCPU, signal.SIGKILL):
            res.status = "timeout"
        elif sig == signal.SIGXFSZ or "File too large" in stderr or "No space left on device" in stderr:
            res.status = "output_limit"  # Python ignores SIGXFSZ: the write fails with EFBIG instead
        elif "MemoryError" in stderr or "Cannot allocate memory" in stderr:
            res.status = "memory_limit"
        else:
            res.status = "runtime_error"
        return res


@contextlib.contextmanager
def _readonly_temp(data: bytes):
    """A read-only descriptor of an anonymous in-memory file holding ``data`` (a program's
    stdin or code): no temp dir needed, and the program cannot write through it."""
    wfd = os.memfd_create("p3-sandbox", os.MFD_CLOEXEC) if hasattr(os, "memfd_create") else None
    with (os.fdopen(wfd, "wb") if wfd is not None else tempfile.TemporaryFile()) as fh:
        fh.write(data)
        fh.flush()
        fd = os.open(f"/proc/self/fd/{fh.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except (OSError, ValueError):
        return []


def decode_call_result(res: RunResult) -> tuple[bool, Any]:
    """The return value of a call-based run, parsed from its JSON stdout: (ok, value)."""
    if res.status != "ok":
        return False, None
    try:
        return True, json.loads(res.stdout)
    except ValueError:
        return False, None
