"""ops.update (per-cluster sums by sort + segmented reduction) against a float64 brute force.

Without a GPU the Triton kernels run in Triton's CPU interpreter (conftest.py).
"""

import functools

import numpy as np
import pytest
import torch
from kernel_checks import DEVICE

from mega_taxonomy.ops.exact import ExactSum
from mega_taxonomy.ops.update import cluster_counts, cluster_stats, cluster_stats_reference


def brute_force(x, labels, values, k):
    x64, labels, values = x.double().cpu().numpy(), labels.cpu().numpy(), values.double().cpu().numpy()
    sums, counts, w = np.zeros((k, x64.shape[1])), np.zeros(k, np.int64), np.zeros(k)
    for c in range(k):
        rows = labels == c
        sums[c], counts[c], w[c] = x64[rows].sum(0), rows.sum(), values[rows].sum()
    return sums, counts, w


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
# one big cluster cut into many pieces, many small clusters (some empty), D past one column tile
@pytest.mark.parametrize("n,d,k,skew", [(1500, 19, 3, True), (600, 130, 70, False), (1, 8, 4, False)])
def test_cluster_stats_matches_float64(backend, dtype, n, d, k, skew):
    g = torch.Generator().manual_seed(n + d + k)
    x = (torch.randn(n, d, generator=g) * 3 + 1).to(dtype)
    labels = torch.randint(-1, k, (n,), generator=g)
    if skew:
        labels[: n * 3 // 4] = 0
    values = torch.rand(n, generator=g)
    sums, counts, w = cluster_stats(x.to(DEVICE), labels.to(DEVICE), values.to(DEVICE), k, backend=backend)
    ref_sums, ref_counts, ref_w = brute_force(x, labels, values, k)
    assert sums.dtype == torch.float64 and w.dtype == torch.float64 and counts.dtype == torch.int64
    np.testing.assert_array_equal(counts.cpu().numpy(), ref_counts)
    # float64 additions (kernel) or float32 sums of a whole chunk, then float64 (twin)
    scale = np.abs(x.double().numpy()).sum(0).max()
    np.testing.assert_allclose(sums.cpu().numpy(), ref_sums, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(w.cpu().numpy(), ref_w, rtol=1e-12, atol=1e-12)


def test_kernel_is_the_twin_up_to_float32_rounding_and_repeats_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(900, 40, generator=g).to(DEVICE)
    labels = torch.randint(0, 9, (900,), generator=g).to(DEVICE)
    values = torch.rand(900, generator=g).to(DEVICE)
    a = cluster_stats(x, labels, values, 9, backend="triton")
    b = cluster_stats(x, labels, values, 9, backend="triton")
    twin = cluster_stats_reference(x, labels, values, 9)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    torch.testing.assert_close(a[0], twin[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
def test_counts_alone_are_the_bits_of_the_full_stats(backend):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1300, 24, generator=g).to(DEVICE)
    labels = torch.randint(-1, 11, (1300,), generator=g).to(DEVICE)
    values = torch.rand(1300, generator=g).to(DEVICE) * 100
    _, counts, value_sums = cluster_stats(x, labels, values, 11, backend=backend)
    alone = cluster_counts(labels, values, 11, backend=backend)
    assert torch.equal(alone[0], counts) and torch.equal(alone[1], value_sums)


def test_bad_shapes():
    with pytest.raises(ValueError, match="must be"):
        cluster_stats(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(3), 2)


@pytest.mark.parametrize("n,k,block_rows", [(1000, 5, 256), (700, 300, 700), (3000, 40000, 1024), (0, 3, 256)])
def test_sort_keys_are_block_then_label(n, k, block_rows):
    """The keys' kernel against torch: ``b * (k + 1) + label + 1``, labels below 0 as 0, in the
    narrowest type (int16, int32), sorted stably, with the ends of every key."""
    from mega_taxonomy.ops.update.triton import sorted_by_key

    g = torch.Generator().manual_seed(n + k)
    labels = torch.randint(-3, k, (n,), generator=g)
    order, keys, ends = sorted_by_key(labels.to(DEVICE), k, block_rows)
    want = (torch.arange(n) // block_rows) * (k + 1) + labels.clamp_min(-1) + 1
    n_keys = max(1, -(-n // block_rows)) * (k + 1)
    assert keys.dtype == (torch.int16 if n_keys <= 2**15 else torch.int32)
    assert torch.equal(order.cpu(), torch.sort(want, stable=True).indices)
    assert torch.equal(keys.long().cpu(), want[order.cpu()])
    assert torch.equal(ends.cpu(), torch.searchsorted(want.sort().values, torch.arange(n_keys), right=True))


def test_one_program_per_cluster_gives_the_bits_of_chunks_and_combine(monkeypatch):
    """Two ways to the same sums (``update_triton``): runs per chunk of sorted rows then their
    combination, or one program per cluster walking its runs; the same additions in the same
    order. Rows of magnitudes far apart, so that their float64 sums depend on the order (a
    permutation of the rows changes the bits)."""
    from mega_taxonomy.ops.update import triton as update_triton

    g = torch.Generator().manual_seed(8)
    x = (torch.randn(2000, 150, generator=g) * torch.exp(8 * torch.randn(2000, 1, generator=g))).to(DEVICE)
    labels = torch.randint(-1, 5, (2000,), generator=g)
    labels[:900] = 2  # a cluster over several chunks
    labels, values = labels.to(DEVICE), torch.rand(2000, generator=g).to(DEVICE)
    runs = []
    for per_cluster in (0, 1000):  # 0: always chunks; 1000: always one program per cluster
        monkeypatch.setattr(update_triton, "ROWS_PER_CLUSTER", per_cluster)
        runs.append(cluster_stats(x, labels, values, 5, backend="triton"))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    perm = torch.randperm(2000, generator=g).to(DEVICE)
    permuted = cluster_stats(x[perm], labels[perm], values[perm], 5, backend="triton")
    assert not torch.equal(permuted[0], runs[0][0])


@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
# SLOT_BYTES 1 << 28, 1, 5760: the 4 blocks in one launch, one per launch, two per launch (each block's
# slots take 2,880 bytes); CLUSTER_PROGRAMS 1, 12, 1024: 1, up to 2, up to 4 programs per cluster
@pytest.mark.parametrize("per_cluster,slot_bytes,programs", [(0, 1 << 28, 1024), (0, 5760, 12), (1000, 1 << 28, 1),
                                                             (0, 1 << 28, 1), (1000, 1, 1024), (0, 1, 1024)])
# spread 8: rows from 1e-10 to 1e10, whose blocks' sums rarely add exactly in float64; 0: rows of
# like size, whose sums mostly do (the exact sums' float64 part, ``exact_add_running``)
@pytest.mark.parametrize("spread", [8, 0])
def test_blocks_at_once_are_the_bits_of_blocks_one_by_one(backend, per_cluster, slot_bytes, programs, spread,
                                                          monkeypatch):
    """``block_rows``: the statistics of every block alone, added exactly (``ExactSum``), to the bit;
    with slots or one program per cluster, in one launch or one launch per block (``SLOT_BYTES``),
    each cluster's blocks added by one program or by several whose partials are merged."""
    from mega_taxonomy.ops.update import triton as update_triton

    monkeypatch.setattr(update_triton, "ROWS_PER_CLUSTER", per_cluster)
    monkeypatch.setattr(update_triton, "SLOT_BYTES", slot_bytes)
    monkeypatch.setattr(update_triton, "CLUSTER_PROGRAMS", programs)
    monkeypatch.setattr(update_triton, "MIN_BLOCKS_PER_PROGRAM", 1)  # four blocks split among up to four
    g = torch.Generator().manual_seed(9)
    n, block = 1800, 512  # three full blocks and a short one
    x = (torch.randn(n, 40, generator=g) * torch.exp(spread * torch.randn(n, 1, generator=g))).to(DEVICE)
    labels = torch.randint(-1, 6, (n,), generator=g)
    labels[100:700] = 3  # a cluster across a block boundary, over several chunks
    labels, values = labels.to(DEVICE), (torch.rand(n, generator=g) * 1e6).to(DEVICE)
    exact = cluster_stats(x, labels, values, 6, backend=backend, block_rows=block)
    at_once = (exact[0].value(), exact[1], exact[2].value())
    parts = []
    for lo in range(0, n, block):
        part = cluster_stats(x[lo:lo + block], labels[lo:lo + block], values[lo:lo + block], 6, backend=backend)
        parts.append((ExactSum.of(part[0]), part[1], ExactSum.of(part[2])))
    total = functools.reduce(lambda a, b: tuple(u + v for u, v in zip(a, b)), parts)
    total = (total[0].value(), total[1], total[2].value())
    if backend == "torch" and x.is_cuda:
        # torch's index_add_ on CUDA adds a chunk's rows in float32 in no fixed order: equal up to
        # the bound of any order's rounding, n eps32 sum |x| (these rows span 1e-10 to 1e10)
        bound = len(x) * torch.finfo(torch.float32).eps * cluster_stats(x.abs().double(), labels, values, 6,
                                                                         backend="torch")[0]
        assert bool(((at_once[0] - total[0]).abs() <= bound).all())
        assert torch.equal(at_once[1], total[1]) and torch.allclose(at_once[2], total[2], rtol=1e-12, atol=0)
    else:
        for a, b in zip(at_once, total):
            assert torch.equal(a, b)
    if spread:  # blocks matter (rows of like size add to the same sums in any blocks)
        assert not torch.equal(cluster_stats(x, labels, values, 6, backend=backend)[0], at_once[0])
    # and their order does not: the same blocks' sums (torch on CUDA computes a block differently
    # each time), added last to first
    backwards = functools.reduce(lambda a, b: a + b, [part[0] for part in reversed(parts)])
    assert torch.equal(backwards.value(), total[0])


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalize", [False, True])
def test_centroids_from_sums_are_float64_means_and_shift(backend, dtype, normalize):
    """sums / counts in float64 (the old centroid where a cluster has no rows), rows normalized
    for cosine, in the old centroids' dtype; the shift is the float64 sum of squared differences."""
    from mega_taxonomy.ops.update import centroids_from_sums

    g = torch.Generator().manual_seed(3)
    k, d = 70, 33
    counts = torch.randint(0, 5, (k,), generator=g)
    sums = torch.randn(k, d, generator=g, dtype=torch.float64) * counts[:, None] * 2
    old = torch.randn(k, d, generator=g).to(dtype)
    centroids, shift = centroids_from_sums(sums.to(DEVICE), counts.to(DEVICE), old.to(DEVICE), normalize=normalize,
                                           backend=backend)

    s, n, o = sums.numpy(), counts.numpy(), old.double().numpy()
    expected = np.where(n[:, None] > 0, s / np.maximum(n, 1)[:, None], o)
    if normalize:
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert centroids.dtype == dtype and shift.dtype == torch.float64 and shift.ndim == 0
    got = centroids.cpu().double().numpy()
    if normalize:  # torch's row norms are not numpy's bits
        slack = 1e-6 if dtype == torch.float32 else 1e-2
        np.testing.assert_allclose(got, expected, rtol=slack, atol=slack)
    else:  # the same IEEE division, then torch's rounding to the dtype (through float32)
        np.testing.assert_array_equal(got, torch.from_numpy(expected).to(dtype).double().numpy())
    assert shift.item() == pytest.approx(((got - o) ** 2).sum(), rel=1e-12)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_centroids_from_sums_round_through_float32_as_torch_does(backend):
    """Means just above a half-way point of float16 / bfloat16 but within float32's rounding of
    it: rounded through float32 (ties to even), as torch's conversions from float64 do (bfloat16:
    always the torch twin)."""
    from mega_taxonomy.ops.update import centroids_from_sums

    means = torch.tensor([[1 + 2**-8 + 2**-30, 1 + 2**-11 + 2**-40]], dtype=torch.float64)
    for dtype in (torch.bfloat16, torch.float16):
        old = torch.zeros(1, 2, dtype=dtype, device=DEVICE)
        centroids, _ = centroids_from_sums(means.to(DEVICE), torch.ones(1, dtype=torch.int64, device=DEVICE), old,
                                           backend=backend)
        assert centroids.cpu().equal(means.to(dtype)) and centroids.cpu().equal(means.float().to(dtype))
