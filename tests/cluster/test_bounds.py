"""Hamerly's bounds in Lloyd passes on the CPU (``bounds.use_bounds``): rows that provably keep
their child skip the others, and every label, distance, centroid and tree is the same bits as
with full passes; the kernel's lower bounds are below the true second-nearest distances."""

import numpy as np
import pytest
import torch

import mega_taxonomy.cluster.bounds as bounds
from mega_taxonomy.cluster import KMeans
from mega_taxonomy.ops.grouped_assign import grouped_nearest_bounded
from mega_taxonomy.ops.grouped_assign.numba import grouped_nearest_numba
from mega_taxonomy.taxonomy import TaxonomyEngine


def blobs(n, k, d, seed=0, spread=5.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [1, 7, 16])
def test_bounded_kernel_gives_the_full_kernel_bits(dtype, width):
    rng = np.random.default_rng(width)
    n, d, n_groups = 20_000, 24, 30
    x = torch.from_numpy(rng.normal(size=(n, d)).astype(dtype))
    c = torch.from_numpy(rng.normal(size=(n_groups * width, d)).astype(dtype))
    groups, offsets = rng.integers(0, n_groups, n), np.arange(0, n_groups * width + 1, width)
    dist, labels, lower = grouped_nearest_bounded(x, groups, c, offsets)
    full = torch.cdist(x.double(), c.double())
    own = (groups[:, None] * width <= np.arange(len(c))) & (np.arange(len(c)) < (groups[:, None] + 1) * width)
    second = torch.where(torch.from_numpy(own), full, torch.inf).sort(dim=1).values[:, 1].numpy()
    assert (lower <= second * (1 + 1e-5)).all()  # a lower bound (up to the kernel's float rounding)
    skipped = 0
    for step in (0.001, 0.03, 0.3, 3.0):
        moved = c + step * torch.from_numpy(rng.normal(size=c.shape).astype(dtype))
        shift = (moved.double() - c.double()).norm(dim=1).numpy()
        drift = shift.reshape(n_groups, width).max(1)
        d2, l2, _ = grouped_nearest_bounded(x, groups, moved, offsets, (labels.numpy(), lower, drift))
        d3, l3 = grouped_nearest_numba(x, groups, moved, offsets, "euclidean")
        assert torch.equal(d2, d3) and torch.equal(l2, l3)
        skipped += int(step < 0.1)
    assert skipped


def test_bounds_are_checked():
    x, c = torch.zeros(4, 2), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="bounds"):
        grouped_nearest_bounded(x, None, c, [0, 3], (np.array([0, 1, 5, 0]), np.zeros(4), np.zeros(1)))


def fit_both(monkeypatch, fit):
    with_bounds = fit()
    monkeypatch.setattr(bounds, "_BOUNDS_BYTES", 0)  # use_bounds is then False
    return with_bounds, fit()


def test_kmeans_with_bounds_is_bit_identical(monkeypatch):
    X = blobs(3 * 65536 + 17, 12, 10)
    calls = []
    original = bounds.use_bounds
    monkeypatch.setattr(bounds, "use_bounds", lambda *a: calls.append(original(*a)) or calls[-1])
    fit = lambda: KMeans(12, max_iter=20, tol=0, random_state=0, device="cpu").fit(X)  # noqa: E731
    a, b = fit_both(monkeypatch, fit)
    assert calls[0] and not calls[-1]
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_


def test_taxonomy_with_bounds_is_bit_identical(monkeypatch, tmp_path):
    X = blobs(2 * 65536 + 5, 40, 8, seed=3)
    params = dict(n_levels=2, branching_factor=[6, 5], max_iter=8, tol=0, device="cpu", random_state=1, members=4)
    runs = iter(("bounded", "full"))
    fit = lambda: TaxonomyEngine(**params, storage_uri=str(tmp_path / next(runs))).fit(X)  # noqa: E731
    a, b = fit_both(monkeypatch, fit)
    for la, lb in zip(a.tree_.levels, b.tree_.levels):
        for name in ("centroids", "counts", "parent"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))
    np.testing.assert_array_equal(a.predict(X[:1000]), b.predict(X[:1000]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frozen_groups_keep_the_bits_of_a_computation(dtype):
    """Rows of groups whose children did not move keep the previous labels, distances and bounds
    unread: the same bits as computing them; the other clusters' stats are unchanged, the frozen
    ones' are left out (zero)."""
    rng = np.random.default_rng(5)
    n, d, n_groups, width = 30_000, 12, 20, 6
    x = torch.from_numpy(rng.normal(size=(n, d)).astype(dtype))
    c = torch.from_numpy(rng.normal(size=(n_groups * width, d)).astype(dtype))
    groups, offsets = rng.integers(0, n_groups, n), np.arange(0, n_groups * width + 1, width)
    dist, labels, lower = grouped_nearest_bounded(x, groups, c, offsets)
    frozen = rng.random(n_groups) < 0.5
    moved = c.clone()
    step = 0.05 * torch.from_numpy(rng.normal(size=c.shape).astype(dtype))
    moved[torch.from_numpy(np.repeat(~frozen, width))] += step[torch.from_numpy(np.repeat(~frozen, width))]
    drift = (moved.double() - c.double()).norm(dim=1).numpy().reshape(n_groups, width).max(1)
    assert ((drift == 0) == frozen).all()
    bounds = (labels.numpy(), lower, drift)
    full = grouped_nearest_bounded(x, groups, moved, offsets, bounds, stats=True)
    skip = grouped_nearest_bounded(x, groups, moved, offsets, bounds, stats=True, frozen=(dist.numpy(), frozen))
    for a, b in zip(full[:2], skip[:2]):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(full[2], skip[2])
    live = torch.from_numpy(np.repeat(~frozen, width))
    for a, b in zip(full[3], skip[3]):
        assert torch.equal(a[live], b[live]) and not b[~live].any()


def test_frozen_groups_need_bounds():
    x, c = torch.zeros(4, 2), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="frozen"):
        grouped_nearest_bounded(x, None, c, [0, 3], frozen=(np.zeros(4), np.ones(1, bool)))


def test_taxonomy_with_frozen_groups_is_bit_identical(monkeypatch, tmp_path):
    """With tol=0 most nodes stop moving before the level ends: passes then skip their rows
    (``reuse_frozen``), and the tree, the stored assignments and members, and every level's
    stats are the bits of full passes."""
    import pyarrow.parquet as pq

    X = blobs(2 * 65536 + 11, 30, 6, seed=4, spread=8.0)
    params = dict(n_levels=3, branching_factor=[4, 3, 3], max_iter=30, tol=0, device="cpu", random_state=2,
                  members=5, search_index=False)
    frozen_clusters = []
    original = bounds.reuse_frozen

    def spy(partial, before, frozen, offsets):
        frozen_clusters.append(int(frozen[bounds.group_of_centroid(offsets, len(partial.counts))].sum()))
        return original(partial, before, frozen, offsets)

    monkeypatch.setattr(bounds, "reuse_frozen", spy)
    runs = iter(("frozen", "full"))
    fit = lambda: TaxonomyEngine(**params, storage_uri=str(tmp_path / next(runs))).fit(X)  # noqa: E731
    a, b = fit_both(monkeypatch, fit)
    assert sum(frozen_clusters) > 0  # some passes left clusters out
    for la, lb in zip(a.tree_.levels, b.tree_.levels):
        for name in ("centroids", "counts", "parent", "child_offsets"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))
    assert a.stats_["levels"] == [{**s, "seconds": t["seconds"]} for s, t in zip(b.stats_["levels"], a.stats_["levels"])]
    for folder in ("assignments", "members"):
        for part in sorted((tmp_path / "full" / folder).glob("*.parquet")):
            assert pq.read_table(tmp_path / "frozen" / folder / part.name).equals(pq.read_table(part))
