"""Collective drivers (RayRuntime(collective=True)): Lloyd's loop run on every worker in lockstep
(gloo between CPU workers on the loopback cluster) gives LocalRuntime's bits for any worker
count; a worker killed mid-loop restarts the group to the same result; errors keep their type.
Also the pickling that moves device tensors apart (io/transfer.py)."""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

from mega_taxonomy.cluster import KMeans
from mega_taxonomy.cluster.lloyd_pass import LloydPartial
from mega_taxonomy.errors import DataError
from mega_taxonomy.io import BLOCK_ROWS, VectorSource
from mega_taxonomy.runtime import LocalRuntime
from mega_taxonomy.runtime.collective import _pack, _unpack, share
from mega_taxonomy.io.transfer import join_tensors, split_tensors, to_host

pytestmark = pytest.mark.timeout(240)
BESIDE = {"cpus_per_worker": 0.25, "progress": False, "start_timeout": 60, "collective": True, "collective_timeout": 60}


def test_shares_cover_the_units_once_in_order():
    for n_units in range(9):
        for world in range(1, 5):
            covered = [u for rank in range(world) for u in share(n_units, rank, world)]
            assert covered == list(range(n_units))


def test_device_tensors_are_split_out_and_put_back():
    """``meta`` tensors stand in for CUDA ones: any tensor not on the CPU is taken out."""
    sums = torch.empty(3, 2, dtype=torch.float64, device="meta")
    partial = LloydPartial(np.arange(3), np.ones(3), sums=sums)
    packed, tensors = split_tensors(partial)
    assert len(tensors) == 1 and tensors[0] is sums
    back = join_tensors(packed, tensors)
    assert back.sums is sums
    np.testing.assert_array_equal(back.counts, partial.counts)
    cpu = LloydPartial(np.arange(3), np.ones(3), sums=torch.ones(3, 2))
    assert to_host(cpu) is cpu  # nothing to move


def test_packed_tensors_come_back_as_they_were():
    tensors = [torch.arange(7, dtype=torch.float64).reshape(7, 1), torch.tensor(True),
               torch.ones(3, dtype=torch.bfloat16), torch.empty(0, 4, dtype=torch.int64),
               torch.arange(5, dtype=torch.int16), torch.tensor(2.5)]
    buffer, specs = _pack(tensors, "cpu")
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1
    back = _unpack(buffer, specs)
    for original, copy in zip(tensors, back, strict=True):
        assert copy.dtype == original.dtype and copy.shape == original.shape
        assert torch.equal(copy, original)
    assert _pack([], "cpu")[0].numel() == 0


GATHER_BYTES = """
import datetime, os, sys
import torch.distributed as dist
from mega_taxonomy.runtime.collective import all_gather_bytes
rank = int(sys.argv[1])
os.environ["GLOO_SOCKET_IFNAME"] = "lo"
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[2]}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
capacity = 4096
for sizes in ((10, 5000), (3, 7), (0, 9000), (8200, 1)):
    data = bytes([rank + 1]) * sizes[rank]
    got, capacity = all_gather_bytes(data, 2, capacity)
    assert got == [bytes([1]) * sizes[0], bytes([2]) * sizes[1]], (sizes, [len(g) for g in got])
    print(capacity, flush=True)
dist.destroy_process_group()
"""


def test_bytes_of_every_rank_gathered_in_one_collective_or_two(tmp_path):
    """all_gather_bytes between two processes over gloo: each gets both ranks' bytes, longer
    than the room or not; both take the same room for the next call, as long as the longest."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "gather.py"
    script.write_text(GATHER_BYTES)
    ranks = [subprocess.Popen([sys.executable, str(script), str(rank), str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0] == "8192\n4096\n16384\n16384\n"


class SlowSource(VectorSource):
    """Blocks that take a while each, so that a worker can be killed mid-loop."""

    def blocks(self, start=0, stop=None):
        for block in super().blocks(start, stop):
            time.sleep(0.05)
            yield block


@pytest.fixture(scope="module")
def ray_mod(ray_cluster):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    return ray


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(10, 6)) * 5
    return (centers[rng.integers(0, 10, 5 * BLOCK_ROWS + 321)] + rng.normal(size=(5 * BLOCK_ROWS + 321, 6))).astype(
        np.float32)


def kmeans(runtime, data, max_iter=4):
    return KMeans(10, max_iter=max_iter, tol=0, random_state=0, device="cpu", runtime=runtime).fit(data)


def assert_same(a, b):
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.counts_, b.counts_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_


# 1, 2 and 3 ranks (2 workers with one block a unit: test_collective_taxonomy_is_bit_identical_to_local)
@pytest.mark.parametrize("n_workers,reduce_blocks", [(1, 1), (2, 2), (3, 4)])
def test_collective_kmeans_is_bit_identical_to_local(ray_mod, X, n_workers, reduce_blocks):
    """The float sums are exact (``ops.exact``), all-reduced across the ranks: LocalRuntime's bits
    for any worker count and any ``reduce_blocks`` (3 workers, 2 units of 4 blocks: one rank
    without any)."""
    from mega_taxonomy.runtime.ray import RayRuntime

    local = kmeans(LocalRuntime("cpu", progress=False), X)
    runtime = RayRuntime(num_workers=n_workers, reduce_blocks=reduce_blocks, **BESIDE)
    try:
        remote = kmeans(runtime, X)
        assert_same(local, remote)
        np.testing.assert_array_equal(local.labels_, remote.labels_)
        assert_same(kmeans(runtime, X), remote)  # the group is kept for the next fit
    finally:
        runtime.close()


def test_a_killed_worker_restarts_the_group_to_the_same_result(ray_mod, X):
    from mega_taxonomy.runtime.ray import RayRuntime

    source = SlowSource(X)
    expected = kmeans(LocalRuntime("cpu", progress=False), source, max_iter=6)
    runtime = RayRuntime(num_workers=2, **BESIDE)
    try:
        victim = ray_mod.get(runtime._ensure_group()[1].pid.remote())
        killer = threading.Timer(1.0, os.kill, (victim, signal.SIGKILL))  # a pass takes ~0.2 s
        killer.start()
        try:
            result = kmeans(runtime, source, max_iter=6)
        finally:
            killer.cancel()
        assert runtime.replaced == 1
        assert_same(expected, result)
    finally:
        runtime.close()


def test_errors_keep_their_type_and_stop_the_group(ray_mod, tmp_path):
    from mega_taxonomy.runtime.ray import RayRuntime

    bad = np.random.default_rng(0).normal(size=(3 * BLOCK_ROWS, 4)).astype(np.float32)
    bad[2 * BLOCK_ROWS + 7, 1] = np.nan  # in the second worker's share
    runtime = RayRuntime(num_workers=2, **BESIDE)
    try:
        with pytest.raises(DataError, match="row 131079"):
            kmeans(runtime, VectorSource(bad))
        assert runtime._group == []
        assert kmeans(runtime, np.nan_to_num(bad)).n_iter_ == 4  # a new group runs the next one
    finally:
        runtime.close()


@pytest.mark.parametrize("max_points", [None, 256])
def test_collective_taxonomy_is_bit_identical_to_local(ray_mod, X, tmp_path, max_points):
    """A taxonomy's levels go through ``runtime.drive``: on a collective runtime every level's
    Lloyd loop runs on the workers in lockstep (None: levels on every row), or, for a level trained
    on a sample (256 points a child), on the driver, its assignment pass on the workers; the
    tree, the passes counted, the rows' paths and the members are LocalRuntime's bits; rank 0
    commits the checkpoints, and none is left once the fit is done."""
    import pyarrow.parquet as pq

    from mega_taxonomy.runtime.ray import RayRuntime
    from mega_taxonomy.storage import Store
    from mega_taxonomy.taxonomy import TaxonomyEngine

    params = dict(n_levels=2, branching_factor=[4, 3], max_iter=3, tol=0, device="cpu", random_state=3, members=5,
                  search_index=False, max_train_points_per_centroid=max_points)
    local = TaxonomyEngine(**params, storage_uri=str(tmp_path / "local"), runtime=LocalRuntime("cpu", progress=False))
    local.fit(X)
    events = []
    runtime = RayRuntime(num_workers=2, **BESIDE)
    try:
        remote = TaxonomyEngine(**params, storage_uri=str(tmp_path / "ray"), runtime=runtime)
        remote.fit(X, callback=events.append)
    finally:
        runtime.close()
    for la, lb in zip(local.tree_.levels, remote.tree_.levels, strict=True):
        for name in ("centroids", "parent", "counts", "child_offsets"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))
    assert remote.stats_["passes"] == local.stats_["passes"] == (1 + 2 * 4 + 1 if max_points is None else 1 + 2 + 1)
    assert pq.read_table(tmp_path / "ray" / "assignments").equals(pq.read_table(tmp_path / "local" / "assignments"))
    members = Store(str(tmp_path / "ray")).get_table("members/01.parquet")
    assert members.equals(Store(str(tmp_path / "local")).get_table("members/01.parquet"))
    manifest = Store(str(tmp_path / "ray")).manifest()
    assert manifest["status"] == "done" and manifest["meta"]["checkpoint"] is None
    assert not [name for name in manifest["files"] if name.startswith("checkpoints/")]
    # the driver hears of the levels (its iterations' events are rank 0's)
    assert [e["level"] for e in events if e["event"] == "level"] == [0, 1]


def test_collective_kmeans_checkpoints_are_written_by_rank_0(ray_mod, X, tmp_path):
    """``KMeans(checkpoint=...)`` on a collective runtime: rank 0 alone commits every iteration,
    the driver then completes the store, and a fit run again there is taken from it."""
    from mega_taxonomy.runtime.ray import RayRuntime
    from mega_taxonomy.storage import Store

    local = kmeans(LocalRuntime("cpu", progress=False), X)
    runtime = RayRuntime(num_workers=2, **BESIDE)
    try:
        fit = lambda: KMeans(10, max_iter=4, tol=0, random_state=0, device="cpu", runtime=runtime,  # noqa: E731
                             checkpoint=str(tmp_path / "ckpt")).fit(X)
        remote = fit()
        assert_same(local, remote)
        manifest = Store(str(tmp_path / "ckpt")).manifest()
        assert manifest["status"] == "done" and manifest["meta"]["checkpoint"] is None
        assert sorted(manifest["files"]) == ["checkpoints/level-00/centroids.npy"]  # no iteration's file left
        assert_same(fit(), remote)
    finally:
        runtime.close()
