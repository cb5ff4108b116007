"""The E-step of a Gaussian mixture over a block of rows, without an (n, K) array.

For rows ``x`` (n, D) and a mixture's parameters as scikit-learn stores them (``weights`` (K,),
``means`` (K, D), ``precisions_cholesky``: (K, D, D) "full", (D, D) "tied", (K, D) "diag", (K,)
"spherical"), every row's weighted log densities ``log w_k + log N(x | mu_k, P_k^-1)`` are
computed over tiles of ``tile`` components: a first sweep keeps a running maximum and sum per row
(the online log-sum-exp), a second one recomputes each tile and adds its responsibilities
``r = exp(log p - lse)`` into the statistics. Rows go by chunks of ``ROW_CHUNK`` counted from the
block's first row (a function of the block only, so the bits never depend on how the data was
batched), and chunks add up in order in float64. Memory: O(ROW_CHUNK x tile) plus the statistics,
O(K x D) for diag / spherical, O(K x D^2) for full, O(D^2) for tied; never (n, K).

Three methods (``method=``). "float64": torch in float64 on every device (the statistics of EM,
and scikit-learn's numerics), online over component tiles as above; the CPU's method for diagonal
and spherical mixtures, and that of full ones wider than ``PRODUCTS_MAX_FULL_D``. "products"
(``gmm_estep/products.py``) keeps many rows' (rows, K) log densities between two dense products,
within a bounded 256 MiB (float32): in float64 for full and tied mixtures on every device (the
quadratic form expanded over x x^T; on 2 CPU cores an E-step of 100k x 16, K = 16 full took 0.09 s
against the float64 method's 0.15, 50k x 64, K = 256 full 5.1 s against 6.6, and 100k x 64,
K = 64 tied 0.23 s against 2.0), and in float32 for diagonal and spherical mixtures of float32 /
float16 / bfloat16 rows on CUDA (rows shifted by the mixture's mean, TF32 where torch allows it).
"fused" (``gmm_estep/triton.py``) never writes the densities, recomputing them in a second sweep
(3xTF32 for float32 accuracy), memory O(K x D). Each adds its chunks' sums in float64, in order.
:func:`gmm_estep_reference` is the torch twin: row chunks against all K at once.

Examples
--------
>>> import torch
>>> x = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
>>> w, mu, pc = torch.tensor([0.5, 0.5]), torch.tensor([[0.0], [10.0]]), torch.tensor([1.0, 1.0])
>>> out = gmm_estep(x, w, mu, pc, "spherical")
>>> out.resp_sum.round(decimals=3).tolist()
[2.0, 1.0]
>>> gmm_predict(x, w, mu, pc, "spherical").tolist()
[0, 0, 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ..common import use_triton

__all__ = ["COVARIANCE_TYPES", "METHODS", "EStepStats", "gmm_estep", "gmm_estep_blocks", "gmm_estep_reference",
           "gmm_log_resp", "gmm_predict", "gmm_score_samples", "gmm_stats", "weighted_log_prob"]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
ROW_CHUNK = 4096  # rows per chunk: the (chunk, tile) log densities stay a few MiB
TILE = 256  # components per tile
# The widest rows of the Triton kernels (``triton.py``): their row tile and sums stay on chip.
TRITON_MAX_D = 256


@dataclass
class EStepStats:
    """The additive statistics of a block (float64 tensors): ``log_likelihood`` (scalar, the sum
    of every row's log-sum-exp), ``resp_sum`` (K,) sum r, ``x_sum`` (K, D) sum r x, ``x2_sum``:
    (K, D) sum r x^2 for diag / spherical, (K, D, D) sum r x x^T for full, and (D, D) X^T X for
    tied (its sum over components, since a row's responsibilities add up to 1)."""

    log_likelihood: torch.Tensor
    resp_sum: torch.Tensor
    x_sum: torch.Tensor
    x2_sum: torch.Tensor


def _params(x, weights, means, prec_chol, covariance_type):
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, not {covariance_type!r}")
    as64 = lambda a: torch.as_tensor(a, dtype=torch.float64, device=x.device)
    return as64(weights), as64(means), as64(prec_chol)


def log_det_cholesky(prec_chol: torch.Tensor, covariance_type: str, n_features: int) -> torch.Tensor:
    """log det of every component's precision Cholesky factor: (K,), or a scalar for tied."""
    if covariance_type == "full":
        return torch.log(torch.diagonal(prec_chol, dim1=1, dim2=2)).sum(1)
    if covariance_type == "tied":
        return torch.log(torch.diagonal(prec_chol)).sum()
    if covariance_type == "diag":
        return torch.log(prec_chol).sum(1)
    return n_features * torch.log(prec_chol)


def weighted_log_prob(x, weights, means, prec_chol, covariance_type, lo=0, hi=None) -> torch.Tensor:
    """(n, hi - lo) ``log w_k + log N(x | k)`` for components ``lo:hi``, float64, as scikit-learn's
    ``_estimate_log_gaussian_prob`` computes it (the same expansions)."""
    x = x.to(torch.float64)
    hi = len(means) if hi is None else hi
    n, d = x.shape
    mu = means[lo:hi]
    if covariance_type in ("full", "tied"):
        out = torch.empty(n, hi - lo, dtype=torch.float64, device=x.device)
        for j, k in enumerate(range(lo, hi)):  # one (n, D) product per component: no (n, tile, D)
            pc = prec_chol[k] if covariance_type == "full" else prec_chol
            y = x @ pc - mu[j] @ pc
            out[:, j] = (y * y).sum(1)
        log_det = log_det_cholesky(prec_chol[lo:hi] if covariance_type == "full" else prec_chol, covariance_type, d)
    elif covariance_type == "diag":
        prec = prec_chol[lo:hi] ** 2
        out = (mu ** 2 * prec).sum(1) - 2.0 * (x @ (mu * prec).T) + (x * x) @ prec.T
        log_det = log_det_cholesky(prec_chol[lo:hi], covariance_type, d)
    else:
        prec = prec_chol[lo:hi] ** 2
        out = (mu * mu).sum(1) * prec - 2.0 * (x @ mu.T) * prec + torch.outer((x * x).sum(1), prec)
        log_det = log_det_cholesky(prec_chol[lo:hi], covariance_type, d)
    return -0.5 * (d * math.log(2 * math.pi) + out) + log_det + torch.log(weights[lo:hi])


def _tiles(k: int, tile: int):
    return [(lo, min(lo + tile, k)) for lo in range(0, k, tile)]


def _chunk_lse(x, params, covariance_type, tile):
    """Every row's log-sum-exp over the components, online over tiles (running max and sum)."""
    top = torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device)
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for lo, hi in _tiles(len(params[1]), tile):
        lp = weighted_log_prob(x, *params, covariance_type, lo, hi)
        new_top = torch.maximum(top, lp.max(1).values)
        # rows whose every density so far is 0 (-inf) keep a zero sum rather than exp(nan)
        scale = torch.where(torch.isinf(top), 0.0, torch.exp(top - new_top))
        total = total * scale + torch.exp(lp - new_top[:, None]).sum(1)
        top = new_top
    return top + torch.log(total)


def _stats_like(x, means, covariance_type) -> EStepStats:
    k, d = means.shape
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=x.device)
    second = {"full": (k, d, d), "tied": (d, d)}.get(covariance_type, (k, d))
    return EStepStats(zeros(()), zeros(k), zeros(k, d), zeros(*second))


def _add_chunk(stats, x, r, lo, hi, covariance_type):
    """Add a tile's responsibilities ``r`` (n, hi - lo) of rows ``x`` into ``stats``."""
    stats.resp_sum[lo:hi] += r.sum(0)
    stats.x_sum[lo:hi] += r.T @ x
    if covariance_type == "full":
        for j, k in enumerate(range(lo, hi)):
            stats.x2_sum[k] += (x * r[:, j:j + 1]).T @ x
    elif covariance_type != "tied":
        stats.x2_sum[lo:hi] += r.T @ (x * x)


def _estep_products(x, params, covariance_type, method, backend, prepared: dict, block_rows=None) -> EStepStats:
    """:func:`gmm_estep` in products (``products.py``; diag and spherical in float32 unless
    ``method="fused"``: the kernels of ``triton.py``), the sums back to those of the rows.
    ``prepared``: the operands made from the parameters alone, kept from call to call.
    ``block_rows``: diag and spherical products only, the statistics of each block stacked."""
    from . import products

    weights, means, prec_chol = params
    if "shift" not in prepared:
        prepared["shift"] = weights @ means
    shift = prepared["shift"]
    if covariance_type in ("full", "tied"):
        estep = products.full_estep_products if covariance_type == "full" else products.tied_estep_products
        return EStepStats(*estep(x, weights, means, prec_chol, shift, backend))
    precisions = prec_chol ** 2 if covariance_type == "diag" else (prec_chol ** 2)[:, None].expand_as(means)
    if method == "products":
        if "diag" not in prepared:  # a dozen small launches, once a pass rather than once a block
            prepared["diag"] = (*products.diag_operands(weights, means, precisions, shift), shift.float())
        log_likelihood, r, xs, x2s = products.diag_estep_products(x, *prepared["diag"], backend, block_rows)
        if block_rows is None:
            log_likelihood, r, xs, x2s = log_likelihood[0], r[0], xs[0], x2s[0]
    else:
        from .triton import diag_estep_triton

        lse, r, xs, x2s = diag_estep_triton(x, weights, means, precisions, shift)
        log_likelihood = lse.double().sum()
    # back to sums of the rows themselves, in float64: sum r x = sum r x' + s sum r, and so on
    return EStepStats(log_likelihood, r, xs + shift * r[..., None], x2s + 2 * shift * xs + shift ** 2 * r[..., None])


METHODS = ("auto", "float64", "products", "fused")
# Full covariances in products up to this width: F's D (D + 1) / 2 columns of x x^T grow past the
# D^2 a row costs a component in the float64 method's per-component products
PRODUCTS_MAX_FULL_D = 128


def _method(x, covariance_type: str, method: str, backend: str) -> str:
    """The E-step's method for these rows (see :func:`gmm_estep`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    float32_ok = covariance_type in ("diag", "spherical") and x.dtype != torch.float64
    float64_ok = covariance_type == "tied" or (covariance_type == "full" and x.shape[1] <= PRODUCTS_MAX_FULL_D)
    products_ok = float32_ok or float64_ok
    if method == "auto":  # float64 products on every device: faster than the tiles on a CPU too (module notes)
        return "products" if float64_ok or (float32_ok and x.is_cuda and backend != "torch") else "float64"
    if method == "products" and not products_ok:
        raise ValueError(f"method='products' takes float32 / half rows of a diag or spherical mixture, tied "
                         f"mixtures and full ones of up to {PRODUCTS_MAX_FULL_D} features: not {x.dtype} rows "
                         f"of a {covariance_type} one of {x.shape[1]}")
    if method == "fused" and not (float32_ok and x.shape[1] <= TRITON_MAX_D and use_triton(x, backend)):
        raise ValueError(f"method='fused' runs Triton kernels (CUDA, or backend='triton') on float32 / half rows "
                         f"of a diag or spherical mixture of up to {TRITON_MAX_D} features: not {x.dtype} rows of "
                         f"a {covariance_type} one of {x.shape[1]} on {x.device} with backend={backend!r}")
    return method


def gmm_estep(x, weights, means, precisions_cholesky, covariance_type: str, *, tile: int = TILE,
              method: str = "auto", backend: str = "auto", prepared: dict | None = None) -> EStepStats:
    """The E-step statistics of the rows ``x`` (n, D) under a mixture, never an (n, K) array.

    Parameters
    ----------
    x : tensor of shape (n, D)
    weights, means, precisions_cholesky : array-like or tensor
        As scikit-learn's ``GaussianMixture`` stores them (see the module's notes). Tensors
        already on ``x``'s device in float64 are used as they are (no copy per call).
    covariance_type : {"full", "tied", "diag", "spherical"}
    tile : int, default=256
        Components per tile of the float64 method.
    method : {"auto", "float64", "products", "fused"}, default="auto"
        "float64": torch in float64, online over component tiles (the CPU's, scikit-learn's
        numerics). "products": two dense products per launch of rows (``products.py``; memory
        O(rows x K), bounded): float32 for diag / spherical mixtures of float32 or half rows,
        float64 for tied ones and full ones of up to ``PRODUCTS_MAX_FULL_D`` features. "fused":
        the Triton kernels of ``triton.py`` (memory O(K x D), diag / spherical of float32 or half
        rows, up to ``TRITON_MAX_D`` features). "auto": "products" in float64 where it applies,
        in float32 on CUDA, "float64" otherwise.
    backend : {"auto", "torch", "triton"}, default="auto"
        Of the Triton kernels inside a method: "triton" also under ``TRITON_INTERPRET=1`` on the
        CPU; "torch" runs the products method's torch twin (and makes "auto" choose float64 for
        diag / spherical mixtures; tied and full ones take float64 products either way).
    prepared : dict, optional
        Kept by a caller that calls again with the same parameter tensors (a pass's blocks):
        the operands the products make from the parameters alone are made at the first call and
        kept there. A new dict for new parameters.

    Returns
    -------
    EStepStats
        float64 tensors on ``x``'s device.
    """
    params = _params(x, weights, means, precisions_cholesky, covariance_type)
    method = _method(x, covariance_type, method, backend) if len(x) else "float64"
    if method != "float64":
        return _estep_products(x, params, covariance_type, method, backend, {} if prepared is None else prepared)
    stats = _stats_like(x, params[1], covariance_type)
    for start in range(0, len(x), ROW_CHUNK):
        xc = x[start:start + ROW_CHUNK].to(torch.float64)
        lse = _chunk_lse(xc, params, covariance_type, tile)
        stats.log_likelihood += lse.sum()
        for lo, hi in _tiles(len(params[1]), tile):
            r = torch.exp(weighted_log_prob(xc, *params, covariance_type, lo, hi) - lse[:, None])
            _add_chunk(stats, xc, r, lo, hi, covariance_type)
        if covariance_type == "tied":
            stats.x2_sum += xc.T @ xc
    return stats


def gmm_estep_blocks(x, weights, means, precisions_cholesky, covariance_type: str, block_rows: int, *,
                     method: str = "auto", backend: str = "auto", prepared: dict | None = None) -> EStepStats:
    """:func:`gmm_estep` of each block of ``block_rows`` consecutive rows of ``x`` (the last may be
    shorter), stacked: every field has a leading dimension of blocks, and block ``b``'s are the
    bits of ``gmm_estep(x[b * block_rows:(b + 1) * block_rows], ...)``. Diagonal and spherical
    mixtures in float32 products take several blocks a launch (``products.estep_products_blocks``):
    a pass over rows on a GPU then costs the host a few launches a block, not thirty."""
    params = _params(x, weights, means, precisions_cholesky, covariance_type)
    method = _method(x, covariance_type, method, backend) if len(x) else "float64"
    if method == "products" and covariance_type in ("diag", "spherical"):
        return _estep_products(x, params, covariance_type, method, backend, {} if prepared is None else prepared,
                               block_rows)
    blocks = [gmm_estep(x[lo:lo + block_rows], *params, covariance_type, method=method, backend=backend,
                        prepared=prepared) for lo in range(0, max(len(x), 1), block_rows)]
    names = [f.name for f in fields(EStepStats)]
    return EStepStats(*(torch.stack([getattr(b, name) for b in blocks]) for name in names))


def gmm_estep_reference(x, weights, means, precisions_cholesky, covariance_type: str) -> EStepStats:
    """Torch twin of :func:`gmm_estep`: each chunk of rows against all K components at once
    (``torch.logsumexp`` over an (ROW_CHUNK, K) array)."""
    params = _params(x, weights, means, precisions_cholesky, covariance_type)
    stats = _stats_like(x, params[1], covariance_type)
    for start in range(0, len(x), ROW_CHUNK):
        xc = x[start:start + ROW_CHUNK].to(torch.float64)
        lp = weighted_log_prob(xc, *params, covariance_type)
        lse = torch.logsumexp(lp, 1)
        stats.log_likelihood += lse.sum()
        _add_chunk(stats, xc, torch.exp(lp - lse[:, None]), 0, len(params[1]), covariance_type)
        if covariance_type == "tied":
            stats.x2_sum += xc.T @ xc
    return stats


def gmm_stats(x, resp, covariance_type: str) -> EStepStats:
    """The statistics of :func:`gmm_estep` for responsibilities given by the caller (an EM
    start: one-hot k-means labels, random ones), ``resp`` (n, K); ``log_likelihood`` is 0."""
    x, resp = x.to(torch.float64), torch.as_tensor(resp, dtype=torch.float64, device=x.device)
    stats = _stats_like(x, torch.empty(resp.shape[1], x.shape[1], dtype=torch.float64), covariance_type)
    _add_chunk(stats, x, resp, 0, resp.shape[1], covariance_type)
    if covariance_type == "tied":
        stats.x2_sum += x.T @ x
    return stats


def gmm_score_samples(x, weights, means, precisions_cholesky, covariance_type: str, *,
                      tile: int = TILE) -> torch.Tensor:
    """(n,) float64: every row's log-likelihood ``log sum_k w_k N(x | k)``, online over tiles."""
    params = _params(x, weights, means, precisions_cholesky, covariance_type)
    return torch.cat([_chunk_lse(x[s:s + ROW_CHUNK].to(torch.float64), params, covariance_type, tile)
                      for s in range(0, len(x), ROW_CHUNK)]) if len(x) else x.new_zeros(0, dtype=torch.float64)


def gmm_log_resp(x, weights, means, precisions_cholesky, covariance_type: str, *,
                 tile: int = TILE) -> torch.Tensor:
    """(n, K) float64 log responsibilities (for ``predict_proba``: the caller asked for n x K)."""
    params = _params(x, weights, means, precisions_cholesky, covariance_type)
    out = torch.empty(len(x), len(params[1]), dtype=torch.float64, device=x.device)
    for start in range(0, len(x), ROW_CHUNK):
        xc = x[start:start + ROW_CHUNK].to(torch.float64)
        lse = _chunk_lse(xc, params, covariance_type, tile)
        for lo, hi in _tiles(len(params[1]), tile):
            out[start:start + len(xc), lo:hi] = weighted_log_prob(xc, *params, covariance_type, lo, hi) - lse[:, None]
    return out


def gmm_predict(x, weights, means, precisions_cholesky, covariance_type: str, *, tile: int = TILE) -> torch.Tensor:
    """(n,) int64: every row's component of highest responsibility (the first one on ties, as
    ``argmax``), online over tiles."""
    params = _params(x, weights, means, precisions_cholesky, covariance_type)
    labels = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), ROW_CHUNK):
        xc = x[start:start + ROW_CHUNK].to(torch.float64)
        best = torch.full((len(xc),), -math.inf, dtype=torch.float64, device=x.device)
        for lo, hi in _tiles(len(params[1]), tile):
            value, index = weighted_log_prob(xc, *params, covariance_type, lo, hi).max(1)
            better = value > best  # strictly: an earlier tile keeps a tie
            best = torch.where(better, value, best)
            labels[start:start + len(xc)] = torch.where(better, index + lo, labels[start:start + len(xc)])
    return labels
