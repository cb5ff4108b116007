"""ops.assign against a float64 brute force (scipy), tie-tolerant as flash-kmeans' checks."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mega_taxonomy.ops import distances, nearest, topk


def brute_force(x, c, metric):
    x64, c64 = np.asarray(x, np.float64), np.asarray(c, np.float64)
    return cdist(x64, c64, "sqeuclidean" if metric == "euclidean" else "cosine")


def clustered(rng, n, k, d, dtype):
    centers = rng.normal(size=(k, d)) * 4
    x = centers[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    return torch.from_numpy(x.astype(dtype)), torch.from_numpy(centers.astype(dtype))


def check_argmin(ref, idx, rtol):
    """Indices may differ from the float64 argmin only where their distance ties within rtol."""
    n = ref.shape[0]
    best = ref.min(1)
    chosen = ref[np.arange(n), idx]
    gap = chosen - best
    scale = np.abs(ref).max(1) + 1e-12
    bad = np.flatnonzero(gap > rtol * scale)
    assert bad.size == 0, f"rows {bad[:10]} chose a centroid worse than the float64 argmin by {gap[bad[:10]]}"


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5), (np.float16, 1e-2)])
@pytest.mark.parametrize("n,k,d", [(1, 1, 3), (777, 13, 37), (3001, 2500, 16)])
def test_nearest_matches_brute_force(metric, dtype, rtol, n, k, d):
    rng = np.random.default_rng(n + k)
    x, c = clustered(rng, n, k, d, dtype)
    dist, idx = nearest(x, c, metric=metric)
    assert dist.shape == (n,) and idx.dtype == torch.int64
    ref = brute_force(x.numpy(), c.numpy(), metric)
    check_argmin(ref, idx.numpy(), rtol)
    np.testing.assert_allclose(dist.numpy(), ref[np.arange(n), idx.numpy()], rtol=rtol * 10, atol=rtol * 10 * ref.max())


def test_nearest_identical_on_clustered_data():
    """With well separated clusters, float32 labels equal the float64 brute force exactly."""
    rng = np.random.default_rng(0)
    x, c = clustered(rng, 5000, 50, 64, np.float32)
    _, idx = nearest(x, c)
    np.testing.assert_array_equal(idx.numpy(), brute_force(x.numpy(), c.numpy(), "euclidean").argmin(1))


def test_ties_go_to_the_lowest_index_across_tiles():
    x = torch.zeros(5, 4)
    c = torch.ones(3000, 4)  # every centroid at the same distance, over several centroid tiles
    _, idx = nearest(x, c)
    assert idx.tolist() == [0] * 5
    _, top = topk(x, c, 3)
    assert top.tolist() == [[0, 1, 2]] * 5


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_topk_matches_brute_force(metric, k):
    rng = np.random.default_rng(k)
    x, c = clustered(rng, 300, 2100, 24, np.float64)
    dist, idx = topk(x, c, k, metric=metric)
    ref = brute_force(x.numpy(), c.numpy(), metric)
    expected = np.sort(ref, axis=1)[:, :k]
    np.testing.assert_allclose(dist.numpy(), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.take_along_axis(ref, idx.numpy(), 1), expected, rtol=1e-9, atol=1e-9)


def test_distances_matches_cdist():
    rng = np.random.default_rng(1)
    x, c = clustered(rng, 100, 7, 5, np.float64)
    np.testing.assert_allclose(distances(x, c).numpy(), brute_force(x, c, "euclidean"), atol=1e-9)
    np.testing.assert_allclose(distances(x, c, metric="cosine").numpy(), brute_force(x, c, "cosine"), atol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        nearest(torch.zeros(2, 3), torch.zeros(2, 3), metric="manhattan")
    with pytest.raises(ValueError, match="same width"):
        nearest(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="k=5"):
        topk(torch.zeros(2, 3), torch.zeros(4, 3), 5)


def test_last_centroid_tile_narrower_than_the_others():
    """K = 4096 + 5: the second centroid tile has 5 centroids."""
    rng = np.random.default_rng(9)
    x, c = clustered(rng, 300, 4101, 8, np.float32)
    ref = brute_force(x.numpy(), c.numpy(), "euclidean")
    _, idx = nearest(x, c)
    check_argmin(ref, idx.numpy(), 1e-5)
    d, _ = topk(x, c, 3)
    np.testing.assert_allclose(d.numpy(), np.sort(ref, 1)[:, :3], rtol=1e-4, atol=1e-3)


def test_results_do_not_depend_on_the_thread_count():
    """A Ray worker runs the CPU ops on as many threads as its CPU slots: the bits stay the same."""
    import os

    from mega_taxonomy.ops import grouped_nearest
    from mega_taxonomy.threads import set_cpu_threads

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(20_000, 16)).astype(np.float32))
    c = torch.from_numpy(rng.normal(size=(96, 16)).astype(np.float32))
    groups, offsets = torch.from_numpy(rng.integers(0, 6, 20_000)), torch.arange(0, 97, 16)
    many = nearest(x, c), grouped_nearest(x, groups, c, offsets)
    try:
        set_cpu_threads(1)
        one = nearest(x, c), grouped_nearest(x, groups, c, offsets)
    finally:
        set_cpu_threads(os.cpu_count() or 1)
    for a, b in zip(many, one):
        for u, v in zip(a, b):
            assert torch.equal(u, v)
