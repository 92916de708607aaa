"""Paths and URIs: local files, ``s3://`` (s3fs) and anything else fsspec knows.

Every writer in p3 goes through :func:`atomic_write` or :func:`write_table`, so a
crash never leaves a half-written output under its final name: local files are
written to a temp name in the same folder and renamed; remote objects are written
locally first and uploaded in one PUT (an object store has no partial objects).

S3 settings come from the usual places (``AWS_ACCESS_KEY_ID`` …) plus
``P3_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL`` for MinIO or any S3-compatible server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def is_remote(path: str | os.PathLike) -> bool:
    """True for URIs with a scheme other than file:// (s3://, gs://, memory://, …)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def storage_options(path: str | os.PathLike) -> dict[str, Any]:
    """fsspec options for ``path``: the S3 endpoint override when one is set."""
    if str(path).startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("P3_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def filesystem(path: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``path`` and the path inside it."""
    s = str(path)
    fs, inner = fsspec.core.url_to_fs(s, **storage_options(s))
    return fs, inner


def exists(path: str | os.PathLike) -> bool:
    fs, inner = filesystem(path)
    return fs.exists(inner)


def open_file(path: str | os.PathLike, mode: str = "rb"):
    """Open ``path`` for reading (any fsspec URI). Use atomic_write for writing."""
    fs, inner = filesystem(path)
    return fs.open(inner, mode)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Write ``path`` all-or-nothing; yields an open file.

    Local: temp file beside the target, fsync, rename. Remote: temp file, then upload.
    On an exception nothing exists under ``path`` that was not there before.
    """
    s = str(path)
    if is_remote(s):
        with tempfile.TemporaryDirectory(prefix="p3-upload-") as tmpdir:
            tmp = os.path.join(tmpdir, "part")
            with open(tmp, mode) as fh:
                yield fh
            fs, inner = filesystem(s)
            fs.put_file(tmp, inner)
        return
    target = Path(s.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates 0600; give the output the mode an ordinary open() would (umask).
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read a Parquet table from a local path or URI."""
    with open_file(path, "rb") as fh:
        return pq.read_table(fh)


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a Parquet table atomically."""
    with atomic_write(path, "wb") as fh:
        pq.write_table(table, fh)


def read_json(path: str | os.PathLike) -> Any:
    with open_file(path, "rb") as fh:
        return json.loads(fh.read().decode("utf-8"))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (indented, UTF-8, NaN refused)."""
    data = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=str)
    with atomic_write(path, "wb") as fh:
        fh.write(data.encode("utf-8") + b"\n")


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
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(local_dir, tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        return
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
    fs, inner = filesystem(s)
    with tempfile.TemporaryDirectory(prefix="p3-download-") as tmpdir:
        fs.get(inner.rstrip("/") + "/", tmpdir + "/", recursive=True)
        yield tmpdir
