"""The compiled CPU kernels (ops/*_numba.py) against a float64 brute force and their torch twins."""

import os

import numpy as np
import pytest
import torch

from mega_taxonomy.ops.grouped_assign import grouped_nearest_reference
from mega_taxonomy.ops.grouped_assign.numba import MAX_CHILDREN, grouped_nearest_numba
from mega_taxonomy.ops.update import cluster_stats_reference
from mega_taxonomy.ops.update.numba import cluster_stats_numba
from mega_taxonomy.threads import set_cpu_threads


def problem(rng, n, n_groups, max_children, d, dtype):
    counts = rng.integers(0, max_children + 1, size=n_groups)  # some groups without children
    counts[0] = max_children
    if n_groups > 1:
        counts[-1] = 0
    offsets = np.concatenate([[0], np.cumsum(counts)])
    centers = rng.normal(size=(offsets[-1], d)) * 3
    groups = rng.integers(0, n_groups, size=n)
    # rows near one of their group's children, so that most rows have a clear nearest one
    near = offsets[groups] + rng.integers(0, np.maximum(counts[groups], 1))
    x = centers[np.minimum(near, len(centers) - 1)] + rng.normal(size=(n, d))
    return x.astype(dtype), groups, centers.astype(dtype), offsets


def brute_force(x, groups, c, offsets, metric):
    """(n, K) float64 distances, inf outside each row's group."""
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    if metric == "cosine":
        x64 = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
        c64 = c64 / np.linalg.norm(c64, axis=1, keepdims=True)
        full = 1 - x64 @ c64.T
    else:
        full = ((x64[:, None, :] - c64[None, :, :]) ** 2).sum(-1)
    child = np.arange(len(c))[None, :]
    own = (child >= offsets[groups][:, None]) & (child < offsets[groups + 1][:, None])
    return np.where(own, full, np.inf)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("n,n_groups,max_children,d",
                         [(3000, 40, 16, 64), (2000, 3, MAX_CHILDREN, 13), (500, 1, 5, 3)])
def test_grouped_nearest_matches_float64(metric, dtype, rtol, n, n_groups, max_children, d):
    rng = np.random.default_rng(n + d)
    x, groups, c, offsets = problem(rng, n, n_groups, max_children, d, dtype)
    dist, label = grouped_nearest_numba(torch.from_numpy(x), groups, torch.from_numpy(c), offsets, metric)
    ref = brute_force(x, groups, c, offsets, metric)
    has = np.isfinite(ref).any(1)
    assert has.sum() > n // 2 and ((~has).any() or n_groups == 1)
    np.testing.assert_array_equal(label.numpy()[~has], -1)
    assert np.isinf(dist.numpy()[~has]).all()
    label, dist, ref = label.numpy()[has], dist.numpy()[has], ref[has]
    best = ref.min(1)
    scale = np.abs(np.where(np.isfinite(ref), ref, 0)).max(1) + 1e-12
    chosen = ref[np.arange(len(ref)), label]
    worse = np.flatnonzero(chosen - best > rtol * scale)
    assert worse.size == 0, f"rows {worse[:10]} chose a child worse than the float64 argmin beyond a tie"
    assert (label == ref.argmin(1)).mean() > 0.999
    np.testing.assert_allclose(dist, chosen, rtol=rtol * 10, atol=rtol * 10 * scale.max())


def test_grouped_nearest_is_the_twin_up_to_ties():
    rng = np.random.default_rng(4)
    x, groups, c, offsets = problem(rng, 4000, 30, 16, 24, np.float32)
    args = torch.from_numpy(x), torch.from_numpy(groups), torch.from_numpy(c), torch.from_numpy(offsets)
    d_twin, i_twin = grouped_nearest_reference(*args)
    d, i = grouped_nearest_numba(args[0], groups, args[2], offsets, "euclidean")
    ref = brute_force(x, groups, c, offsets, "euclidean")
    differ = np.flatnonzero(i.numpy() != i_twin.numpy())
    # a label may differ only where both choices tie within float32 rounding
    gap = np.abs(ref[differ, i.numpy()[differ]] - ref[differ, i_twin.numpy()[differ]])
    scale = np.where(np.isfinite(ref[differ]), ref[differ], 0).max(1, initial=1.0)
    assert np.all(gap <= 1e-5 * scale)
    ok = np.isfinite(d_twin.numpy())
    np.testing.assert_allclose(d.numpy()[ok], d_twin.numpy()[ok], rtol=1e-4, atol=1e-3)


def test_ties_go_to_the_lowest_child():
    x = torch.zeros(4, 8)
    c = torch.ones(10, 8)
    _, label = grouped_nearest_numba(x, np.array([0, 1, 1, 0]), c, np.array([0, 3, 10]), "euclidean")
    assert label.tolist() == [0, 3, 3, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cluster_stats_match_float64(dtype):
    rng = np.random.default_rng(7)
    n, d, k = 5000, 37, 23
    x = (rng.normal(size=(n, d)) * 5 + 2).astype(dtype)
    labels = rng.integers(-1, k - 2, size=n)  # some rows take no part, the last clusters stay empty
    values = rng.random(n).astype(dtype)
    sums, counts, value_sums = cluster_stats_numba(x, labels, values, k)
    x64 = x.astype(np.float64)
    for j in range(k):
        rows = labels == j
        assert counts[j] == rows.sum()
        np.testing.assert_allclose(sums[j], x64[rows].sum(0), rtol=1e-12, atol=1e-12 * np.abs(x64).sum())
        np.testing.assert_allclose(value_sums[j], values[rows].astype(np.float64).sum(), rtol=1e-12, atol=1e-12)
    twin = cluster_stats_reference(torch.from_numpy(x), torch.from_numpy(labels), torch.from_numpy(values), k)
    np.testing.assert_array_equal(counts, twin[1].numpy())
    np.testing.assert_allclose(sums, twin[0].numpy(), rtol=1e-6, atol=1e-6 * np.abs(x64).sum(0).max())


def test_bits_do_not_depend_on_the_thread_count_or_the_rows_around():
    rng = np.random.default_rng(8)
    x, groups, c, offsets = problem(rng, 20_000, 50, 16, 32, np.float32)
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    many = grouped_nearest_numba(xt, groups, ct, offsets, "euclidean")
    stats = cluster_stats_numba(x, many[1].numpy(), many[0].numpy(), len(c))
    try:
        set_cpu_threads(1)
        one = grouped_nearest_numba(xt, groups, ct, offsets, "euclidean")
        stats_one = cluster_stats_numba(x, one[1].numpy(), one[0].numpy(), len(c))
    finally:
        set_cpu_threads(os.cpu_count() or 1)
    part = grouped_nearest_numba(xt[5:777], groups[5:777], ct, offsets, "euclidean")
    for a, b in zip(many, one):
        assert torch.equal(a, b)
    for a, b in zip(many, part):
        assert torch.equal(a[5:777], b)
    for a, b in zip(stats, stats_one):
        np.testing.assert_array_equal(a, b)


def test_indices_out_of_range_raise_instead_of_reaching_the_kernels():
    x, c = torch.zeros(3, 2), torch.zeros(4, 2)
    with pytest.raises(ValueError, match="offsets"):
        grouped_nearest_numba(x, np.array([0, 0, 1]), c, np.array([0, 2, 5]), "euclidean")
    with pytest.raises(IndexError, match="groups"):
        grouped_nearest_numba(x, np.array([0, 2, 1]), c, np.array([0, 2, 4]), "euclidean")
    with pytest.raises(IndexError, match="labels"):
        cluster_stats_numba(x.numpy(), np.array([0, 4, -1]), np.zeros(3, np.float32), 4)
