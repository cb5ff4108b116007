"""Shared test fixtures: one moto S3 server per session, a fresh bucket per test.

Tests that use S3 take ``s3_bucket`` (or ``s3_server``) and are marked ``@pytest.mark.s3``;
the mark is also added automatically to any test that requests those fixtures directly.
"""

import os
import uuid

import pytest

# Fake credentials: moto accepts any, and real ones must never be picked up by tests.
_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_SESSION_TOKEN": "testing-session-token",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def pytest_collection_modifyitems(items):
    for item in items:
        if {"s3_server", "s3_bucket"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.s3)


@pytest.fixture(scope="session")
def s3_server():
    """Start a moto S3 server on 127.0.0.1 (a free port) once; yield its endpoint URL.

    The process environment holds fake AWS credentials and region while the session runs, and
    loopback bypasses any HTTP proxy; both are restored at the end.
    """
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _S3_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """Create a fresh, uniquely named bucket; return ``(bucket_uri, storage_options)``.

    ``storage_options`` are for fsspec/s3fs (``client_kwargs.endpoint_url``). s3fs caches one
    filesystem instance per set of options for the whole session (a new one costs ~0.3 s);
    that is safe because every test has its own bucket, and its listing cache is dropped after
    the test. A test that needs a cold client can call ``s3fs.S3FileSystem.clear_instance_cache()``.
    """
    import boto3
    import s3fs

    bucket = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    options = {"client_kwargs": {"endpoint_url": s3_server}}
    yield f"s3://{bucket}", options
    s3fs.S3FileSystem(**options).invalidate_cache()
