"""Run one untrusted Python program, once, in a fresh sandboxed process (DESIGN.md §6).

Every run is a new process that:

- starts in its own session and process group (``start_new_session``), with an empty
  environment and a private working directory that is gone afterwards (a tmpfs inside
  the namespace under bwrap, else a host temp dir that is removed); its code and stdin
  come in through read-only in-memory files;
- runs as an unprivileged uid when the grader is root (RLIMIT_NPROC does not bind root):
  one uid per worker slot, so that parallel runs cannot signal or count against each other;
- is isolated by the best mechanism this machine allows, probed once (:func:`probe`):
  ``bwrap``    bubblewrap: new user, network, pid, mount, ipc and uts namespaces, no
               nested user namespaces; the program sees only /usr (read-only), a
               size-limited tmpfs as cwd and /dev/shm, its own /proc and a minimal /dev.
               The program is pid 1 of its namespace (``--as-pid-1``): when it ends,
               every process it left behind dies with the namespace (and bwrap reaps it;
               with bwrap's own init process in between, that init is left a zombie for
               the host's init to reap, which in a container may never happen).
               Works for a non-root grader too (unprivileged user namespaces).
  ``unshare``  no bubblewrap: new user + network namespaces made by the runner itself
               (no network), but host files are protected by permissions only, no pid ns.
  ``none``     rlimits (and the uid switch when root) only. Logged loudly;
               ``require_isolation`` turns it (and ``unshare``) into an error;
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
import json
import logging
import os
import queue
import selectors
import shutil
import signal
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

# The trusted prologue, run as `python3 -I -S -B -c RUNNER unshare cpu as fsize nofile nproc
# method prog fn_name`. Any Python 3.8+; standard library only, and as little of it as
# possible (json alone costs ~10 ms of start-up, more than the whole trivial program).
RUNNER = r"""
import sys, os, resource
unshare, cpu, mem, fsize, nofile, nproc, is_method = (int(x) for x in sys.argv[1:8])
prog, fn_name = sys.argv[8], sys.argv[9]
if unshare:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    # CLONE_NEWUSER | CLONE_NEWNET: a network namespace with nothing in it, unprivileged.
    if libc.unshare(0x10000000 | 0x40000000) != 0:
        os.write(2, b"p3-sandbox: unshare failed\n")
        os._exit(96)
R = resource
for lim, value in ((R.RLIMIT_CORE, 0), (R.RLIMIT_CPU, cpu), (R.RLIMIT_AS, mem), (R.RLIMIT_FSIZE, fsize),
                   (R.RLIMIT_NOFILE, nofile), (R.RLIMIT_NPROC, nproc)):
    R.setrlimit(lim, (value, value + 1 if lim == R.RLIMIT_CPU else value))  # SIGXCPU, then SIGKILL
del R, lim, value
import builtins
builtins.exit = builtins.quit = sys.exit  # -S drops site's exit(); programs use it
try:
    with open(prog, "rb") as fh:
        code = compile(fh.read(), "solution.py", "exec")
except BaseException as exc:
    os.write(2, ("%s: %s\n" % (type(exc).__name__, exc)).encode("utf-8", "replace"))
    os._exit(97)
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
"""


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


class Sandbox:
    """Runs jobs in fresh sandboxed processes, ``workers`` at a time.

    ``isolation``: "auto" (best available), or one of LEVELS to insist on it.
    ``require_isolation``: raise RuntimeError unless the level is ``bwrap`` (no network
    *and* no view of the host's files).
    """

    def __init__(
        self,
        workers: int = 2,
        limits: Limits | None = None,
        python: str | None = None,
        isolation: str = "auto",
        require_isolation: bool = False,
        uid_base: int = DEFAULT_UID_BASE,
        tmp_root: str | None = None,
    ):
        self.workers = max(1, int(workers))
        self.limits = limits or Limits()
        self.python = python or sandbox_python()
        if not os.access(self.python, os.X_OK):
            raise RuntimeError(f"sandbox interpreter {self.python!r} is not executable (set P3_SANDBOX_PYTHON)")
        self.is_root = os.geteuid() == 0
        self.uid_base = uid_base
        self.tmp_root = tmp_root
        self._slots: queue.Queue[int] = queue.Queue()
        for i in range(self.workers):
            self._slots.put(i)
        self.bwrap = shutil.which("bwrap")
        self.level = self._choose_level(isolation)
        if require_isolation and self.level != "bwrap":
            raise RuntimeError(
                f"sandbox isolation is '{self.level}', not 'bwrap' (network + mount namespaces): "
                "install bubblewrap and allow user namespaces, or drop --require-isolation"
            )
        if self.level != "bwrap":
            log.warning(
                "SANDBOX ISOLATION IS WEAK (%s): untrusted programs %s. Install bubblewrap and allow "
                "unprivileged user namespaces for network + mount + pid namespaces.",
                self.level,
                "have no network but can read what the sandbox uid can read"
                if self.level == "unshare"
                else "can use the network and read what the sandbox uid can read",
            )
        else:
            log.info("sandbox isolation: bwrap (user, net, pid, mount, ipc, uts namespaces)")

    # ---- isolation level -------------------------------------------------------------
    def _choose_level(self, isolation: str) -> str:
        if isolation not in ("auto",) + LEVELS:
            raise ValueError(f"isolation must be auto or one of {LEVELS}, got {isolation!r}")
        candidates = LEVELS if isolation == "auto" else (isolation,)
        for level in candidates:
            if self._probe(level):
                return level
        raise RuntimeError(
            f"sandbox isolation '{isolation}' is not available on this machine"
            + (f" (or uid {self.uid_base} cannot reach the temp dir {self.tmp_root or tempfile.gettempdir()})"
               if self.is_root else "")
        )

    def _probe(self, level: str) -> bool:
        """Run a tiny program at ``level``; any level but ``none`` must have no network."""
        if level == "bwrap" and not self.bwrap:
            return False
        probe = "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=0.5)\nexcept OSError:\n    print('isolated')\nelse:\n    print('online')\n"
        saved = getattr(self, "level", None)
        self.level = level
        try:
            res = self.run(Job(probe))
        finally:
            self.level = saved
        ok = res.status == "ok" and res.stdout.strip() in (("isolated",) if level != "none" else ("isolated", "online"))
        if not ok:
            log.debug("sandbox level %s unavailable: %s %s", level, res.status, res.stderr[-300:])
        return ok

    # ---- one run --------------------------------------------------------------------
    def run(self, job: Job, limits: Limits | None = None) -> RunResult:
        """Run one job; never raises for anything the program does."""
        slot = self._slots.get()
        try:
            return self._run(job, limits or self.limits, slot)
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

    def _run(self, job: Job, lim: Limits, slot: int) -> RunResult:
        uid = self.uid_base + slot if self.is_root else None
        stdin_data = json.dumps(job.args) if job.fn_name is not None else job.stdin
        if self.level == "bwrap":
            # The program goes in through a file descriptor (bwrap copies it to a
            # read-only file inside): no host path has to be reachable by the sandbox uid,
            # and the private cwd is a tmpfs that vanishes with the namespace.
            with _readonly_temp(job.code.encode("utf-8", errors="surrogatepass")) as code_fd:
                argv = self._argv(None, job, lim, code_fd=code_fd)
                return self._execute(argv, stdin_data, lim, uid, "/", pass_fds=(code_fd,))
        workdir = tempfile.mkdtemp(prefix="p3-sbx-", dir=self.tmp_root)
        try:
            prog = os.path.join(workdir, "prog.py")
            with open(prog, "w", encoding="utf-8", errors="surrogatepass") as fh:
                fh.write(job.code)
            os.chmod(prog, 0o444)
            if uid is not None:
                os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
            return self._execute(self._argv(workdir, job, lim), stdin_data, lim, uid, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if uid is not None:
                self._kill_uid(uid)

    def _argv(self, workdir: str | None, job: Job, lim: Limits, code_fd: int | None = None) -> list[str]:
        cpu = lim.cpu if lim.cpu is not None else int(lim.timeout) + 2
        inner_prog = "/code/prog.py" if self.level == "bwrap" else os.path.join(workdir, "prog.py")
        cfg = [self.level == "unshare", cpu, lim.memory_mb << 20, lim.file_mb << 20, lim.nofile, lim.nproc,
               bool(job.method)]
        py = [self.python, "-I", "-S", "-B", "-c", RUNNER, *(str(int(v)) for v in cfg), inner_prog, job.fn_name or ""]
        if self.level != "bwrap":
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
                 pass_fds: tuple[int, ...] = ()) -> RunResult:
        start = time.monotonic()
        with _readonly_temp(stdin_data.encode("utf-8", errors="surrogatepass")) as stdin_fd:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=stdin_fd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={} if self.level == "bwrap" else {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
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
        out, err, why = self._collect(proc, start + lim.timeout, lim)
        wall = time.monotonic() - start
        return self._classify(proc.returncode, out, err, why, wall)

    def _collect(self, proc: subprocess.Popen, deadline: float, lim: Limits) -> tuple[bytes, bytes, str | None]:
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
            self._kill(proc)
            proc.stdout.close()
            proc.stderr.close()
        return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), why

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
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
                proc.wait(timeout=0.5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    def _kill_uid(self, uid: int) -> None:
        """Without a pid namespace a setsid()'d descendant escapes the group: kill everything
        the slot uid owns, from a process running as that uid (kill(-1) spares nobody else)."""
        for _ in range(2):  # twice: a fork racing the first sweep is caught by the second
            with contextlib.suppress(OSError):
                subprocess.run(["/bin/kill", "-9", "-1"], user=uid, group=uid, extra_groups=[],
                               env={}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5)

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
