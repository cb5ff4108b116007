"""Nearest-centroid assignment of a batch of vectors, and all (n, K) distances.

Distances are squared L2 computed as ``|x|^2 - 2 x.c + |c|^2`` (one matrix product), or cosine
distance ``1 - cos(x, c)``. Work is tiled over rows and centroids so that memory stays
O(rows_tile x K_tile), never n x K: a running argmin carries the best so far from one centroid
tile to the next.

``nearest`` is the dispatcher and ``nearest_reference`` its torch twin (the CPU path for many
centroids, and the oracle of the Triton kernel on CUDA). Backends: Triton on CUDA
(``assign/triton.py``); numba on the CPU, the compiled loop of ``grouped_assign/numba.py`` (one
group) for up to ``MAX_CHILDREN`` centroids; the torch twin otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from ..common import (
    METRICS,
    OperandCache,
    check,
    compute_dtype,
    finish,
    for_row_tiles,
    fused,
    normalize_rows,
    prepare,
    tiles,
    use_triton,
)
from ..grouped_assign.numba import MAX_CHILDREN, grouped_nearest_numba

__all__ = ["METRICS", "OperandCache", "compute_dtype", "distances", "nearest", "nearest_reference", "normalize_rows"]


def distances(x: torch.Tensor, centroids: torch.Tensor, *, metric: str = "euclidean") -> torch.Tensor:
    """All (n, K) distances: for outputs that are n x K by definition (``transform``) and for
    small problems such as k-means++ on a sample."""
    check(x, centroids, metric)
    x, x_sq, operand = prepare(x, centroids, metric)
    return finish(operand.tile(operand.rows(x), 0, centroids.shape[0]), x_sq)


def _min(tile):
    """(values, first index) of each row's minimum; numpy's argmin is 3x faster than torch's
    ``min(dim)`` on the CPU."""
    if tile.device.type != "cpu":
        return tile.min(1)
    a = tile.numpy()
    i = a.argmin(1)
    return torch.from_numpy(a[np.arange(len(a)), i]), torch.from_numpy(i)


def nearest_reference(x, centroids, *, metric="euclidean"):
    """Torch twin of :func:`nearest`."""
    check(x, centroids, metric)
    x, x_sq, operand = prepare(x, centroids, metric)
    n, k = x.shape[0], centroids.shape[0]
    row_tile, k_tile = tiles(n, k)
    best_d = torch.empty(n, dtype=x.dtype, device=x.device)
    best_i = torch.empty(n, dtype=torch.int64, device=x.device)

    def work(rows):
        xr = operand.rows(x[rows])
        d_run = i_run = None
        for k0 in range(0, k, k_tile):
            d, i = _min(operand.tile(xr, k0, k0 + k_tile, scratch=True))
            i += k0
            if d_run is None:
                d_run, i_run = d, i
            else:
                # Strictly smaller wins, so ties keep the lower centroid index.
                better = d < d_run
                d_run = torch.where(better, d, d_run)
                i_run = torch.where(better, i, i_run)
        best_d[rows], best_i[rows] = finish(d_run, None if x_sq is None else x_sq[rows]), i_run

    for_row_tiles(n, row_tile, work, operand.on_cpu)
    return best_d, best_i


def nearest_triton_dispatch(x, centroids, metric, cache=None):
    """``nearest`` through the Triton kernel."""
    from .triton import nearest_triton

    return fused(lambda x, c, bias, alpha, exact, norms=None: nearest_triton(x, c, bias, alpha, exact=exact, norms=norms),
                 x, centroids, metric, adds_norms=True, cache=cache)


def nearest(x: torch.Tensor, centroids: torch.Tensor, *, metric: str = "euclidean", backend: str = "auto",
            cache: OperandCache | None = None):
    """Nearest centroid of every row of ``x``.

    Parameters
    ----------
    x : torch.Tensor of shape (n, d)
        float16, bfloat16, float32 or float64; computed in float32 (float64 stays float64).
    centroids : torch.Tensor of shape (K, d)
    metric : {"euclidean", "cosine"}, default="euclidean"
        Squared L2, or ``1 - cos``.
    backend : {"auto", "torch", "triton"}, default="auto"
        "auto": the Triton kernel for fp16 / bf16 / fp32 tensors on CUDA; on the CPU numba, the
        compiled kernel of ``grouped_assign/numba.py``, for up to ``MAX_CHILDREN`` centroids, the
        torch twin otherwise. See "Precision" below.
    cache : OperandCache, optional
        Where the centroids prepared for the Triton kernel are kept from call to call (a pass's
        blocks share one); without it they are prepared every call.

    Returns
    -------
    distances : torch.Tensor of shape (n,)
        In the compute dtype.
    indices : torch.Tensor of shape (n,), int64
        Ties go to the lowest centroid index.

    Precision
    ---------
    Products accumulate in float32 (float64 for float64 inputs) on every path. On CUDA, fp16 and
    bf16 rows are multiplied on tensor cores as they are (exact products of the stored values);
    float32 rows in TF32 (10-bit mantissas, a relative error about 1e-3 per product) where
    ``torch.backends.cuda.matmul.allow_tf32`` is set, and otherwise, torch's default, in three
    TF32 products (3xTF32: each operand split into a TF32 part and its TF32 remainder, the
    remainders' product left out; relative error about 1e-6 per product, near IEEE float32's 6e-8)
    at tensor-core speed. On the CPU, float32 products (BLAS or the compiled loop). Labels are the
    float64 argmin wherever the float64 gap between the two best centroids is above about
    1e-6 * |x|^2 (float32 and 3xTF32; tests/gpu checks it), ties to the lowest index.

    Examples
    --------
    >>> import torch
    >>> d, i = nearest(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    >>> d.tolist(), i.tolist()
    ([1.0], [0])
    """
    check(x, centroids, metric)
    if use_triton(x, backend):
        return nearest_triton_dispatch(x, centroids, metric, cache)
    if x.device.type == "cpu" and backend == "auto" and centroids.shape[0] <= MAX_CHILDREN:
        return grouped_nearest_numba(x, None, centroids, [0, centroids.shape[0]], metric)
    return nearest_reference(x, centroids, metric=metric)
