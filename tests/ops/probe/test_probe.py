"""ops.probe: the compiled kernel and the torch twin against a float64 brute force over the rows of
the probed lists; duplicates (multi-assignment), padding, float64, and the top-m selection."""

import numpy as np
import pytest
import torch

from mega_taxonomy.ops.probe import first_probes, merge_sorted, probe_rerank, probe_rerank_reference, smallest


def layout(rng, n, d, n_lists, copies=1):
    """Random rows in random lists (a row stored ``copies`` times in distinct lists), CSR."""
    v = rng.normal(size=(n, d)).astype(np.float32)
    v[0] = 0  # a zero vector: cosine distance 1 to everything
    lists = np.stack([rng.choice(n_lists, copies, replace=False) for _ in range(n)])
    rows = np.repeat(np.arange(n), copies)
    labels = lists.ravel()
    order = np.argsort(labels, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_lists))])
    ids = 1000 + rows[order] * 7  # ids unlike positions
    return v, v[rows[order]], ids, offsets, rows[order]


def brute_force(q, stored, ids, offsets, probes, metric, k):
    """(distances, ids) float64 over the distinct rows of each query's probed lists."""
    q64, s64 = q.astype(np.float64), stored.astype(np.float64)
    out_d = np.full((len(q), k), np.inf)
    out_i = np.full((len(q), k), -1)
    for r in range(len(q)):
        pos = np.concatenate([np.arange(offsets[p], offsets[p + 1]) for p in probes[r] if p >= 0] or [[]]).astype(int)
        _, first = np.unique(ids[pos], return_index=True)
        pos = pos[first]
        x = s64[pos]
        if metric == "euclidean":
            dist = ((x - q64[r]) ** 2).sum(1)
        elif metric == "cosine":
            norm = np.linalg.norm(x, axis=1)
            dist = 1 - x @ q64[r] / np.linalg.norm(q64[r]) / np.where(norm > 0, norm, np.inf)
        else:
            dist = -(x @ q64[r])
        order = np.lexsort((ids[pos], dist))[:k]
        out_d[r, :len(order)], out_i[r, :len(order)] = dist[order], ids[pos][order]
    return out_d, out_i


def check_close(d, i, ref_d, ref_i):
    """Distances to 1e-5; ids equal except where a near-tie may swap them."""
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-4)
    differ = i != ref_i
    assert (np.abs(d[differ] - ref_d[differ]) < 1e-4).all()
    assert differ.mean() < 0.01


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "inner_product"])
@pytest.mark.parametrize("copies", [1, 2])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_matches_brute_force_over_the_probed_lists(metric, copies, backend):
    rng = np.random.default_rng(copies)
    _, stored, ids, offsets, _ = layout(rng, 600, 12, 20, copies)
    q = rng.normal(size=(90, 12)).astype(np.float32)
    probes = np.stack([rng.choice(20, 4, replace=False) for _ in range(90)])
    probes[::7, -1] = -1  # fewer probes for some queries
    d, i = probe_rerank(q, probes, offsets, stored, ids, 8, metric=metric, dedup=copies > 1, backend=backend)
    d, i = np.asarray(d), np.asarray(i)
    ref_d, ref_i = brute_force(q, stored, ids, offsets, probes, metric, 8)
    check_close(d, i, ref_d, ref_i)
    if copies > 1:
        assert all(len(set(row[row >= 0])) == (row >= 0).sum() for row in i)


@pytest.mark.parametrize("dedup", [False, True])
def test_a_wide_heap_scanned_in_two_passes(dedup):
    """k = 60 over 10 probes of ~40 rows: the kernel scans each query's first probes (nearest
    first) in one pass over the lists and the rest in a second; the same rows as one pass."""
    rng = np.random.default_rng(5)
    _, stored, ids, offsets, _ = layout(rng, 1200, 10, 30, 1 + dedup)
    q = rng.normal(size=(70, 10)).astype(np.float32)
    probes = np.stack([rng.choice(30, 10, replace=False) for _ in range(70)])
    assert 1 < first_probes(probes, offsets, 60) < probes.shape[1]
    d, i = probe_rerank(q, probes, offsets, stored, ids, 60, dedup=dedup)
    check_close(d, i, *brute_force(q, stored, ids, offsets, probes, "euclidean", 60))


@pytest.mark.parametrize("m", [1, 5, 9])
def test_merge_sorted_is_a_stable_sort_of_both_rows(m):
    rng = np.random.default_rng(m)
    a_d, b_d = (np.sort(rng.integers(0, 6, size=(40, w)), 1).astype(np.float32) for w in (4, 5))  # ties
    a_i, b_i = rng.integers(0, 100, size=(40, 4)), rng.integers(0, 100, size=(40, 5))
    b_i[::3, 1] = -1  # left out
    v, i = merge_sorted(a_d, a_i, b_d, b_i, m)
    keep_d = np.concatenate([a_d, np.where(b_i >= 0, b_d, np.inf)], 1)
    keep_i = np.concatenate([a_i, b_i], 1)
    order = np.argsort(keep_d, axis=1, kind="stable")[:, :m]
    ref_d, ref_i = np.take_along_axis(keep_d, order, 1), np.take_along_axis(keep_i, order, 1)
    np.testing.assert_array_equal(v, ref_d)
    np.testing.assert_array_equal(i, np.where(np.isfinite(ref_d), ref_i, -1))


def test_padding_when_fewer_rows_than_k():
    rng = np.random.default_rng(0)
    _, stored, ids, offsets, _ = layout(rng, 30, 4, 10)
    q = rng.normal(size=(5, 4)).astype(np.float32)
    probes = np.array([[0], [1], [2], [-1], [3]])
    for backend in ("numba", "torch"):
        d, i = (np.asarray(a) for a in probe_rerank(q, probes, offsets, stored, ids, 40, backend=backend))
        found = np.diff(offsets)[np.maximum(probes[:, 0], 0)] * (probes[:, 0] >= 0)
        assert ((i >= 0).sum(1) == found).all()
        assert np.isinf(d[i < 0]).all() and np.isfinite(d[i >= 0]).all()
        assert (d[:, 1:] >= d[:, :-1]).all()  # ascending, inf last


def test_float64_and_tensors():
    rng = np.random.default_rng(3)
    _, stored, ids, offsets, _ = layout(rng, 300, 6, 8)
    stored = stored.astype(np.float64)
    q = rng.normal(size=(20, 6))
    probes = np.tile(np.arange(8), (20, 1))
    d, i = probe_rerank(torch.from_numpy(q), probes, offsets, stored, ids, 5)
    assert isinstance(d, torch.Tensor) and d.dtype == torch.float64
    ref_d, ref_i = brute_force(q, stored, ids, offsets, probes, "euclidean", 5)
    np.testing.assert_allclose(d.numpy(), ref_d, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(i.numpy(), ref_i)
    _, twin_i = probe_rerank_reference(torch.from_numpy(q), probes, offsets, stored, ids, 5)
    np.testing.assert_array_equal(twin_i.numpy(), ref_i)


def test_bad_arguments():
    v = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="metric"):
        probe_rerank(v, np.zeros((3, 1), np.int64), [0, 3], v, np.arange(3), 1, metric="l1")
    with pytest.raises(ValueError, match="same width"):
        probe_rerank(np.zeros((3, 5), np.float32), np.zeros((3, 1), np.int64), [0, 3], v, np.arange(3), 1)
    with pytest.raises(ValueError, match="disagree"):
        probe_rerank(v, np.zeros((3, 1), np.int64), [0, 2], v, np.arange(3), 1)


@pytest.mark.parametrize("m", [1, 3, 16, 40])
def test_smallest_matches_a_stable_sort(m):
    rng = np.random.default_rng(m)
    s = rng.integers(0, 20, size=(50, 40)).astype(np.float32)  # many ties
    v, i = smallest(s, m)
    order = np.argsort(s, axis=1, kind="stable")[:, :m]
    np.testing.assert_array_equal(i, order)
    np.testing.assert_array_equal(v, np.take_along_axis(s, order, 1))
