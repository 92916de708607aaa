"""What runs leave on the host without a namespace of their own: the work folders of
graders that died, and a slot uid's processes, files in the shared temp folders and SysV
IPC objects."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import tempfile

from .runner import SHARED_TMP_DIRS


def clean_uid(uid: int) -> None:
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


def remove_stale_workdirs(tmp_root: str | None) -> None:
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
