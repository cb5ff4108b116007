"""RayRuntime under faults: a worker process killed mid-pass (its blocks run again elsewhere, each
counted once), transient errors retried inside workers, task errors raised with their own type,
and a driver killed mid-fit that resumes from the Store to the same tree."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask  # noqa: E402
from mega_taxonomy.errors import DataError  # noqa: E402
from mega_taxonomy.io import BLOCK_ROWS, VectorSource  # noqa: E402
from mega_taxonomy.runtime import LocalRuntime  # noqa: E402
from mega_taxonomy.runtime.ray import RayRuntime  # noqa: E402
from mega_taxonomy.taxonomy import TaxonomyEngine  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(240)


class Slow:
    def __init__(self, task, seconds):
        self.task, self.seconds = task, seconds

    def __call__(self, block, state, device):
        time.sleep(self.seconds)
        return self.task(block, state, device)


class FailingFirst:
    """Raises ``error`` the first ``n`` times block 0 is computed (counted in files: every worker sees them)."""

    def __init__(self, task, folder, n, error):
        self.task, self.folder, self.n, self.error = task, folder, n, error

    def __call__(self, block, state, device):
        if block.index == 0:
            seen = len(os.listdir(self.folder))
            if seen < self.n:
                Path(self.folder, f"failure-{seen}").touch()
                raise self.error
        return self.task(block, state, device)


@pytest.fixture(scope="module")
def data():
    X = np.random.default_rng(4).normal(size=(8 * BLOCK_ROWS - 100, 3)).astype(np.float32)
    source = VectorSource(X)
    return source, LloydState(X[:7].copy())


@pytest.fixture(scope="module")
def expected(data):
    source, state = data
    return LocalRuntime("cpu", progress=False).map_reduce(source, LloydTask(), state)


def assert_same(a, b):
    for name in ("counts", "inertia", "sums"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_a_killed_worker_is_replaced_and_its_blocks_counted_once(ray_cluster, data, expected):
    source, state = data
    with RayRuntime(num_workers=2, progress=False) as runtime:
        victim = runtime.worker_pids()[0]
        killer = threading.Timer(0.6, os.kill, (victim, signal.SIGKILL))
        killer.start()
        try:
            partial = runtime.map_reduce(source, Slow(LloydTask(), 0.25), state)
        finally:
            killer.cancel()
        assert runtime.replaced == 1
        assert victim not in runtime.worker_pids()
        assert partial.counts.sum() == len(source)
        assert_same(expected, partial)
        # the pool of workers is whole again for the next pass
        assert_same(expected, runtime.map_reduce(source, LloydTask(), state))


def test_transient_errors_are_retried_in_the_worker(ray_cluster, data, expected, tmp_path, monkeypatch):
    source, state = data
    with RayRuntime(num_workers=2, progress=False) as runtime:
        task = FailingFirst(LloydTask(), str(tmp_path), 2, ConnectionError("connection reset by peer"))
        assert_same(expected, runtime.map_reduce(source, task, state))
        assert runtime.retries == 2 and runtime.replaced == 0


def test_task_errors_keep_their_type(ray_cluster, data, tmp_path):
    source, state = data
    with RayRuntime(num_workers=2, progress=False) as runtime:
        task = FailingFirst(LloydTask(), str(tmp_path), 1, DataError("bad row", file="x.parquet", row=3))
        with pytest.raises(DataError, match="x.parquet, row 3: bad row"):
            runtime.map_reduce(source, task, state)
        assert runtime.retries == 0


# A driver attached to the session's cluster fits, and kills itself with SIGKILL once the checkpoint
# of (level, iteration) is committed; its actors die with it (Ray ends the actors of a dead owner).
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from mega_taxonomy.runtime.ray import RayRuntime
    from mega_taxonomy.taxonomy import TaxonomyEngine
    data, storage, address, level, iteration, params = sys.argv[1:7]
    runtime = RayRuntime(address, num_workers=2, node_ip_address="127.0.0.2", progress=False)
    target = (int(level), int(iteration))
    kill = lambda e: os.kill(os.getpid(), signal.SIGKILL) if (e["level"], e["iteration"]) == target else None
    TaxonomyEngine(**json.loads(params), storage_uri=storage, runtime=runtime).fit(data, callback=kill)
""")
PARAMS = dict(n_levels=2, branching_factor=[4, 3], max_iter=4, tol=0, device="cpu", random_state=7, members=5)


def assert_same_tree(a, b):
    for la, lb in zip(a.tree_.levels, b.tree_.levels):
        for name in ("centroids", "parent", "counts", "child_offsets"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))


@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_same_tree(ray_cluster, tmp_path):
    address, _ = ray_cluster
    X = np.random.default_rng(5).normal(size=(2 * BLOCK_ROWS + 77, 4)).astype(np.float32)
    data = str(tmp_path / "x.npy")
    np.save(data, X)
    reference = TaxonomyEngine(**PARAMS, storage_uri=str(tmp_path / "ref"),
                               runtime=LocalRuntime("cpu", progress=False)).fit(data)
    storage = str(tmp_path / "tax")
    child = subprocess.run([sys.executable, "-c", CHILD, data, storage, address, "1", "2", json.dumps(PARAMS)],
                           capture_output=True, text=True, timeout=180)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    with RayRuntime(num_workers=2, progress=False) as runtime:
        events = []
        resumed = TaxonomyEngine(**PARAMS, storage_uri=storage, runtime=runtime).fit(data, callback=events.append)
    assert events[0] == {"event": "iteration", "level": 1, "iteration": 3, "round": 0}  # resumed, not restarted
    assert_same_tree(reference, resumed)
    ours = pq.read_table(os.path.join(storage, "assignments")).sort_by("id")
    assert ours.equals(pq.read_table(os.path.join(tmp_path / "ref", "assignments")).sort_by("id"))
