"""Shared test fixtures: one moto S3 server per session, a fresh bucket per test; one Ray
cluster on loopback per session. Without a GPU, the Triton kernels run in Triton's CPU
interpreter (``interpreting.py``); ``TRITON_LAUNCHES=file`` writes the launches they made to
that file when pytest finishes (``triton_aot/``).

Tests that use S3 take ``s3_bucket`` (or ``s3_server``) and are marked ``@pytest.mark.s3``;
the mark is also added automatically to any test that requests those fixtures directly.
"""

import os
import secrets
import uuid

import pytest
from interpreting import interpret_without_gpu

interpret_without_gpu()  # before any test module imports triton

# Ray reads its authentication mode when imported, and test modules import it: the session's
# cluster (ray_cluster) and its drivers all use a token, before any import of ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# The session's own token, in the environment of this process and so of every Ray node, worker
# and driver it starts. `ray start` does not write ~/.ray/auth_token; without a token found in
# RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or that file (a fresh machine, an empty HOME), Ray refuses
# to start or join a cluster with AuthenticationError. Ray caches the token it finds on first
# use, hence here, before anything imports ray.
if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)

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


def pytest_sessionfinish(session):
    if os.environ.get("TRITON_LAUNCHES"):
        from triton_aot import launches

        launches.write(os.environ["TRITON_LAUNCHES"])


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


def _free_port(host):
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A two-node Ray cluster on loopback, once per session: a head on 127.0.0.2 (6 CPU slots) and
    a second node on 127.0.0.3 (2 slots); this process is connected to it as a driver. Yields the
    head's address and the session's temporary directory (for logs).

    Both nodes run as ``ray start --block`` children of this process: terminating them stops
    every process they started, and nothing else. Workers import this tree's mega_taxonomy.
    """
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    ray = pytest.importorskip("ray")
    import mega_taxonomy

    ray_exe = str(Path(sys.executable).parent / "ray")
    temp_dir = f"/tmp/mt-ray-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths must fit 107 bytes
    port = _free_port("127.0.0.2")
    address = f"127.0.0.2:{port}"
    src = str(Path(mega_taxonomy.__file__).resolve().parents[1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
        common = ["--block", "--disable-usage-stats", "--object-store-memory=1000000000"]
        nodes = [subprocess.Popen(
            [ray_exe, "start", "--head", "--node-ip-address=127.0.0.2", f"--port={port}", "--num-cpus=6",
             "--include-dashboard=false", f"--ray-client-server-port={_free_port('127.0.0.2')}",
             f"--temp-dir={temp_dir}", *common],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    ray.init(address=address, _node_ip_address="127.0.0.2", log_to_driver=False)
                    break
                except (ConnectionError, RuntimeError, ValueError):
                    if time.monotonic() > deadline or nodes[0].poll() is not None:
                        raise
                    time.sleep(0.5)
            nodes.append(subprocess.Popen(
                [ray_exe, "start", f"--address={address}", "--node-ip-address=127.0.0.3", "--num-cpus=2", *common],
                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            while len([n for n in ray.nodes() if n["Alive"]]) < 2:
                if time.monotonic() > deadline or nodes[1].poll() is not None:
                    raise RuntimeError("the second Ray node did not join")
                time.sleep(0.5)
            yield address, temp_dir
        finally:
            ray.shutdown()
            for node in reversed(nodes):
                node.send_signal(signal.SIGTERM)
                try:
                    node.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(node.pid, signal.SIGKILL)
                    node.wait(10)
            shutil.rmtree(temp_dir, ignore_errors=True)
