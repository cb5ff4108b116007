"""Nearest-centroid and top-k assignment of a batch of vectors.

Distances are squared L2 computed as ``|x|^2 - 2 x.c + |c|^2`` (one matrix product), or cosine
distance ``1 - cos(x, c)``. Work is tiled over rows and centroids so that memory stays
O(rows_tile x K_tile), never n x K: a running argmin (or running top-k) carries the best so far
from one centroid tile to the next.

``nearest`` and ``topk`` are the dispatchers; ``nearest_reference`` and ``topk_reference`` are
their torch twins (the CPU path, and the oracle of the Triton kernels on CUDA).
"""

from __future__ import annotations

import torch

METRICS = ("euclidean", "cosine")

# Elements of one distance tile: 2**22 float32 = 16 MiB. Big enough to keep the matrix
# product efficient on CPU and GPU, small enough to bound memory for any K.
_TILE_ELEMENTS = 1 << 22


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other input is computed in float32 (fp32 accumulation)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(x, centroids, metric):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"x {tuple(x.shape)} and centroids {tuple(centroids.shape)} must be 2-d with the same width"
        )
    if centroids.shape[0] == 0:
        raise ValueError("no centroids")


def _normalize(v):
    norms = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    # A zero vector has no direction: leave it at zero, so its cosine distance is 1 to everything.
    return v / torch.where(norms > 0, norms, torch.ones_like(norms))


def _prepare(x, centroids, metric):
    """(x, c, x_sq, bias, alpha) in the compute dtype, such that
    ``distance = x_sq + bias - alpha * x.c`` (x_sq is 0 for cosine)."""
    dtype = compute_dtype(x.dtype)
    x = x.to(dtype)
    c = centroids.to(device=x.device, dtype=dtype)
    if metric == "cosine":
        x, c = _normalize(x), _normalize(c)
        return x, c, None, torch.ones(c.shape[0], dtype=dtype, device=x.device), 1.0
    return x, c, (x * x).sum(1), (c * c).sum(1), 2.0


def _tiles(n, k):
    """Row and centroid tile sizes: a function of the shapes only, so results never depend on
    how the caller batched its rows (the Contracts' determinism)."""
    k_tile = min(k, 4096)
    row_tile = max(256, _TILE_ELEMENTS // k_tile)
    return row_tile, k_tile


def _partial_tile(x, c, bias, alpha):
    """(rows, k_tile) of ``bias - alpha * x.c``: the distances less the per-row ``|x|^2``, which
    does not change an argmin. One fused BLAS call (addmm), no other pass over the tile."""
    return torch.addmm(bias[None, :].expand(x.shape[0], -1), x, c.T, alpha=-alpha)


def _finish(partial, x_sq):
    """Add back ``|x|^2`` and clamp the rounding below zero, on the (rows, k) selected values only."""
    if x_sq is not None:
        partial = partial + (x_sq[:, None] if partial.ndim == 2 else x_sq)
    return partial.clamp_min_(0.0)


def distances(x: torch.Tensor, centroids: torch.Tensor, *, metric: str = "euclidean") -> torch.Tensor:
    """All (n, K) distances: for outputs that are n x K by definition (``transform``) and for
    small problems such as k-means++ on a sample."""
    _check(x, centroids, metric)
    x, c, x_sq, bias, alpha = _prepare(x, centroids, metric)
    return _finish(_partial_tile(x, c, bias, alpha), x_sq)


def nearest_reference(x, centroids, *, metric="euclidean"):
    """Torch twin of :func:`nearest`."""
    _check(x, centroids, metric)
    x, c, x_sq, bias, alpha = _prepare(x, centroids, metric)
    n, k = x.shape[0], c.shape[0]
    row_tile, k_tile = _tiles(n, k)
    best_d = torch.empty(n, dtype=x.dtype, device=x.device)
    best_i = torch.empty(n, dtype=torch.int64, device=x.device)
    for r0 in range(0, n, row_tile):
        rows = slice(r0, r0 + row_tile)
        xr = x[rows]
        d_run = i_run = None
        for k0 in range(0, k, k_tile):
            cols = slice(k0, k0 + k_tile)
            d, i = _partial_tile(xr, c[cols], bias[cols], alpha).min(1)
            i += k0
            if d_run is None:
                d_run, i_run = d, i
            else:
                # Strictly smaller wins, so ties keep the lower centroid index.
                better = d < d_run
                d_run = torch.where(better, d, d_run)
                i_run = torch.where(better, i, i_run)
        best_d[rows], best_i[rows] = _finish(d_run, None if x_sq is None else x_sq[rows]), i_run
    return best_d, best_i


def topk_reference(x, centroids, k, *, metric="euclidean"):
    """Torch twin of :func:`topk`."""
    _check(x, centroids, metric)
    if not 1 <= k <= centroids.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of centroids ({centroids.shape[0]})")
    x, c, x_sq, bias, alpha = _prepare(x, centroids, metric)
    n, n_c = x.shape[0], c.shape[0]
    row_tile, k_tile = _tiles(n, n_c)
    out_d = torch.empty(n, k, dtype=x.dtype, device=x.device)
    out_i = torch.empty(n, k, dtype=torch.int64, device=x.device)
    for r0 in range(0, n, row_tile):
        rows = slice(r0, r0 + row_tile)
        xr = x[rows]
        d_run = i_run = None
        for k0 in range(0, n_c, k_tile):
            cols = slice(k0, k0 + k_tile)
            d = _partial_tile(xr, c[cols], bias[cols], alpha)
            d, i = d.topk(min(k, d.shape[1]), dim=1, largest=False, sorted=True)
            i += k0
            if d_run is not None:
                # Earlier tiles first plus a stable sort: equal distances keep the lower index.
                d, order = torch.cat([d_run, d], 1).sort(dim=1, stable=True)
                i = torch.cat([i_run, i], 1).gather(1, order)
            d_run, i_run = d[:, :k], i[:, :k]
        out_d[rows], out_i[rows] = _finish(d_run, None if x_sq is None else x_sq[rows]), i_run
    return out_d, out_i


def nearest(x: torch.Tensor, centroids: torch.Tensor, *, metric: str = "euclidean"):
    """Nearest centroid of every row of ``x``.

    Parameters
    ----------
    x : torch.Tensor of shape (n, d)
        float16, bfloat16, float32 or float64; computed in float32 (float64 stays float64).
    centroids : torch.Tensor of shape (K, d)
    metric : {"euclidean", "cosine"}, default="euclidean"
        Squared L2, or ``1 - cos``.

    Returns
    -------
    distances : torch.Tensor of shape (n,)
        In the compute dtype.
    indices : torch.Tensor of shape (n,), int64
        Ties go to the lowest centroid index.

    Examples
    --------
    >>> import torch
    >>> d, i = nearest(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    >>> d.tolist(), i.tolist()
    ([1.0], [0])
    """
    return nearest_reference(x, centroids, metric=metric)


def topk(x: torch.Tensor, centroids: torch.Tensor, k: int, *, metric: str = "euclidean"):
    """The ``k`` nearest centroids of every row of ``x``, nearest first.

    Same parameters as :func:`nearest`; returns ``(distances, indices)`` of shape (n, k).
    """
    return topk_reference(x, centroids, k, metric=metric)
