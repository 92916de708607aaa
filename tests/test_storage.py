"""p3.storage: all-or-nothing writes, and the same calls against a real S3 server (moto)."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from p3 import storage


def _table() -> pa.Table:
    return pa.table({"id": ["a", "b", "c"], "x": [1.0, 2.5, -3.0]})


def test_atomic_write_leaves_nothing_on_exception(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert os.listdir(target.parent) == []  # no temp file left beside it


def test_atomic_write_keeps_the_old_file_on_exception(tmp_path):
    target = tmp_path / "out.txt"
    storage.write_text("old", target)
    with pytest.raises(RuntimeError):
        with storage.atomic_write(target) as fh:
            fh.write(b"new but unfinished")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_local_table_and_json_round_trip(tmp_path):
    storage.write_table(_table(), tmp_path / "t.parquet")
    assert storage.read_table(tmp_path / "t.parquet").equals(_table())
    storage.write_json({"a": [1, 2], "b": "é"}, f"file://{tmp_path}/j.json")
    assert storage.read_json(tmp_path / "j.json") == {"a": [1, 2], "b": "é"}


def test_s3_table_json_text_round_trip(s3_tmp):
    storage.write_table(_table(), f"{s3_tmp}/t.parquet")
    assert storage.exists(f"{s3_tmp}/t.parquet")
    assert storage.read_table(f"{s3_tmp}/t.parquet").equals(_table())
    storage.write_json({"accuracy": 0.5}, f"{s3_tmp}/m.json")
    assert storage.read_json(f"{s3_tmp}/m.json") == {"accuracy": 0.5}
    storage.write_text("# report\n", f"{s3_tmp}/r.md")
    with storage.open_file(f"{s3_tmp}/r.md", "rb") as fh:
        assert fh.read() == b"# report\n"


def test_s3_atomic_write_uploads_nothing_on_exception(s3_tmp):
    with pytest.raises(RuntimeError):
        with storage.atomic_write(f"{s3_tmp}/never.parquet") as fh:
            fh.write(b"partial")
            raise RuntimeError("boom")
    assert not storage.exists(f"{s3_tmp}/never.parquet")


def _model_dir(root):
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"n_layer": 2}')
    (root / "weights.bin").write_bytes(bytes(range(256)) * 40)
    (root / "sub" / "tokenizer.json").write_text("{}")
    return root


def _files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_upload_dir_and_local_dir_round_trip_on_s3(tmp_path, s3_tmp):
    src = _model_dir(tmp_path / "model")
    storage.upload_dir(src, f"{s3_tmp}/model")
    with storage.local_dir(f"{s3_tmp}/model") as local:
        assert local != str(src)
        assert _files(local) == _files(src)
    assert not os.path.exists(local)  # the downloaded copy is temporary


def test_upload_dir_local_replaces_whole_folder(tmp_path):
    src = _model_dir(tmp_path / "model")
    target = tmp_path / "out" / "model"
    target.mkdir(parents=True)
    (target / "stale.bin").write_bytes(b"old")
    storage.upload_dir(src, str(target))
    assert _files(target) == _files(src)
    with storage.local_dir(f"file://{target}") as local:
        assert local == str(target)
    with storage.local_dir("org/some-model") as name:  # an HF id passes through unchanged
        assert name == "org/some-model"


def test_storage_options_follow_the_endpoint_env(s3_server):
    assert storage.storage_options("s3://b/k")["client_kwargs"] == {"endpoint_url": s3_server.endpoint}
    assert storage.storage_options("/tmp/x") == {}
    assert storage.is_remote("s3://b/k") and not storage.is_remote("file:///tmp/x")


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path):
    # Outputs are read by other users (a pod's uid, a web server): not mkstemp's 0600.
    import os

    old = os.umask(0o022)
    try:
        storage.write_text("x", str(tmp_path / "out.txt"))
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644
