"""The tiled E-step against its torch twin and a float64 brute force (scipy's densities), for
every covariance type, tiles smaller than K, row chunks crossed, and per-row outputs."""

import math

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from mega_taxonomy.ops.gmm_estep import (
    ROW_CHUNK,
    gmm_estep,
    gmm_estep_reference,
    gmm_log_resp,
    gmm_predict,
    gmm_score_samples,
    gmm_stats,
)

TYPES = ["full", "tied", "diag", "spherical"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton tests: compiled there, else interpreted


def mixture(ctype, k, d, seed):
    """Random parameters and, per component, the full covariance they stand for."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.2, 1, k)
    weights /= weights.sum()
    means = rng.normal(size=(k, d)) * 2
    if ctype == "full":
        a = rng.normal(size=(k, d, d))
        cov = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
        pc = np.array([linalg.solve_triangular(linalg.cholesky(c, lower=True), np.eye(d), lower=True).T for c in cov])
        full = cov
    elif ctype == "tied":
        a = rng.normal(size=(d, d))
        cov = a @ a.T + 0.5 * np.eye(d)
        pc = linalg.solve_triangular(linalg.cholesky(cov, lower=True), np.eye(d), lower=True).T
        full = np.repeat(cov[None], k, 0)
    elif ctype == "diag":
        cov = rng.uniform(0.3, 2, (k, d))
        pc, full = 1 / np.sqrt(cov), np.array([np.diag(c) for c in cov])
    else:
        cov = rng.uniform(0.3, 2, k)
        pc, full = 1 / np.sqrt(cov), np.array([c * np.eye(d) for c in cov])
    return (weights, means, pc), full


def brute(x, weights, means, full):
    """float64 (n, K) weighted log densities from scipy, the log-sum-exp and the statistics."""
    lp = np.stack([np.log(w) + multivariate_normal(m, c).logpdf(x) for w, m, c in zip(weights, means, full)], 1)
    lp = lp.reshape(len(x), -1)
    lse = logsumexp(lp, axis=1)
    r = np.exp(lp - lse[:, None])
    return lp, lse, r


@pytest.mark.parametrize("ctype", TYPES)
@pytest.mark.parametrize("n,k,d,tile", [(7, 5, 3, 2), (50, 1, 1, 256), (ROW_CHUNK + 37, 6, 2, 4)])
def test_op_twin_and_brute_force_agree(ctype, n, k, d, tile):
    params, full = mixture(ctype, k, d, seed=n + k)
    x = np.random.default_rng(1).normal(size=(n, d)) * 2
    _, lse, r = brute(x, params[0], params[1], full)
    op = gmm_estep(torch.from_numpy(x), *params, ctype, tile=tile)
    twin = gmm_estep_reference(torch.from_numpy(x), *params, ctype)
    x2 = {"full": np.einsum("nk,ni,nj->kij", r, x, x), "tied": x.T @ x}.get(ctype, r.T @ (x * x))
    expected = [lse.sum(), r.sum(0), r.T @ x, x2]
    for got in (op, twin):
        values = [got.log_likelihood, got.resp_sum, got.x_sum, got.x2_sum]
        for value, want in zip(values, expected):
            assert value.dtype == torch.float64
            np.testing.assert_allclose(value.numpy(), want, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(gmm_score_samples(torch.from_numpy(x), *params, ctype, tile=tile).numpy(), lse,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.exp(gmm_log_resp(torch.from_numpy(x), *params, ctype, tile=tile).numpy()), r,
                               rtol=1e-10, atol=1e-12)
    assert gmm_predict(torch.from_numpy(x), *params, ctype, tile=tile).tolist() == r.argmax(1).tolist()


@pytest.mark.parametrize("ctype", TYPES)
def test_float32_rows_are_computed_in_float64(ctype):
    params, _ = mixture(ctype, 4, 3, seed=2)
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(40, 3))).float()
    got = gmm_estep(x, *params, ctype, tile=3)
    want = gmm_estep(x.double(), *params, ctype, tile=3)
    assert torch.equal(got.x_sum, want.x_sum) and torch.equal(got.log_likelihood, want.log_likelihood)


def test_statistics_of_given_responsibilities():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    resp = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    s = gmm_stats(x, resp, "diag")
    assert s.resp_sum.tolist() == [1.5, 1.5]
    assert s.x_sum.tolist() == [[3.5, 5.0], [5.5, 7.0]]
    assert s.x2_sum.tolist() == [[13.5, 22.0], [21.5, 34.0]]
    assert float(s.log_likelihood) == 0.0


def test_far_rows_keep_finite_statistics():
    """A row far from every component: its densities underflow, its log-sum-exp does not."""
    params, _ = mixture("diag", 3, 2, seed=4)
    x = torch.tensor([[1e3, -1e3], [0.0, 0.0]], dtype=torch.float64)
    s = gmm_estep(x, *params, "diag", tile=1)
    assert torch.isfinite(s.log_likelihood) and torch.isfinite(s.x2_sum).all()
    np.testing.assert_allclose(float(s.resp_sum.sum()), 2.0)


def test_unknown_covariance_type():
    with pytest.raises(ValueError, match="covariance_type"):
        gmm_estep(torch.zeros(2, 2, dtype=torch.float64), [1.0], [[0.0, 0.0]], [1.0], "banana")


FLOAT32_METHODS = [("fused", "triton"), ("products", "triton"), ("products", "torch")]


@pytest.mark.parametrize("method,backend", FLOAT32_METHODS)
@pytest.mark.parametrize("ctype", ["diag", "spherical"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,k,d", [(300, 5, 3), (4500, 70, 20)])  # K past one tile, rows past one split
def test_float32_methods_match_float64(method, backend, ctype, dtype, n, k, d):
    """The float32 methods (Triton kernels in the CPU interpreter here, and the products' torch
    twin) against the float64 twin, on rows offset far from the origin (the shift keeps the
    expansion's float32 terms small)."""
    (weights, means, pc), _ = mixture(ctype, k, d, seed=n + k)
    rng = np.random.default_rng(n)
    offset = 50.0
    x = torch.from_numpy(rng.normal(size=(n, d)) * 2 + means[rng.integers(0, k, n)] + offset)
    means = means + offset
    x_in = x.to(dtype)
    ref = gmm_estep_reference(x_in.double(), weights, means, pc, ctype)
    def run():
        return gmm_estep(x_in.to(DEVICE), weights, means, pc, ctype, method=method, backend=backend)

    got = run()
    assert got.x_sum.dtype == torch.float64 and got.x2_sum.shape == ref.x2_sum.shape
    got = type(got)(**{name: t.cpu() for name, t in vars(got).items()})
    np.testing.assert_allclose(got.log_likelihood.item(), ref.log_likelihood.item(), rtol=1e-5)
    np.testing.assert_allclose(got.resp_sum.numpy(), ref.resp_sum.numpy(), rtol=1e-4, atol=1e-3)
    scale = np.abs(ref.x_sum.numpy()).max()
    np.testing.assert_allclose(got.x_sum.numpy(), ref.x_sum.numpy(), rtol=1e-4, atol=1e-4 * scale)
    scale2 = np.abs(ref.x2_sum.numpy()).max()
    np.testing.assert_allclose(got.x2_sum.numpy(), ref.x2_sum.numpy(), rtol=1e-4, atol=1e-4 * scale2)
    again = run()
    assert torch.equal(again.x2_sum.cpu(), got.x2_sum) and torch.equal(again.log_likelihood.cpu(), got.log_likelihood)


@pytest.mark.parametrize("k", [7, 300, 5000])  # one tile of a row, and rows wider than RESP_TILE (two sweeps)
def test_responsibilities_kernel_matches_torch(k):
    """``_resp_kernel`` (interpreted here) against torch's logsumexp and exp, rows past one program,
    and where a row is one tile, the responsibilities' column sums of every ``RESP_GROUP`` rows
    (the last group short)."""
    from mega_taxonomy.ops.gmm_estep.products import RESP_GROUP, responsibilities_

    n = RESP_GROUP + 37
    logp = torch.from_numpy(np.random.default_rng(k).normal(size=(n, k)) * 30).float().to(DEVICE)
    want = logp.clone()
    want_lse, none = responsibilities_(want, backend="torch")
    got = logp.clone()
    lse, sums = responsibilities_(got, backend="triton")
    torch.testing.assert_close(lse, want_lse, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(n, device=DEVICE), rtol=1e-5, atol=1e-5)
    assert none is None and (sums is None) == (k == 5000)
    if sums is not None:
        groups = torch.stack([want[:RESP_GROUP].sum(0), want[RESP_GROUP:].sum(0)])
        torch.testing.assert_close(sums, groups, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("launch_elements", [None, 2048])
def test_products_chunks_depend_on_the_block_alone(launch_elements, monkeypatch):
    """Chunks counted from the block's first row: a block of three whole chunks (in one launch, a
    batched product; or, with launches of 2,048 elements, in launches of one chunk of 512 rows)
    and a part sums, in float64, to the statistics of its float64 twin."""
    from mega_taxonomy.ops.gmm_estep import products

    if launch_elements:
        monkeypatch.setattr(products, "LAUNCH_ELEMENTS", launch_elements)
    (weights, means, pc), _ = mixture("diag", 3, 4, seed=9)
    launches = -(-(3 * products.chunk_rows(3) + 300) // products.launch_rows(3, 4))
    assert (launches, products.chunk_rows(3)) == ((1, 8192) if launch_elements is None else (4, 512))
    x = torch.from_numpy(np.random.default_rng(9).normal(size=(3 * products.chunk_rows(3) + 300, 4)) * 2)
    got = gmm_estep(x.float(), weights, means, pc, "diag", method="products", backend="torch")
    ref = gmm_estep_reference(x.float().double(), weights, means, pc, "diag")
    np.testing.assert_allclose(got.x2_sum.numpy(), ref.x2_sum.numpy(), rtol=1e-5)
    np.testing.assert_allclose(got.log_likelihood.item(), ref.log_likelihood.item(), rtol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("ctype,method", [("diag", "products"), ("spherical", "products"), ("full", "auto")])
def test_blocks_at_once_are_each_block_alone_to_the_bit(backend, ctype, method, monkeypatch):
    """``gmm_estep_blocks``: each block's statistics are the bits of ``gmm_estep`` on the block
    alone, whether its launch holds it alone or among others (here launches of two blocks of two
    chunks, then one, then a short block of its own), and close to the float64 twin's."""
    from mega_taxonomy.ops.gmm_estep import gmm_estep_blocks, products

    monkeypatch.setattr(products, "CHUNK_ROWS", 256)
    monkeypatch.setattr(products, "LAUNCH_ELEMENTS", 1024 * 11)  # F of 11 columns: launches of 1,024 rows
    (weights, means, pc), _ = mixture(ctype, 3, 5, seed=12)
    block_rows = 512
    assert products.grouped_blocks(block_rows, 3, 11) == 2
    rng = np.random.default_rng(12)
    x = torch.from_numpy(rng.normal(size=(3 * block_rows + 100, 5)) * 2 + 3).float().to(DEVICE)
    at_once = gmm_estep_blocks(x, weights, means, pc, ctype, block_rows, method=method, backend=backend)
    assert at_once.log_likelihood.shape == (4,) and at_once.x_sum.shape == (4, 3, 5)
    for b, lo in enumerate(range(0, len(x), block_rows)):
        alone = gmm_estep(x[lo:lo + block_rows], weights, means, pc, ctype, method=method, backend=backend)
        ref = gmm_estep_reference(x[lo:lo + block_rows].double().cpu(), weights, means, pc, ctype)
        for name in ("log_likelihood", "resp_sum", "x_sum", "x2_sum"):
            got = getattr(at_once, name)[b]
            assert torch.equal(got, getattr(alone, name)), (b, name)
            np.testing.assert_allclose(got.cpu().numpy(), getattr(ref, name).numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("columns", [None, 70])  # one column (lse), or many by column tiles (sums of r)
def test_block_sums_are_each_block_in_a_fixed_order(backend, columns):
    """``products.block_sums``: a block's float64 sums are the same bits alone or among others, and
    within float64 rounding of the exact sums."""
    from mega_taxonomy.ops.gmm_estep.products import block_sums

    shape = (5 * 3000,) if columns is None else (5 * 3000, columns)
    values = torch.from_numpy(np.random.default_rng(13).normal(size=shape) * 1e3).float().to(DEVICE)
    together = block_sums(values, 3000, backend)
    assert together.shape == (5,) + shape[1:] and together.dtype == torch.float64
    for b in range(5):
        block = values[b * 3000:(b + 1) * 3000]
        alone = block_sums(block, 3000, backend)
        assert torch.equal(alone, together[b:b + 1])
        exact = [math.fsum(column) for column in block.double().reshape(3000, -1).T.tolist()]
        bound = 1e-9 * block.double().abs().reshape(3000, -1).sum(0).cpu().numpy()
        assert (np.abs(together[b].reshape(-1).cpu().numpy() - exact) <= bound).all()


def test_chunk_fold_kernel_is_its_twin():
    """``products.fold_chunks``: the Triton kernel (interpreted here) adds a block's chunks in the
    twin's order, to the bit, from a strided view of the chunk sums."""
    from mega_taxonomy.ops.gmm_estep.products import fold_chunks

    per_chunk = torch.from_numpy(np.random.default_rng(14).normal(size=(3, 5, 9, 7)) * 1e4).float().to(DEVICE)
    got, want = (torch.empty(3, 8, 7, dtype=torch.float64, device=DEVICE) for _ in range(2))
    fold_chunks(per_chunk, 8, got, backend="triton")
    fold_chunks(per_chunk, 8, want, backend="torch")
    assert torch.equal(got, want)
    np.testing.assert_allclose(got.cpu().numpy(), per_chunk[:, :, :8].double().sum(1).cpu().numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(70, 1), (45, 7), (33, 130)])  # 1 to 3 columns of padding; D past one column tile
def test_diag_features_kernel_is_its_twin(dtype, n, d):
    """``products.diag_features``: the Triton kernel (interpreted here) writes the twin's F =
    [x - shift, (x - shift)^2, 1, zeros] to the bit, from rows with a stride of their own."""
    from mega_taxonomy.ops.gmm_estep.products import diag_features

    rng = np.random.default_rng(15)
    rows = torch.from_numpy(rng.normal(size=(n, d + 3)) * 50).to(dtype).to(DEVICE)[:, 2:2 + d]  # strided
    shift = torch.from_numpy(rng.normal(size=d) * 10).float().to(DEVICE)
    got = diag_features(d, shift, backend="triton")(rows)
    want = diag_features(d, shift, backend="torch")(rows)
    assert got.shape == want.shape == (n, 2 * d + 1 + (-(2 * d + 1) % 4))
    assert torch.equal(got, want)
    assert torch.equal(got[:, 2 * d], torch.ones(n, device=DEVICE))


@pytest.mark.parametrize("ctype", ["full", "tied"])
@pytest.mark.parametrize("launch_elements", [None, 4096])  # one launch; launches of one chunk of 256 rows
def test_float64_products_match_the_float64_method(ctype, launch_elements, monkeypatch):
    """Full and tied mixtures in float64 products (the quadratic form expanded over the upper
    triangle of x x^T, or the shared precision's term as a column) against the float64 twin and
    scipy's densities, on rows offset far from the origin; chunks and launches crossed."""
    from mega_taxonomy.ops.gmm_estep import products

    if launch_elements:
        monkeypatch.setattr(products, "LAUNCH_ELEMENTS", launch_elements)
    params, full = mixture(ctype, 5, 4, seed=11)
    rng = np.random.default_rng(11)
    offset = 30.0
    x = rng.normal(size=(1100, 4)) * 2 + params[1][rng.integers(0, 5, 1100)] + offset
    params = (params[0], params[1] + offset, params[2])
    _, lse, r = brute(x, params[0], params[1], full)
    got = gmm_estep(torch.from_numpy(x), *params, ctype, method="products")
    x2 = np.einsum("nk,ni,nj->kij", r, x, x) if ctype == "full" else x.T @ x
    expected = [lse.sum(), r.sum(0), r.T @ x, x2]
    for value, want in zip([got.log_likelihood, got.resp_sum, got.x_sum, got.x2_sum], expected):
        assert value.dtype == torch.float64 and value.shape == np.shape(want)
        np.testing.assert_allclose(value.numpy(), want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_methods_refuse_what_they_do_not_take():
    (weights, means, pc), _ = mixture("diag", 2, 3, seed=1)
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="method='products' takes float32"):
        gmm_estep(x.double(), weights, means, pc, "diag", method="products")
    with pytest.raises(ValueError, match="method must be one of"):
        gmm_estep(x, weights, means, pc, "diag", method="fast")
    with pytest.raises(ValueError, match="method='fused' runs Triton kernels"):
        gmm_estep(x.cpu(), weights, means, pc, "diag", method="fused", backend="torch")
    (weights, means, pc), _ = mixture("full", 2, 130, seed=1)
    with pytest.raises(ValueError, match="full ones of up to 128 features"):
        gmm_estep(torch.zeros(4, 130), weights, means, pc, "full", method="products")
