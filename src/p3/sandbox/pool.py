"""The Sandbox: proves the isolation level at start, then runs jobs in fresh sandboxed
processes, ``workers`` at a time, each slot under its own uid when the grader is root."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from .canary import CANARY, describe_findings, proven_level, weak_isolation_message
from .cleanup import clean_uid, remove_stale_workdirs
from .jobs import Job, Limits, RunResult
from .process import execute, readonly_temp
from .runner import LEVELS, MODES, RUNNER, sandbox_python
from .uids import DEFAULT_UID_BASE, lease_uids

log = logging.getLogger("p3.sandbox")


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
            self.uids, self._locks = lease_uids(uid_base, self.workers, clean_uid)
        remove_stale_workdirs(tmp_root)
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
        with readonly_temp(job.code.encode("utf-8", errors="surrogatepass")) as code_fd:
            if mechanism == "bwrap":  # the private cwd is a tmpfs that vanishes with the namespace
                argv = self._argv(mechanism, job, lim, code_fd, uid)
                return execute(argv, stdin_data, lim, uid, "/", (code_fd,), mechanism)
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
                return execute(argv, stdin_data, lim, None if mechanism == "none" else uid, workdir or "/",
                               (code_fd,), mechanism)
            finally:
                if workdir is not None:
                    shutil.rmtree(workdir, ignore_errors=True)
                if uid is not None:
                    clean_uid(uid)

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
