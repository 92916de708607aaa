"""Paths and URIs: local files, ``s3://`` (s3fs) and anything else fsspec knows.

Every writer in p3 goes through :func:`atomic_write` or :func:`write_table`, so a
crash never leaves a half-written output under its final name: local files are
written to a temp name in the same folder and renamed; remote objects are written
locally first and uploaded in one PUT (an object store has no partial objects).

S3 settings come from the usual places (``AWS_ACCESS_KEY_ID`` …) plus
``P3_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL`` for MinIO or any S3-compatible server.

Every object-store call has the timeouts and bounded retries of :func:`s3_limits`
(``P3_S3_CONNECT_TIMEOUT``, ``P3_S3_READ_TIMEOUT`` seconds, ``P3_S3_ATTEMPTS`` tries with
botocore's exponential backoff), so a stalled or dead server ends a step in bounded
time with a :class:`StorageError` naming the URI. Temp files carry a recognisable name
with the writer's pid (``.<name>.p3-<pid>-….tmp`` beside a local output,
``p3-upload-<pid>-…`` / ``p3-download-<pid>-…`` in the system temp folder), are removed
on every exit path Python sees, and :func:`remove_stale` removes those a killed run left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def is_remote(path: str | os.PathLike) -> bool:
    """True for URIs with a scheme other than file:// (s3://, gs://, memory://, …)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


class StorageError(OSError):
    """An object store or file system failed (unreachable, stalled, refused, full): names the URI."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


# env name -> (default, lowest allowed): seconds to connect, seconds to wait for a reply, tries
S3_LIMITS = {"P3_S3_CONNECT_TIMEOUT": (10.0, 0.1), "P3_S3_READ_TIMEOUT": (60.0, 0.1), "P3_S3_ATTEMPTS": (3, 1)}


def env_number(name: str, default: float, low: float) -> float:
    """A finite number ≥ ``low`` from the environment variable ``name`` (int when ``default`` is)."""
    raw = os.environ.get(name, "")
    try:
        value = type(default)(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not a number") from None
    if not low <= value < float("inf"):
        raise ValueError(f"{name}={raw!r}: must be a finite number ≥ {low}")
    return value


def s3_limits() -> dict[str, float]:
    """The object-store timeouts and tries, from the environment (defaults in S3_LIMITS)."""
    return {name: env_number(name, default, low) for name, (default, low) in S3_LIMITS.items()}


def storage_options(path: str | os.PathLike) -> dict[str, Any]:
    """fsspec options for ``path``: for S3, the endpoint override and the limits of s3_limits()."""
    if not str(path).startswith(("s3://", "s3a://")):
        return {}
    lim = s3_limits()
    opts: dict[str, Any] = {"config_kwargs": {
        "connect_timeout": lim["P3_S3_CONNECT_TIMEOUT"], "read_timeout": lim["P3_S3_READ_TIMEOUT"],
        # botocore's "standard" mode: exponential backoff with jitter, timeouts and 5xx retried
        "retries": {"max_attempts": int(lim["P3_S3_ATTEMPTS"]), "mode": "standard"},
    }}
    endpoint = os.environ.get("P3_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def filesystem(path: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``path`` and the path inside it."""
    s = str(path)
    fs, inner = fsspec.core.url_to_fs(s, **storage_options(s))
    if s.startswith(("s3://", "s3a://")):
        # s3fs retries each call 5 times on top of botocore's tries (25 read timeouts on a
        # stalled server); botocore's bounded retries are the only ones.
        fs.retries = 1
        _send_bodies_at_once(fs.s3)
    return fs, inner


def _send_bodies_at_once(client: Any) -> None:
    """Drop botocore's ``Expect: 100-continue`` from PUTs: aiohttp waits for the server's
    "100 Continue" with no timeout, so one stalled server hung an upload forever. Sent at
    once, the body's reply is bounded by the read timeout like every other call."""
    if getattr(client, "_p3_no_expect", False):
        return

    def drop_expect(request: Any, **kwargs: Any) -> None:
        for name in [h for h in request.headers if h.lower() == "expect"]:
            del request.headers[name]

    client.meta.events.register("before-send.s3", drop_expect)
    client._p3_no_expect = True


@contextlib.contextmanager
def errors_named(uri: str | os.PathLike) -> Iterator[None]:
    """Turn a remote store's failure (connection refused, timeout, denied) into one
    StorageError naming ``uri``; a missing file stays FileNotFoundError."""
    if not is_remote(uri):
        yield
        return
    try:
        yield
    except (FileNotFoundError, StorageError):
        raise
    except Exception as exc:
        if not _from_the_store(exc):
            raise  # the data or the caller, not the store
        raise StorageError(f"{uri}: object store call failed: {_short(exc)}") from exc


_STORE_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "urllib3")


def _from_the_store(exc: BaseException) -> bool:
    package = type(exc).__module__.split(".")[0]
    if package == "pyarrow":
        return False
    return isinstance(exc, (OSError, TimeoutError)) or package in _STORE_MODULES


def _short(exc: BaseException) -> str:
    """The innermost cause's message on one line (botocore chains three or four)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())[:300]


def exists(path: str | os.PathLike) -> bool:
    with errors_named(path):
        fs, inner = filesystem(path)
        return fs.exists(inner)


def open_file(path: str | os.PathLike, mode: str = "rb"):
    """Open ``path`` for reading (any fsspec URI). Use atomic_write for writing."""
    with errors_named(path):
        fs, inner = filesystem(path)
        return fs.open(inner, mode)


TEMP_PREFIX = "p3-"  # system temp folder: p3-upload-<owner>-…, p3-download-<owner>-…
# <owner> = pid + "h" + a hash of the host name: a pid is only judged (alive or not) on its
# own host, since a shared folder (NFS, a volume two containers mount) sees other hosts' files
_STALE_NAMES = (
    re.compile(r"^p3-(?:upload|download)-(\d+)h([0-9a-f]{6})-"),  # staging folders (system temp)
    re.compile(r"^\..+\.p3-(\d+)h([0-9a-f]{6})-[^.]+\.tmp$"),  # a local output's temp file (or folder)
    re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$"),  # written by p3 before the owner was in the name
)
STALE_AGE_S = 24 * 3600


def owner_tag() -> str:
    """This process, as temp names carry it: ``<pid>h<host hash>``."""
    return f"{os.getpid()}h{_host_hash()}"


def _host_hash() -> str:
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def temp_name(target: str | os.PathLike) -> str:
    """A temp path beside ``target``: hidden, with this process's pid, ends in .tmp."""
    t = Path(str(target))
    return str(t.with_name(f".{t.name}.p3-{owner_tag()}-{os.urandom(4).hex()}.tmp"))


def remove_stale(folder: str | os.PathLike | None = None, age_s: float = STALE_AGE_S) -> list[str]:
    """Remove temp files and staging folders that killed p3 runs left in ``folder`` (default:
    the system temp folder): those with p3's names whose writer is gone or that are older
    than ``age_s``. Returns what was removed."""
    folder = str(folder or tempfile.gettempdir())
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        match = next((m for m in (rx.match(name) for rx in _STALE_NAMES) if m), None)
        if match is None:
            continue
        path = os.path.join(folder, name)
        try:
            old = now - os.lstat(path).st_mtime > age_s
        except FileNotFoundError:
            continue
        here = bool(match.groups()) and match.group(2) == _host_hash()
        pid = int(match.group(1)) if here else None
        if old or (pid is not None and pid != os.getpid() and not _alive(pid)):
            _remove(path)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class Staged:
    """One output written under a temp name: :meth:`open` it, then :meth:`publish` it under
    its own name (a rename locally, one upload remotely) or :meth:`discard` it."""

    def __init__(self, path: str | os.PathLike):
        self.target = str(path)
        self.remote = is_remote(self.target)
        if self.remote:
            self._dir = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}upload-{owner_tag()}-")
            self.tmp = os.path.join(self._dir, "part")
        else:
            self._dir = None
            local = Path(self.target.removeprefix("file://"))
            try:
                local.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"{self.target}: cannot create its folder: {exc.strerror or exc}", exc.errno) from exc
            self.local_target = str(local)
            self.tmp = temp_name(local)

    @contextlib.contextmanager
    def open(self, mode: str = "wb") -> Iterator[Any]:
        try:
            with open(self.tmp, mode) as fh:
                if not self.remote:
                    # give the output the mode an ordinary open() would (umask), not a temp file's
                    os.chmod(self.tmp, 0o666 & ~_umask())
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # read-only or full location: name the output, not the temp file
            where = "" if not self.remote else f" (staging in {os.path.dirname(self.tmp)})"
            raise StorageError(f"{self.target}: cannot write{where}: {exc.strerror or exc}", exc.errno) from exc

    def publish(self) -> None:
        if self.remote:
            upload_file(self.tmp, self.target)
            return
        try:
            os.replace(self.tmp, self.local_target)
        except OSError as exc:
            raise StorageError(f"{self.target}: cannot write: {exc.strerror or exc}", exc.errno) from exc

    def discard(self) -> None:
        """Remove the temp file (and staging folder); safe to call twice and after publish."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Write ``path`` all-or-nothing; yields an open file.

    Local: temp file beside the target, fsync, rename. Remote: temp file, then upload.
    On an exception nothing exists under ``path`` that was not there before.
    """
    staged = Staged(path)
    try:
        with staged.open(mode) as fh:
            yield fh
        staged.publish()
    finally:
        staged.discard()


def part_size() -> int:
    """Multipart upload part size in bytes (``P3_S3_PART_MB``, default 50, S3's minimum 5)."""
    return env_number("P3_S3_PART_MB", 50, 5) * 2**20


def upload_file(local: str, uri: str) -> None:
    """Upload one local file to ``uri`` (one PUT, or a multipart upload that is aborted on
    any failure, including an interrupt, so the bucket keeps no unfinished parts)."""
    with errors_named(uri):
        fs, inner = filesystem(uri)
        try:
            fs.put_file(local, inner, chunksize=part_size())
        except BaseException:
            with contextlib.suppress(Exception):
                abort_uploads(uri)
            raise


def abort_uploads(uri: str) -> int:
    """Abort the unfinished multipart uploads of exactly the object ``uri``; return how many."""
    if not str(uri).startswith(("s3://", "s3a://")):
        return 0
    fs, inner = filesystem(uri)
    bucket, key, _ = fs.split_path(inner)
    listing = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
    mine = [u for u in listing.get("Uploads", []) if u["Key"] == key]
    for u in mine:
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=u["UploadId"])
    return len(mine)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read a Parquet table from a local path or URI."""
    with errors_named(path), open_file(path, "rb") as fh:
        return pq.read_table(fh)


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a Parquet table atomically."""
    with atomic_write(path, "wb") as fh:
        pq.write_table(table, fh)


def read_json(path: str | os.PathLike) -> Any:
    with errors_named(path), open_file(path, "rb") as fh:
        return json.loads(fh.read().decode("utf-8"))


def json_bytes(obj: Any) -> bytes:
    """JSON as p3 writes it: indented, UTF-8, NaN and inf refused."""
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=str).encode("utf-8") + b"\n"


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (indented, UTF-8, NaN refused)."""
    data = json_bytes(obj)
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(text.encode("utf-8"))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy one file (local or URI) to ``dst`` (local or URI), atomically."""
    with open_file(src, "rb") as fin, atomic_write(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def upload_dir(local_dir: str | os.PathLike, uri: str) -> None:
    """Copy a local folder (a model dir) to ``uri``; local targets are replaced whole."""
    if not is_remote(uri):
        target = Path(uri.removeprefix("file://"))
        tmp = temp_name(target)
        try:
            shutil.copytree(local_dir, tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with errors_named(uri):
        fs, inner = filesystem(uri)
        fs.put(str(local_dir).rstrip("/") + "/", inner.rstrip("/") + "/", recursive=True)


@contextlib.contextmanager
def local_dir(uri: str | os.PathLike) -> Iterator[str]:
    """A local folder holding ``uri``'s files: the folder itself, or a downloaded copy.

    Names that are neither a local path nor a URI (e.g. a Hugging Face model id) are
    yielded unchanged, so callers can pass them straight to ``from_pretrained``.
    """
    s = str(uri)
    if not is_remote(s):
        yield s.removeprefix("file://")
        return
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}download-{owner_tag()}-") as tmpdir:
        with errors_named(s):
            fs, inner = filesystem(s)
            fs.get(inner.rstrip("/") + "/", tmpdir + "/", recursive=True)
        yield tmpdir
