"""The Triton kernel of ``nearest`` against its torch twin and a float64 brute force.

Without a GPU the kernel runs in Triton's CPU interpreter (conftest.py).
"""

import numpy as np
import pytest
import torch
from kernel_checks import DEVICE, RTOL, brute_force_distances

from mega_taxonomy.ops import nearest
from mega_taxonomy.ops.assign import nearest_reference


def check_against_brute_force(x, c, dist, idx, metric, rtol):
    full = brute_force_distances(x, c, metric)
    best = full.min(1).values
    chosen = full.gather(1, idx.cpu()[:, None]).squeeze(1)
    scale = full.abs().max(1).values + 1e-12
    bad = torch.nonzero(chosen - best > rtol * scale).squeeze(1)
    assert len(bad) == 0, f"rows {bad[:10].tolist()} chose a worse centroid: {(chosen - best)[bad[:10]]}"
    torch.testing.assert_close(dist.double().cpu(), chosen, rtol=10 * rtol, atol=10 * rtol * float(scale.max()))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,k,d", [(1, 1, 8), (300, 70, 37), (257, 200, 64)])
def test_kernel_matches_brute_force_and_twin(metric, dtype, n, k, d):
    rng = np.random.default_rng(n + k + d)
    centers = rng.normal(size=(k, d)) * 3
    x = torch.tensor(centers[rng.integers(k, size=n)] + rng.normal(size=(n, d)), dtype=dtype, device=DEVICE)
    c = torch.tensor(centers + rng.normal(size=(k, d)) * 0.1, dtype=dtype, device=DEVICE)
    dist, idx = nearest(x, c, metric=metric, backend="triton")
    assert dist.shape == (n,) and idx.dtype == torch.int64
    check_against_brute_force(x, c, dist, idx, metric, RTOL[dtype])
    twin_d, twin_i = nearest_reference(x, c, metric=metric)
    agree = (twin_i == idx).float().mean().item()
    assert agree >= 0.999 or n < 1000 and agree >= 1 - 1 / n


def test_ties_go_to_the_lowest_index_across_tiles():
    x = torch.zeros(3, 8, device=DEVICE)
    c = torch.ones(300, 8, device=DEVICE)  # equal distances over several centroid tiles
    _, idx = nearest(x, c, backend="triton")
    assert idx.tolist() == [0, 0, 0]


@pytest.mark.parametrize("tf32", [False, True])  # float32 at D <= 128: 128 x 256 tiles, or 128 x 128 in TF32
def test_ties_inside_a_tile_go_to_the_lower_column(tf32):
    """Duplicate centroids, lowest copy 8 or 3. In a 128-column tile, 8 and 72 share a thread of the
    tensor-core layout, 3 and 100 do not; in a 256-column tile, 8 and 200 share one, 259 and 300 do
    not; the others are in later tiles. The lowest column must win every time.

    Small integers, so that every product and sum is exact: the copies tie in any summation order
    (a BLAS kernel under the CPU interpreter, TF32 or not on a GPU), not only in the one that
    happens to add their columns alike."""
    g = torch.Generator().manual_seed(3)
    c = torch.randint(-8, 9, (320, 16), generator=g).float()
    c[[72, 200]] = c[8].clone()
    c[[100, 259, 300]] = c[3].clone()
    x = torch.cat([c[[8, 3]] + torch.randint(-1, 2, (2, 16), generator=g), c[[72, 200, 100, 259, 300]]])
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        _, idx = nearest(x.to(DEVICE), c.to(DEVICE), backend="triton")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert idx.tolist() == [8, 3, 8, 8, 3, 3, 3]


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        nearest(torch.zeros(2, 3), torch.zeros(2, 3), backend="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_resident_row_tile_config(dtype):
    from mega_taxonomy.ops.assign.triton import nearest_triton

    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 40, generator=g).to(dtype).to(DEVICE)
    c = torch.randn(90, 40, generator=g).to(dtype).to(DEVICE)
    cfg = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=64, num_warps=4, num_stages=2, X_RESIDENT=True)
    bias = c.float().pow(2).sum(1)
    d_res, i_res = nearest_triton(x, c, bias, 2.0, exact=True, config=cfg)
    d_loop, i_loop = nearest_triton(x, c, bias, 2.0, exact=True, config={**cfg, "BLOCK_K": 16, "X_RESIDENT": False})
    assert (i_res == i_loop).float().mean().item() >= 0.99
    check_against_brute_force(x, c, d_res + x.float().pow(2).sum(1), i_res, "euclidean", RTOL[dtype])


def test_prepared_centroids_follow_in_place_changes():
    """``fused`` keeps the last centroids' operands: a change in place, or other centroids, is seen."""
    from mega_taxonomy.ops import OperandCache

    cache = OperandCache()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 16, generator=g).to(DEVICE)
    c = torch.randn(7, 16, generator=g).to(DEVICE)
    before = nearest(x, c, backend="triton", cache=cache)
    c.mul_(-1.0)
    after = nearest(x, c, backend="triton", cache=cache)
    fresh = nearest(x, c.clone(), backend="triton")
    assert torch.equal(after[1], fresh[1]) and torch.equal(after[0], fresh[0])
    assert not torch.equal(before[1], after[1])


def test_rows_norms_are_kept_while_the_same_rows_come_back_unchanged(monkeypatch):
    """The rows' squared norms are read once for the passes over one tensor (a fit of rows on the
    GPU): computed again after a change in place, for other rows of equal values, and let go with
    their rows; the distances those of a call without a cache."""
    import gc

    from mega_taxonomy.ops import OperandCache
    from mega_taxonomy.ops.assign import triton as assign_triton

    computed = []
    norms = assign_triton.squared_norms_triton
    monkeypatch.setattr(assign_triton, "squared_norms_triton", lambda x: computed.append(len(x)) or norms(x))
    cache = OperandCache()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 16, generator=g).to(DEVICE)
    c = torch.randn(6, 16, generator=g).to(DEVICE)
    first = nearest(x, c, backend="triton", cache=cache)
    again = nearest(x, c, backend="triton", cache=cache)
    assert len(computed) == 1 and torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    x[:5] *= 3.0
    changed = nearest(x, c, backend="triton", cache=cache)
    assert len(computed) == 2
    fresh = nearest(x.clone(), c, backend="triton")
    assert torch.equal(changed[0], fresh[0]) and torch.equal(changed[1], fresh[1])
    other = x.clone()
    nearest(other, c, backend="triton", cache=cache)
    assert len(computed) == 4
    del other
    gc.collect()
    assert cache._rows[1] is None


def test_prepared_centroids_are_let_go_with_their_centroids():
    import gc

    from mega_taxonomy.ops import OperandCache

    cache = OperandCache()
    x = torch.randn(10, 8).to(DEVICE)
    c = torch.randn(3, 8).to(DEVICE)
    nearest(x, c, backend="triton", cache=cache)
    assert cache.holds(c)
    del c
    gc.collect()
    assert cache.key is None and cache._centroids[1] is None


def test_centroids_prepared_ahead_are_the_ones_the_next_assignment_uses(monkeypatch):
    """``prepare_ahead`` prepares the next centroids as the last ones were (the rows' dtype): the
    next assignment prepares nothing, and gives what fresh centroids give."""
    from mega_taxonomy.ops import OperandCache, common

    cache = OperandCache()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 24, generator=g).to(DEVICE, torch.float16)
    c, following = (torch.randn(9, 24, generator=g).to(DEVICE) for _ in range(2))
    nearest(x, c, backend="triton", cache=cache)
    cache.prepare_ahead(following)
    assert cache.holds(following) and cache.key[2] == torch.float16

    def prepare_again(v):
        raise AssertionError("prepared again")

    with monkeypatch.context() as m:
        m.setattr(common, "squared_norms", prepare_again)
        ahead = nearest(x, following, backend="triton", cache=cache)
    fresh = nearest(x, following.clone(), backend="triton")
    assert torch.equal(ahead[0], fresh[0]) and torch.equal(ahead[1], fresh[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,d", [(1, 3), (70, 37), (33, 300)])
def test_squared_norms_kernel_matches_float64(dtype, n, d):
    """The rows' squared norms of the fused kernels' epilogue, also for rows of a wider tensor."""
    from mega_taxonomy.ops.assign.triton import squared_norms_triton

    wide = torch.tensor(np.random.default_rng(n + d).normal(size=(n, d + 5)) * 4, dtype=dtype, device=DEVICE)
    x = wide[:, 2:2 + d]  # rows d + 5 apart
    got = squared_norms_triton(x)
    assert got.dtype == torch.float32 and got.shape == (n,)
    torch.testing.assert_close(got.double().cpu(), (x.double() ** 2).sum(1).cpu(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tensor_descriptor_kernel_matches_pointer_kernel(dtype):
    """The TMA kernel (tiles through tensor descriptors, zeros past the edges) against the pointer
    kernel, with N, K and D none a multiple of its tiles; IEEE products: the same labels."""
    from mega_taxonomy.ops.assign.triton import nearest_triton, tma_ready

    if DEVICE != "cpu" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("a GPU without TMA (compute capability below 9)")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(150, 40, generator=g).to(dtype).to(DEVICE)
    c = torch.randn(70, 40, generator=g).to(dtype).to(DEVICE)
    assert tma_ready(x, c)  # 80- and 160-byte rows
    assert not tma_ready(x[:, :37].contiguous(), c[:, :37].contiguous())  # 74-byte rows
    bias = c.float().pow(2).sum(1)
    tiles = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2)
    d_tma, i_tma = nearest_triton(x, c, bias, 2.0, exact=True, config={**tiles, "TMA": True})
    d_ptr, i_ptr = nearest_triton(x, c, bias, 2.0, exact=True, config=tiles)
    assert torch.equal(i_tma, i_ptr)
    torch.testing.assert_close(d_tma, d_ptr, rtol=1e-6, atol=1e-5)
    check_against_brute_force(x, c, d_tma + x.float().pow(2).sum(1), i_tma, "euclidean", RTOL[dtype])


@pytest.mark.parametrize("dtype,d", [(torch.float32, 32), (torch.float32, 7), (torch.float16, 64)])
@pytest.mark.parametrize("k", [1, 70, 128])
def test_resident_centroids_kernel_matches_pointer_kernel(dtype, d, k):
    """All centroids in one tile, three programs walking 8 row tiles (the last one short), against
    the pointer kernel: IEEE products, the same labels; the default tiles where K <= 128 and the
    rows are at most 128 bytes."""
    from mega_taxonomy.ops.assign.triton import default_config, nearest_triton, resident_config, tma_ready

    if DEVICE != "cpu" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("a GPU without TMA (compute capability below 9)")
    g = torch.Generator().manual_seed(d + k)
    x = torch.randn(1000, d, generator=g).to(dtype)
    c = torch.randn(k, d, generator=g).to(dtype)
    x, c = torch.nn.functional.pad(x, (0, 8 - d % 8 if d % 8 else 0)).to(DEVICE), c.to(DEVICE)  # 16-byte rows
    c = torch.nn.functional.pad(c, (0, x.shape[1] - d))
    assert tma_ready(x, c)
    assert default_config(x.shape[1], x.element_size(), True, True, k) == resident_config(k, x.shape[1], x.element_size())
    bias, norms = c.float().pow(2).sum(1), x.float().pow(2).sum(1)
    config = {**resident_config(k, x.shape[1], x.element_size()), "PROGRAMS": 3}
    d_res, i_res = nearest_triton(x, c, bias, 2.0, exact=True, norms=norms, config=config)
    d_ptr, i_ptr = nearest_triton(x, c, bias, 2.0, exact=True, norms=norms,
                                  config=dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2))
    assert torch.equal(i_res, i_ptr)
    torch.testing.assert_close(d_res, d_ptr, rtol=1e-5, atol=1e-4)
    check_against_brute_force(x, c, d_res, i_res, "euclidean", RTOL[dtype])


@pytest.mark.parametrize("tma", [False, True])
def test_norms_added_in_the_kernel_are_the_bits_of_adding_them_after(tma):
    """Given the rows' squared norms, the kernel returns the distances: the float32 sum and the
    clamp at zero that ``common.finish`` does after it, the same bits (both kernels: descriptor
    loads and pointer loads)."""
    from mega_taxonomy.ops.common import finish
    from mega_taxonomy.ops.assign.triton import default_config, nearest_triton, squared_norms_triton

    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 32, generator=g).to(DEVICE)
    c = torch.cat([x[:5], torch.randn(40, 32, generator=g).to(DEVICE)])  # distance 0: the clamp at work
    bias, norms = c.float().pow(2).sum(1), squared_norms_triton(x)
    config = {**default_config(32, 4, True, tma), "TMA": tma}
    d, i = nearest_triton(x, c, bias, 2.0, exact=True, config=config)
    d_norms, i_norms = nearest_triton(x, c, bias, 2.0, exact=True, norms=norms, config=config)
    assert torch.equal(i_norms, i) and torch.equal(d_norms, finish(d, norms))
    assert (d_norms[:5] >= 0).all() and (d_norms >= 0).all()
