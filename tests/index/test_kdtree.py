"""KDTree against a float64 brute force (ops.knn.knn_reference) and scipy's cKDTree."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from mega_taxonomy.errors import DataError
from mega_taxonomy.index import KDTree
from mega_taxonomy.ops.knn import knn_reference


def _clustered(rng, n, d):
    centres = rng.random((8, d)) * 10
    return centres[rng.integers(0, 8, n)] + rng.normal(scale=0.05, size=(n, d))


def _true(d, p):
    return np.sqrt(d) if p == 2 else d


@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("kind", ["uniform", "clustered"])
def test_query_matches_brute_force(d, kind):
    rng = np.random.default_rng(d)
    x = rng.random((2000, d)) if kind == "uniform" else _clustered(rng, 2000, d)
    q = x[rng.integers(0, len(x), 150)] + rng.normal(scale=0.01, size=(150, d))
    tree = KDTree(x)
    for p in (2, 1, math.inf):
        dist, idx = tree.query(q, k=7, p=p)
        ref_d, ref_i = knn_reference(x, q, 7, p=p)
        np.testing.assert_allclose(dist, _true(ref_d, p), rtol=1e-12)
        np.testing.assert_array_equal(idx, ref_i)


def test_duplicates_ties_by_row_and_k_over_n():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4, size=(60, 2)).astype(np.float64)  # many exact duplicates and equal distances
    tree = KDTree(base, leafsize=4)
    q = np.array([[1.0, 1.0], [1.5, 2.0], [10.0, 10.0]])
    dist, idx = tree.query(q, k=80)  # k > n: the rest inf / n
    ref_d, ref_i = knn_reference(base, q, 80)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, np.sqrt(ref_d))
    assert np.isinf(dist[:, 60:]).all() and (idx[:, 60:] == 60).all()
    _, own_i = tree.query_self(k=5)
    _, ref_i = knn_reference(base, base, 5, skip=np.arange(60))
    np.testing.assert_array_equal(own_i, ref_i)
    assert (own_i != np.arange(60)[:, None]).all()


def test_distance_upper_bound_is_exclusive_and_empty_results():
    x = np.array([[0.0], [1.0], [2.0]])
    tree = KDTree(x)
    assert tree.query([[0.0]], k=3, distance_upper_bound=1.0)[1].tolist() == [[0, 3, 3]]
    dist, idx = tree.query(np.array([[50.0], [60.0]]), k=2, distance_upper_bound=5)
    assert np.isinf(dist).all() and (idx == 3).all()
    rng = np.random.default_rng(1)
    x = rng.random((3000, 3))
    q = rng.random((100, 3))
    for p in (2, 1, math.inf):
        dist, idx = KDTree(x).query(q, k=6, p=p, distance_upper_bound=0.05)
        ref_d, ref_i = knn_reference(x, q, 6, p=p, bound=0.05 ** 2 if p == 2 else 0.05)
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_allclose(dist, _true(ref_d, p), rtol=1e-12)


def test_shapes_and_values_as_scipy():
    rng = np.random.default_rng(2)
    x = rng.random((500, 3))
    ours, theirs = KDTree(x), cKDTree(x)
    for q, k in [(x[0], 1), (x[:4], 1), (rng.random((2, 3, 3)), 4), (x[:5], [2, 5]), (x[7], 3)]:
        a, b = ours.query(q, k=k), theirs.query(q, k=k)
        assert np.shape(a[0]) == np.shape(b[0]) and np.shape(a[1]) == np.shape(b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
        np.testing.assert_array_equal(a[1], b[1])
    assert isinstance(ours.query(x[0])[1], int)
    got = ours.query_ball_point(x[:6], 0.2)
    want = theirs.query_ball_point(x[:6], 0.2, return_sorted=True)
    assert got.shape == want.shape and all(g == w for g, w in zip(got, want))
    assert ours.query_ball_point(x[3], 0.3) == sorted(theirs.query_ball_point(x[3], 0.3))
    np.testing.assert_array_equal(ours.query_ball_point(x[:9], 0.25, p=1, return_length=True),
                                  theirs.query_ball_point(x[:9], 0.25, p=1, return_length=True))
    dist, idx = ours.query(torch.from_numpy(x[:3]), k=2)
    assert isinstance(dist, torch.Tensor) and idx.dtype == torch.int64


@pytest.mark.parametrize("d", [2, 3])
def test_periodic_box(d):
    rng = np.random.default_rng(d)
    box = np.array([1.0, 2.0, 0.5][:d])
    x = rng.random((1500, d)) * box
    q = (rng.random((120, d)) * 1.4 - 0.2) * box  # some outside the box: wrapped in
    ours, theirs = KDTree(x, boxsize=box), cKDTree(x, boxsize=box)
    for p in (2, 1, math.inf):
        a, b = ours.query(q, k=5, p=p), theirs.query(q, k=5, p=p)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
        ref_d, ref_i = knn_reference(x, np.mod(q, box), 5, p=p, boxsize=box)
        np.testing.assert_array_equal(a[1], ref_i)
    own_d, own_i = ours.query_self(k=3)
    ref_d, ref_i = knn_reference(x, x, 3, boxsize=box, skip=np.arange(len(x)))
    np.testing.assert_array_equal(own_i, ref_i)
    np.testing.assert_allclose(own_d, np.sqrt(ref_d), rtol=1e-12)
    counts = ours.query_ball_point(q, 0.1, return_length=True)
    np.testing.assert_array_equal(counts, theirs.query_ball_point(q, 0.1, return_length=True))
    with pytest.raises(DataError, match="row 0"):
        KDTree(np.full((3, d), 0.9) * 2, boxsize=0.5)


def test_large_tree_built_on_threads_matches_scipy():
    rng = np.random.default_rng(3)
    x = _clustered(rng, 100_000, 3)  # over the size where subtrees are built on threads
    q = rng.random((2000, 3)) * 10
    ours = KDTree(x)
    a, b = ours.query(q, k=10), cKDTree(x).query(q, k=10)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    np.testing.assert_array_equal(a[1], b[1])
    _, own_i = ours.query_self(k=4, workers=1)
    sample = rng.integers(0, len(x), 100)
    _, ref_i = knn_reference(x, x[sample], 4, skip=sample)
    np.testing.assert_array_equal(own_i[sample], ref_i)


def test_bad_input():
    with pytest.raises(DataError, match="row 1"):
        KDTree(np.array([[0.0, 1.0], [np.nan, 0.0]]))
    tree = KDTree(np.zeros((3, 2)))
    with pytest.raises(DataError, match="2 values"):
        tree.query(np.zeros((4, 3)))
    with pytest.raises(DataError, match="row 2"):
        tree.query(np.array([[0, 0], [0, 0], [np.inf, 0]]))
    with pytest.raises(ValueError, match="p must be"):
        tree.query([0, 0], p=3)
    with pytest.raises(ValueError, match="k must"):
        tree.query([0, 0], k=0)
    with pytest.raises(ValueError, match="eps"):
        tree.query([0, 0], eps=0.1)
    with pytest.raises(DataError, match="no rows"):
        KDTree(np.empty((0, 2)))


def test_points_from_npy_file(tmp_path):
    x = np.random.default_rng(4).random((300, 3)).astype(np.float32)
    np.save(tmp_path / "points.npy", x)
    tree = KDTree(str(tmp_path / "points.npy"))
    np.testing.assert_array_equal(tree.query(x[:5], k=2)[1], cKDTree(x.astype(np.float64)).query(x[:5], k=2)[1])
