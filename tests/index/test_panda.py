"""DistributedKDTree (PANDA) against KDTree and a float64 brute force, on local workers and on the
session's two-node loopback Ray cluster."""

import math

import numpy as np
import pytest

from mega_taxonomy.index import DistributedKDTree, KDTree
from mega_taxonomy.index.routing import GlobalTree
from mega_taxonomy.ops.knn import knn_reference


def _clustered(rng, n, d=3):
    centres = rng.random((6, d))
    return centres[rng.integers(0, 6, n)] + rng.normal(scale=0.02, size=(n, d))


@pytest.mark.parametrize("kind", ["uniform", "clustered"])
@pytest.mark.parametrize("n_workers", [3, 8])
def test_exact_as_brute_force_with_counters(kind, n_workers):
    rng = np.random.default_rng(n_workers)
    x = rng.random((12_000, 3)) if kind == "uniform" else _clustered(rng, 12_000)
    q = x[rng.integers(0, len(x), 300)] + rng.normal(scale=0.01, size=(300, 3))
    with DistributedKDTree(x, n_workers=n_workers, batch_size=128) as tree:  # several batches: the pipeline
        d, i = tree.query(q, k=10)
        counters = dict(tree.counters_)
    ref_d, ref_i = knn_reference(x, q, 10)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(d, np.sqrt(ref_d), rtol=1e-12)
    assert counters["queries"] == 300 and 1 <= counters["visits_per_query"] <= n_workers
    assert counters["points_examined"] >= 300 * 10 and counters["bytes_moved"] > q.nbytes
    assert counters["build_bytes_moved"] >= x.nbytes
    if kind == "uniform":
        assert counters["visits_per_query"] <= 2
    assert max(counters["shares"]) < 1.1 / n_workers


def test_ties_duplicates_k_over_n_and_bound():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(300, 2)).astype(np.float64)  # duplicates, equal distances across regions
    q = rng.integers(0, 5, size=(40, 2)) + 0.5
    with DistributedKDTree(x, n_workers=4) as tree:
        d, i = tree.query(q, k=310)  # k > n, and > every worker's share
        ref_d, ref_i = knn_reference(x, q, 310)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(d, np.sqrt(ref_d))
        assert (i[:, 300:] == 300).all() and np.isinf(d[:, 300:]).all()
        d, i = tree.query(q, k=5, distance_upper_bound=0.75)
        ref_d, ref_i = knn_reference(x, q, 5, bound=0.75 ** 2)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(d, np.sqrt(ref_d))
        d, i = tree.query(np.array([[100.0, 100.0]]), k=3, distance_upper_bound=1.0)
        assert np.isinf(d).all() and (i == 300).all()
        d1, i1 = tree.query(q, k=1)
        assert d1.shape == (40,) and (i1 == knn_reference(x, q, 1)[1][:, 0]).all()
        for p in (1, math.inf):
            np.testing.assert_array_equal(tree.query(q, k=4, p=p)[1], knn_reference(x, q, 4, p=p)[1])


def test_ids_of_the_source_and_update():
    rng = np.random.default_rng(2)
    x = rng.random((6000, 3))
    with DistributedKDTree(x, n_workers=4) as tree:
        assert not tree.update(np.mod(x + 0.01, 1.0))  # small drift: same global tree
        moved = x * np.array([0.2, 1.0, 1.0])  # everything squeezed into a fifth of the box: rebalance
        assert tree.update(moved)
        assert tree.counters_["rebalanced"] and max(tree.counters_["shares"]) < 0.3
        q = rng.random((200, 3)) * np.array([0.2, 1.0, 1.0])
        np.testing.assert_array_equal(tree.query(q, k=6)[1], KDTree(moved).query(q, k=6)[1])
        with pytest.raises(ValueError, match="shape"):
            tree.update(x[:10])


def test_global_tree_balances_and_refines():
    rng = np.random.default_rng(3)
    x = _clustered(rng, 50_000)
    tree = GlobalTree.fit(x, 8)
    counts = np.bincount(tree.owner(x), minlength=8)
    assert counts.max() / counts.mean() < 1.04  # splits within 1% each, three levels deep
    assert len(tree.dims) == 15


def test_ray_workers_give_the_local_answers(ray_cluster):
    from mega_taxonomy.runtime.ray import RayRuntime

    rng = np.random.default_rng(4)
    x = _clustered(rng, 30_000)
    q = rng.random((300, 3))
    with DistributedKDTree(x, n_workers=4, batch_size=100) as local:
        want = local.query(q, k=8)
        want_counters = dict(local.counters_)
    address, _ = ray_cluster
    with RayRuntime(address, num_workers=1, cpus_per_worker=0.25, progress=False, start_timeout=60) as runtime, \
            DistributedKDTree(x, n_workers=4, runtime=runtime, batch_size=100) as remote:
        got = remote.query(q, k=8)
        assert len(set(remote.pool.pids())) == 4
        for key in ("visits", "forwarded", "points_examined", "bytes_moved"):
            assert remote.counters_[key] == want_counters[key]
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
