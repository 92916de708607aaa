"""S3 fixtures (owned by the data/storage area).

``s3_server`` starts a real S3-compatible HTTP server (moto's server mode) on loopback
once per test session and points p3's storage at it through the environment
(``P3_S3_ENDPOINT_URL`` plus dummy credentials), so every ``s3://`` path in a test goes
through s3fs and botocore over HTTP exactly as it would against MinIO. ``s3_tmp`` gives
each test its own key prefix in the bucket, the S3 counterpart of ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest

__all__ = ["S3Server", "s3_server", "s3_tmp"]

BUCKET = "p3-test"


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running S3 server: its HTTP endpoint and a bucket created for the session."""

    endpoint: str
    bucket: str

    def uri(self, key: str = "") -> str:
        """``s3://bucket/key`` for a key in the session bucket."""
        return f"s3://{self.bucket}/{key.lstrip('/')}"


def _clear_s3fs_cache() -> None:
    # s3fs caches filesystem instances (and their credentials and listings) per set of
    # options; a stale one from before or after the server would point at the wrong place.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (free port) with one bucket; env restored at teardown."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # A session fixture cannot use the function-scoped monkeypatch; this one undoes itself.
    env = pytest.MonkeyPatch()
    try:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("P3_S3_ENDPOINT_URL", endpoint)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        # Loopback must never go through a proxy a CI machine may have configured.
        for name in ("NO_PROXY", "no_proxy"):
            env.setenv(name, ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get(name)])))
        _clear_s3fs_cache()
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint=endpoint, bucket=BUCKET)
    finally:
        _clear_s3fs_cache()
        env.undo()
        server.stop()


@pytest.fixture
def s3_tmp(s3_server: S3Server, request) -> str:
    """A fresh ``s3://bucket/<test>-<uuid>`` prefix (no trailing slash) for one test."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return s3_server.uri(f"{name}-{uuid.uuid4().hex[:8]}")
