"""One sandboxed process: started with its code and stdin as read-only in-memory files,
its output read under caps, killed whole, its exit classified."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import tempfile
import time

from .jobs import Limits, RunResult
from .runner import RC_COMPILE_ERROR, RC_SANDBOX_ERROR


def execute(argv: list[str], stdin_data: str, lim: Limits, uid: int | None, cwd: str,
            pass_fds: tuple[int, ...], mechanism: str) -> RunResult:
    """Start ``argv`` in a session of its own, ``stdin_data`` as its stdin; its outcome once
    it has ended or been killed."""
    start = time.monotonic()
    with readonly_temp(stdin_data.encode("utf-8", errors="surrogatepass")) as stdin_fd:
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
    out, err, why = collect(proc, start + lim.timeout, lim, grace=10.0 if mechanism == "none" else 0.5)
    wall = time.monotonic() - start
    return classify(proc.returncode, out, err, why, wall)


def collect(proc: subprocess.Popen, deadline: float, lim: Limits,
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
        kill(proc, grace)
        proc.stdout.close()
        proc.stderr.close()
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), why


def kill(proc: subprocess.Popen, grace: float) -> None:
    """SIGKILL the run's process group; under bwrap its pid 1 dies and takes the namespace.

    bwrap's child (the program, pid 1 of the namespace) is killed first, so that bwrap
    is still alive to reap it: killed the other way round it would be orphaned to the
    host's init, which in a container need not reap anything.
    """
    if proc.poll() is None:
        for child in children(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def classify(rc: int, out: bytes, err: bytes, why: str | None, wall: float) -> RunResult:
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
def readonly_temp(data: bytes):
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


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except (OSError, ValueError):
        return []
