"""Slot uids of a root grader (RLIMIT_NPROC does not bind root): leased host-wide under a
lock, so that no two graders, and no two slots, share one."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile

log = logging.getLogger("p3.sandbox")

DEFAULT_UID_BASE = 61000  # uids base .. base+workers-1 must own nothing on the host
UID_RANGE = 4096  # slot uids come from uid_base .. uid_base + UID_RANGE - 1, leased per grader


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


def lease_uids(base: int, n: int, clean) -> tuple[list[int], list[int]]:
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
