"""A step's outputs: never an input, one writer at a time, committed together.

Every config dataclass marks its path fields ``metadata={"io": "in"}`` or ``{"io": "out"}``.
:func:`claim` (the CLI wraps every verb in it) checks before any work that the outputs
differ from each other and from the inputs, after resolving symlinks and URIs, and then
holds an exclusive lease on each output for the whole step: a lock file under ``flock``
beside a local output (released by the kernel when the process dies, so a killed run
never blocks the next), a lock object created with a conditional PUT (``If-None-Match:
*``) beside an ``s3://`` output, renewed while the step runs and taken over once expired.
Holding the lease, it removes what a killed writer of the same output left behind (temp
files, unfinished multipart uploads). A second writer fails at once with one line.

:class:`Commit` writes a step's outputs to temp names, checks them, and then publishes
them in a fixed order with the primary table (the one staged last) last, after removing
the old primary first. A reader that finds the primary table can trust the rest; when a
publish fails, what was already published in this commit is removed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from p3 import storage


class PathClash(ValueError):
    """Two outputs, or an output and an input, are the same file."""


class Busy(RuntimeError):
    """Another process is writing the same output."""


LOCK_SUFFIX = ".p3-lock"


# -- path hygiene -----------------------------------------------------------------------
def identity(path: str) -> str:
    """What ``path`` names, comparable across spellings: a local path resolved through
    symlinks (``file://`` stripped), or a normalised URI (``s3a://`` is ``s3://``)."""
    s = str(path)
    if storage.is_remote(s):
        scheme, _, rest = s.partition("://")
        scheme = "s3" if scheme in ("s3", "s3a") else scheme
        return f"{scheme}://" + "/".join(p for p in rest.split("/") if p not in ("", "."))
    return os.path.realpath(os.path.expanduser(s.removeprefix("file://")))


def _inside(child: str, parent: str) -> bool:
    return child != parent and child.startswith(parent.rstrip("/") + "/")


def paths_of(cfg: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(inputs, outputs) of a config dataclass: ``--flag`` -> path, from field metadata
    ``io``; unset fields and names that are not paths (``hf:…``, ``st:…``) left out."""
    from p3 import configs

    ins: dict[str, str] = {}
    outs: dict[str, str] = {}
    flat = configs.flat_values(cfg)
    for name, setting in configs.settings(type(cfg)).items():
        f = setting.field
        role = f.metadata.get("io")
        value = flat[name]
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v or (":" in v and "://" not in v):
                continue
            flag = "--" + f.name.replace("_", "-") + (f"[{i}]" if len(values) > 1 else "")
            if role == "in":
                ins[flag] = v
            elif role == "out":
                outs[flag] = v
    return ins, outs


def check_distinct(inputs: dict[str, str], outputs: dict[str, str]) -> None:
    """Refuse (PathClash) an output that is another output, or is or contains an input."""
    outs = [(flag, p, identity(p)) for flag, p in outputs.items()]
    for i, (flag, p, ident) in enumerate(outs):
        for flag2, p2, ident2 in outs[i + 1:]:
            if ident == ident2 or _inside(ident, ident2) or _inside(ident2, ident):
                raise PathClash(f"{flag} and {flag2} name the same place ({p}, {p2}): each output needs its own path")
        for iflag, ip in inputs.items():
            iident = identity(ip)
            if iident == ident or _inside(iident, ident):
                raise PathClash(f"{flag} {p} would overwrite the input {iflag} {ip}: an output is never an input")


# -- leases -----------------------------------------------------------------------------
def lease_seconds() -> float:
    """How long an ``s3://`` lease lasts unrenewed (``P3_S3_LEASE_SECONDS``, default 300)."""
    return storage.env_number("P3_S3_LEASE_SECONDS", 300.0, 1.0)


class _LocalLease:
    """flock on ``.<name>.p3-lock`` beside the output; the file is removed on release."""

    def __init__(self, target: str):
        import fcntl

        t = Path(target.removeprefix("file://"))
        try:
            t.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage.StorageError(f"{target}: cannot create its folder: {exc.strerror or exc}", exc.errno) from exc
        self.target, self.path = target, str(t.with_name(f".{t.name}{LOCK_SUFFIX}"))
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as exc:  # a read-only or full location: name the output
                raise storage.StorageError(f"{target}: cannot write: {exc.strerror or exc}", exc.errno) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise Busy(f"{target}: {holder} is writing this output (lock {self.path}); "
                           f"wait for it to finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file the previous holder unlinked between our open and flock
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"p3 pid {os.getpid()} on {socket.gethostname()}".encode())
        except OSError as exc:  # a full location
            self.release()
            raise storage.StorageError(f"{target}: cannot write: {exc.strerror or exc}", exc.errno) from exc

    def clean(self) -> None:
        """Remove temp files of this output that a killed writer left (we hold the lock)."""
        t = Path(self.path).with_name(Path(self.target.removeprefix("file://")).name)
        for p in t.parent.glob(f".{_glob_escape(t.name)}.p3-*.tmp"):
            storage._remove(str(p))

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)


def remove_unheld_locks(folder: str | os.PathLike) -> None:
    """Remove the lock files in ``folder`` that no live process holds (a killed writer's)."""
    import fcntl

    for path in Path(folder).glob(f".*{LOCK_SUFFIX}"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)  # under the lock: a writer that opens it next retries (inode check)
        except OSError:
            pass  # held: a live writer's
        finally:
            os.close(fd)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class _S3Lease:
    """A lock object ``<key>.p3-lock`` made with a conditional PUT, renewed in the
    background every third of the lease and taken over by others only once expired."""

    def __init__(self, target: str):
        self.target, self.ttl = target, lease_seconds()
        self.fs, inner = storage.filesystem(target)
        self.bucket, key, _ = self.fs.split_path(inner)
        self.key = key + LOCK_SUFFIX
        self.holder = f"p3 pid {os.getpid()} on {socket.gethostname()}"
        with storage.errors_named(target):
            try:
                self.etag = self._put(IfNoneMatch="*")
            except Exception as exc:
                if not _precondition_failed(exc):
                    raise
                self.etag = self._take_over_expired()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="p3-lease")
        self._thread.start()

    def _put(self, **cond) -> str:
        body = json.dumps({"holder": self.holder, "expires": time.time() + self.ttl}).encode()
        out = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **cond)
        return out["ETag"]

    def _take_over_expired(self) -> str:
        try:
            got = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
            info = json.loads(self.fs.cat_file(f"{self.bucket}/{self.key}"))
        except (ValueError, OSError):
            info, got = {}, None
        if got is not None and info.get("expires", 0) > time.time():
            raise Busy(f"{self.target}: {info.get('holder', 'another process')} is writing this output "
                       f"(lease s3://{self.bucket}/{self.key}, expires in {info['expires'] - time.time():.0f} s); "
                       f"wait for it to finish or choose another --out")
        try:  # expired: take it over, unless someone else did first
            return self._put(IfMatch=got["ETag"]) if got is not None else self._put(IfNoneMatch="*")
        except Exception as exc:
            if _precondition_failed(exc):
                raise Busy(f"{self.target}: another process took the lease first") from None
            raise

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with contextlib.suppress(Exception):  # a missed renewal is caught by the check at commit
                self.etag = self._put(IfMatch=self.etag)

    def check(self) -> None:
        """Raise Busy unless the lease is still ours (before publishing anything)."""
        head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
        if head["ETag"] != self.etag:
            raise Busy(f"{self.target}: the lease was taken over by another writer; nothing published")

    def clean(self) -> None:
        storage.abort_uploads(self.target)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
            if head["ETag"] == self.etag:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)


def _precondition_failed(exc: BaseException | None) -> bool:
    """A conditional PUT refused (s3fs wraps botocore's ClientError in an OSError)."""
    while exc is not None:
        err = (getattr(exc, "response", None) or {}).get("Error", {})
        if err.get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def lease(target: str) -> Any:
    """An exclusive lease on writing ``target`` (Busy when another process holds it)."""
    if not storage.is_remote(target):
        return _LocalLease(target)
    if str(target).startswith(("s3://", "s3a://")):
        return _S3Lease(target)
    return None  # memory://, gs:// …: no lease


_HELD: list[Any] = []  # leases of the running step, checked by Commit before it publishes


@contextlib.contextmanager
def claim(cfg: Any) -> Iterator[None]:
    """For the step configured by ``cfg``: refuse clashing paths, lease every output,
    remove what killed runs left, run the body, and release the leases."""
    inputs, outputs = paths_of(cfg)
    check_distinct(inputs, outputs)
    if int(os.environ.get("RANK", "0") or 0) > 0:
        # a torchrun rank other than 0: the job is one writer, and rank 0 holds its leases
        # (every rank runs the same command; a second lease would refuse the job itself)
        yield
        return
    storage.remove_stale()
    held = []
    try:
        for flag, path in outputs.items():
            lease_ = lease(path)
            if lease_ is None:
                continue
            held.append(lease_)
            lease_.clean()
            if not storage.is_remote(path):
                folder = Path(path.removeprefix("file://")).parent
                storage.remove_stale(folder)
                remove_unheld_locks(folder)
        _HELD.extend(held)
        yield
    finally:
        for lease_ in reversed(held):
            with contextlib.suppress(ValueError):
                _HELD.remove(lease_)
            lease_.release()


# -- commit -----------------------------------------------------------------------------
class Commit:
    """Stage outputs with :meth:`table` / :meth:`json` / :meth:`text`; they are published
    together when the ``with`` block ends without an error, the last staged (the primary
    table) last. Use as ``with Commit() as c: c.json(report, r); c.table(t, out)``."""

    def __init__(self) -> None:
        self.staged: list[storage.Staged] = []

    def _stage(self, path: str | os.PathLike, data: bytes | None = None, table: pa.Table | None = None) -> None:
        staged = storage.Staged(path)
        self.staged.append(staged)
        with staged.open("wb") as fh:
            if table is not None:
                pq.write_table(table, fh)
            else:
                fh.write(data)
        if table is not None:  # the bytes on disk hold the table: a short write shows here
            rows = pq.read_metadata(staged.tmp).num_rows
            if rows != table.num_rows:
                raise OSError(f"{path}: staged {rows} of {table.num_rows} rows")

    def table(self, table: pa.Table, path: str | os.PathLike) -> None:
        self._stage(path, table=table)

    def json(self, obj: Any, path: str | os.PathLike) -> None:
        self._stage(path, data=storage.json_bytes(obj))  # NaN refused here, before anything is published

    def text(self, text: str, path: str | os.PathLike) -> None:
        self._stage(path, data=text.encode("utf-8"))

    def __enter__(self) -> "Commit":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.staged:
                self._publish()
        finally:
            for s in self.staged:
                s.discard()

    def _publish(self) -> None:
        for lease_ in _HELD:
            if hasattr(lease_, "check"):
                with storage.errors_named(lease_.target):
                    lease_.check()
        primary = self.staged[-1]
        _delete(primary.target)  # an old primary never stands beside new secondaries
        done = []
        try:
            for s in self.staged:
                s.publish()
                done.append(s)
        except BaseException:
            for s in done:
                with contextlib.suppress(Exception):
                    _delete(s.target)
            raise


def _delete(path: str) -> None:
    if storage.is_remote(path):
        with storage.errors_named(path):
            fs, inner = storage.filesystem(path)
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(inner)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.removeprefix("file://"))
