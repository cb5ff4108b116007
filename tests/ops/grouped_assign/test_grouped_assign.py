"""ops.grouped_assign against a float64 per-row brute force."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mega_taxonomy.ops import grouped_nearest, grouped_topk


def problem(rng, n, n_groups, max_children, d, dtype=np.float64):
    counts = rng.integers(0, max_children + 1, size=n_groups)
    counts[0] = max(counts[0], 1)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    c = rng.normal(size=(offsets[-1], d)).astype(dtype)
    x = rng.normal(size=(n, d)).astype(dtype)
    groups = rng.integers(0, n_groups, size=n)
    return x, groups, c, offsets


def brute_force(x, groups, c, offsets, metric):
    full = cdist(x.astype(np.float64), c.astype(np.float64), "sqeuclidean" if metric == "euclidean" else "cosine")
    out = np.full(full.shape, np.inf)
    for i, g in enumerate(groups):
        out[i, offsets[g] : offsets[g + 1]] = full[i, offsets[g] : offsets[g + 1]]
    return out


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("n,n_groups,max_children", [(500, 3, 40), (2000, 300, 7), (64, 64, 1)])
def test_grouped_nearest_matches_brute_force(metric, n, n_groups, max_children):
    rng = np.random.default_rng(n + n_groups)
    x, groups, c, offsets = problem(rng, n, n_groups, max_children, 9)
    dist, idx = grouped_nearest(torch.from_numpy(x), torch.from_numpy(groups), torch.from_numpy(c),
                                torch.from_numpy(offsets), metric=metric)
    ref = brute_force(x, groups, c, offsets, metric)
    has_children = np.isfinite(ref).any(1)
    np.testing.assert_array_equal(idx.numpy()[~has_children], -1)
    np.testing.assert_array_equal(idx.numpy()[has_children], ref[has_children].argmin(1))
    np.testing.assert_allclose(dist.numpy()[has_children], ref[has_children].min(1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n_groups", [2, 400])  # both strategies: few big groups, many small ones
def test_grouped_topk_matches_brute_force(n_groups):
    rng = np.random.default_rng(n_groups)
    x, groups, c, offsets = problem(rng, 1500, n_groups, 12, 6)
    dist, idx = grouped_topk(torch.from_numpy(x), torch.from_numpy(groups), torch.from_numpy(c),
                             torch.from_numpy(offsets), 5)
    ref = brute_force(x, groups, c, offsets, "euclidean")
    expected = np.sort(ref, 1)[:, :5]
    np.testing.assert_allclose(dist.numpy(), expected, rtol=1e-9, atol=1e-9)
    valid = idx.numpy() >= 0
    np.testing.assert_array_equal(valid, np.isfinite(expected))
    np.testing.assert_allclose(np.take_along_axis(ref, np.where(valid, idx.numpy(), 0), 1)[valid], expected[valid])


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(3)
    x, groups, c, offsets = problem(rng, 3000, 50, 16, 32, np.float32)
    _, idx32 = grouped_nearest(torch.from_numpy(x), torch.from_numpy(groups), torch.from_numpy(c),
                               torch.from_numpy(offsets))
    ref = brute_force(x, groups, c, offsets, "euclidean")
    ok = np.isfinite(ref).any(1)
    np.testing.assert_array_equal(idx32.numpy()[~ok], -1)
    chosen = np.take_along_axis(ref, np.maximum(idx32.numpy(), 0)[:, None], 1)[ok, 0]
    scale = np.where(np.isfinite(ref), ref, 0).max(1)[ok]
    gap = chosen - ref[ok].min(1)
    assert np.all(gap <= 1e-5 * scale), f"rows {np.flatnonzero(gap > 1e-5 * scale)[:10]} are worse than ties"
    assert (idx32.numpy()[ok] == ref[ok].argmin(1)).mean() > 0.999
