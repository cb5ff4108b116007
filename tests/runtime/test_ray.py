"""RayRuntime on the session's loopback cluster: the same bits as LocalRuntime for any worker count
and completion order (KMeans, a 2-level TaxonomyEngine), workers on both nodes, large states
read from a Store, the worker pool."""

import random
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pool_worker import Counter

ray = pytest.importorskip("ray")

from mega_taxonomy.cluster import KMeans  # noqa: E402
from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask  # noqa: E402
from mega_taxonomy.io import BLOCK_ROWS, VectorSource  # noqa: E402
from mega_taxonomy.runtime import LocalRuntime  # noqa: E402
from mega_taxonomy.runtime.ray import RayRuntime  # noqa: E402
from mega_taxonomy.storage import Store  # noqa: E402
from mega_taxonomy.taxonomy import TaxonomyEngine  # noqa: E402

# Workers unpickle the helpers of this module and of pool_worker by value: they cannot import tests.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(sys.modules[Counter.__module__])

pytestmark = pytest.mark.timeout(240)
# Runtimes made by one test, beside the module's (whose 7 workers take 7 of the cluster's 8 slots)
BESIDE = dict(cpus_per_worker=0.25, progress=False, start_timeout=60)


class Jitter:
    """Wraps a task with a random sleep per block, so that blocks complete in random order."""

    def __init__(self, task, most=0.03):
        self.task, self.most = task, most

    def __call__(self, block, state, device):
        time.sleep(random.uniform(0, self.most))
        return self.task(block, state, device)


class JitteryRayRuntime(RayRuntime):
    def map_reduce(self, source, task, state, *, desc=None):
        return super().map_reduce(source, Jitter(task), state, desc=desc)


def write_parquet(folder, X, n_files):
    folder.mkdir()
    for i, part in enumerate(np.array_split(X, n_files)):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), X.shape[1])
        pq.write_table(pa.table({"emb": emb}), folder / f"part-{i:03d}.parquet", row_group_size=20_000)
    return str(folder)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """5 blocks of rows around 12 centers, in 7 parquet files (files and blocks do not line up)."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(12, 8)) * 6
    X = (centers[rng.integers(0, 12, 4 * BLOCK_ROWS + 1234)] + rng.normal(size=(4 * BLOCK_ROWS + 1234, 8)))
    return write_parquet(tmp_path_factory.mktemp("ray") / "blobs", X.astype(np.float32), 7)


@pytest.fixture(scope="module")
def runtimes(ray_cluster):
    """Ray runtimes of 1, 2 and 4 workers on the session cluster, closed at the end."""
    address, _ = ray_cluster
    made = {n: JitteryRayRuntime(address, num_workers=n, progress=False) for n in (1, 2, 4)}
    yield made
    for runtime in made.values():
        runtime.close()


def kmeans(runtime, data):
    return KMeans(12, max_iter=4, tol=0, random_state=0, device="cpu", runtime=runtime).fit(data)


@pytest.mark.parametrize("n_workers", [1, 2, 4])
def test_kmeans_is_bit_identical_to_local(blobs, runtimes, n_workers):
    local = kmeans(LocalRuntime("cpu", progress=False), blobs)
    remote = kmeans(runtimes[n_workers], blobs)
    np.testing.assert_array_equal(local.cluster_centers_, remote.cluster_centers_)
    np.testing.assert_array_equal(local.counts_, remote.counts_)
    assert local.inertia_ == remote.inertia_ and local.n_iter_ == remote.n_iter_


def test_workers_on_the_second_node(blobs, runtimes):
    """Workers on 127.0.0.3 read the files themselves; the result is the same."""
    pinned = RayRuntime(num_workers=2, ray_remote_args={"resources": {"node:127.0.0.3": 0.01}},
                        **{**BESIDE, "cpus_per_worker": 0})  # its slots may be taken by the module's workers
    try:
        assert set(ray.get([w.node.remote() for w in pinned._ensure_workers()])) == {"127.0.0.3"}
        expected = kmeans(runtimes[1], blobs).cluster_centers_
        np.testing.assert_array_equal(kmeans(pinned, blobs).cluster_centers_, expected)
    finally:
        pinned.close()


def test_in_memory_arrays_and_labels(runtimes):
    X = np.random.default_rng(2).normal(size=(2 * BLOCK_ROWS + 10, 4)).astype(np.float32)
    local = KMeans(5, max_iter=3, tol=0, random_state=1, device="cpu").fit(X)
    remote = KMeans(5, max_iter=3, tol=0, random_state=1, device="cpu", runtime=runtimes[2]).fit(X)
    np.testing.assert_array_equal(local.labels_, remote.labels_)
    np.testing.assert_array_equal(local.predict(X[:100]), remote.predict(X[:100]))


@pytest.mark.parametrize("reduce_blocks", [2, 3])
def test_any_reduce_blocks_gives_the_bits_of_local_block_by_block(blobs, runtimes, reduce_blocks):
    """Workers add whole items of units and the driver adds the items: the float sums are exact,
    so the grouping changes nothing."""
    source = VectorSource(blobs)
    state = LloydState(source.take(np.arange(12) * 1000).astype(np.float32))
    ours = RayRuntime(num_workers=2, reduce_blocks=reduce_blocks, **BESIDE)
    try:
        remote = ours.map_reduce(source, Jitter(LloydTask()), state)
    finally:
        ours.close()
    local = LocalRuntime("cpu", progress=False).map_reduce(source, LloydTask(), state)
    np.testing.assert_array_equal(local.sums, remote.sums)
    np.testing.assert_array_equal(local.inertia, remote.inertia)


def assert_same_tree(a, b):
    for la, lb in zip(a.tree_.levels, b.tree_.levels):
        for name in ("centroids", "parent", "counts", "child_offsets"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))


@pytest.mark.slow
@pytest.mark.parametrize("n_workers", [1, 2, 4])
def test_taxonomy_is_bit_identical_to_local(blobs, runtimes, tmp_path, n_workers):
    params = dict(n_levels=2, branching_factor=[4, 3], max_iter=3, tol=0, device="cpu", random_state=3, members=5)
    local = TaxonomyEngine(**params, storage_uri=str(tmp_path / "local"), runtime=LocalRuntime("cpu", progress=False))
    local.fit(blobs, output=str(tmp_path / "local-out"))
    remote = TaxonomyEngine(**params, storage_uri=str(tmp_path / "ray"), runtime=runtimes[n_workers])
    remote.fit(blobs, output=str(tmp_path / "ray-out"))
    assert_same_tree(local, remote)
    for a, b in [("local", "ray"), ("local-out", "ray-out")]:
        ours = pq.read_table(tmp_path / b / "assignments")
        assert ours.equals(pq.read_table(tmp_path / a / "assignments"))  # parts written by the workers
        assert Store(str(tmp_path / b)).manifest()["files"].keys() == Store(str(tmp_path / a)).manifest()["files"].keys()
    members = Store(str(tmp_path / "ray")).get_table("members/01.parquet")
    assert members.equals(Store(str(tmp_path / "local")).get_table("members/01.parquet"))
    np.testing.assert_array_equal(local.predict(blobs), remote.predict(blobs))


class StateProbe:
    """The type of the centroids a worker sees, per block."""

    def __call__(self, block, state, device):
        return (type(state.centroids).__name__,)


def test_large_states_are_read_from_the_store(blobs, ray_cluster, tmp_path):
    state_uri = str(tmp_path / "state")
    with RayRuntime(num_workers=2, state_uri=state_uri, broadcast_bytes=1024, **BESIDE) as runtime:
        source = VectorSource(blobs)
        big = LloydState(np.ones((64, 8), np.float32))  # 2 KiB: over the threshold
        assert set(runtime.map_reduce(source, StateProbe(), big)) == {"memmap"}
        assert set(runtime.map_reduce(source, StateProbe(), LloydState(np.ones((4, 8), np.float32)))) == {"ndarray"}
        assert Store(state_uri).listdir("passes") == []  # each pass's files are removed after it
        np.testing.assert_array_equal(kmeans(runtime, blobs).cluster_centers_,
                                      kmeans(LocalRuntime("cpu", progress=False), blobs).cluster_centers_)


class WhichWorker:
    """Each block's partial: the process that computed it."""

    def __call__(self, block, state, device):
        import os

        return (os.getpid(),)


class DeferredOdd:
    """Each block's partial: its index, odd blocks' as a Deferred (what a GPU task returns)."""

    def __call__(self, block, state, device):
        from mega_taxonomy.runtime import Deferred

        return Deferred(lambda: (block.index,)) if block.index % 2 else (block.index,)


def test_deferred_partials_are_finished_on_the_workers(blobs, runtimes):
    source = VectorSource(blobs)
    assert runtimes[2].map_reduce(source, DeferredOdd(), None) == tuple(range(source.n_blocks))


def test_every_worker_gets_an_item_before_any_gets_a_second(blobs, runtimes):
    """Two items for two workers: one each (items are queued two deep per worker, but the first
    round goes one per worker), in the first pass and in the next, where items go back to their
    worker."""
    source = VectorSource(blobs)
    runtime = runtimes[2]
    per_item = runtime.dispatch_units
    try:
        runtime.dispatch_units = 3  # 5 blocks: items of blocks 0-2 and 3-4
        for _ in range(2):
            pids = runtime.map_reduce(source, WhichWorker(), None)
            assert pids[0] != pids[3] and set(pids) == set(runtime.worker_pids())
    finally:
        runtime.dispatch_units = per_item


def test_worker_pool_keeps_state_per_worker(runtimes):
    with RayRuntime(num_workers=1, **BESIDE) as runtime, runtime.pool(Counter, n_workers=3) as pool:
        assert pool.size == 3
        assert pool.broadcast("bump", 1) == [(0, 1), (1, 1), (2, 1)]
        assert pool.call(1, "bump", 5) == (1, 6)
        assert len(set(pool.pids())) == 3


def test_no_cluster_is_started_implicitly(ray_cluster, monkeypatch):
    # ray_cluster: this process is connected to the session's cluster, which local() must refuse
    from mega_taxonomy.errors import ConfigError

    with pytest.raises(ConfigError, match="already initialized"):
        RayRuntime.local(num_cpus=1)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(ConnectionError("none")))
    with pytest.raises(ConfigError, match="no Ray cluster"):
        RayRuntime(address="127.0.0.9:1")
