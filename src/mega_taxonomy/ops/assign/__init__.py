"""Nearest-centroid and top-k assignment of a batch of vectors.

Distances are squared L2 computed as ``|x|^2 - 2 x.c + |c|^2`` (one matrix product), or cosine
distance ``1 - cos(x, c)``. Work is tiled over rows and centroids so that memory stays
O(rows_tile x K_tile), never n x K: a running argmin (or running top-k) carries the best so far
from one centroid tile to the next.

``nearest`` and ``topk`` are the dispatchers; ``nearest_reference`` and ``topk_reference`` are
their torch twins (the CPU path, and the oracle of the Triton kernels on CUDA).
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
import weakref

import numpy as np
import torch

from ..threads import parallel_map
from .grouped_assign_numba import MAX_CHILDREN, grouped_nearest_numba

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


def normalize_rows(v: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (cosine's view of vectors)."""
    norms = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    # A zero vector has no direction: leave it at zero, so its cosine distance is 1 to everything.
    return v / torch.where(norms > 0, norms, torch.ones_like(norms))


class _Operand:
    """The centroids as one GEMM operand: ``tile(rows, lo, hi)`` is ``bias - alpha * x.c`` for the
    centroids ``lo:hi`` (the distances less the per-row ``|x|^2``, which no argmin needs).

    On the CPU the product goes through numpy, whose OpenBLAS runs it 2.3x faster than torch's
    MKL on the AMD EPYC machines we develop and test on (65536x128 @ 128x1024 float32: 150 ms
    against 330 ms), with the bias as one more column of the product, so that the tile is
    written once. On CUDA it is one ``addmm``.
    """

    def __init__(self, c, bias, alpha):
        self.c, self.bias, self.alpha = c, bias, alpha
        self.on_cpu = c.device.type == "cpu"
        if self.on_cpu:
            self.augmented = np.concatenate([c.numpy() * -alpha, bias.numpy()[:, None]], 1)
        # Scratch reused from tile to tile (one set per thread): a fresh 16 MiB array per tile
        # costs page faults (first touch) comparable to the product itself.
        self._scratch = threading.local()

    def _buffer(self, name, size):
        buf = getattr(self._scratch, name, None)
        if buf is None or buf.size < size:
            buf = np.empty(size, dtype=self.augmented.dtype)
            setattr(self._scratch, name, buf)
        return buf[:size]

    def rows(self, x):
        """Rows prepared once for every centroid tile: on the CPU, with a column of ones."""
        if not self.on_cpu:
            return x
        out = self._buffer("rows", x.shape[0] * (x.shape[1] + 1)).reshape(x.shape[0], x.shape[1] + 1)
        out[:, :-1] = x.numpy()
        out[:, -1] = 1.0
        return out

    def tile(self, rows, lo, hi, *, scratch=False):
        """``scratch=True``: the result lives in a buffer that the next tile overwrites."""
        if not self.on_cpu:
            return torch.addmm(self.bias[None, lo:hi].expand(rows.shape[0], -1), rows, self.c[lo:hi].T,
                               alpha=-self.alpha)
        c = self.augmented[lo:hi]
        if not scratch:
            return torch.from_numpy(rows @ c.T)
        out = self._buffer("out", rows.shape[0] * len(c)).reshape(rows.shape[0], len(c))
        np.matmul(rows, c.T, out=out)
        return torch.from_numpy(out)


def _prepare(x, centroids, metric):
    """(x, x_sq, operand) in the compute dtype, such that ``distance = x_sq + operand.tile``
    (x_sq is None for cosine, whose distance is ``1 - x.c`` of normalized vectors)."""
    dtype = compute_dtype(x.dtype)
    x = x.detach().to(dtype)
    c = centroids.detach().to(device=x.device, dtype=dtype)
    if metric == "cosine":
        x, c = normalize_rows(x), normalize_rows(c)
        return x, None, _Operand(c, torch.ones(c.shape[0], dtype=dtype, device=x.device), 1.0)
    return x, _squared_norms(x), _Operand(c, _squared_norms(c), 2.0)


def _squared_norms(v):
    """Row norms squared: einsum reads v once (``(v * v).sum(1)`` writes v * v first: 4x
    slower on the CPU); numpy's einsum is faster still there."""
    if v.device.type == "cpu":
        return torch.from_numpy(np.einsum("ij,ij->i", v.numpy(), v.numpy()))
    return torch.einsum("ij,ij->i", v, v)


def _tiles(n, k):
    """Row and centroid tile sizes: a function of the shapes only, so results never depend on
    how the caller batched its rows (the Contracts' determinism)."""
    k_tile = min(k, 4096)
    # At most 8192 rows, so that a block makes several tiles for the threads even when K is small.
    row_tile = max(256, min(8192, _TILE_ELEMENTS // k_tile))
    return row_tile, k_tile


def _smallest(tile, k):
    """(values, indices) of each row's ``k`` smallest, sorted, ties to the lower index. On the
    CPU, k <= 2 is k argmin passes in numpy (2x faster than torch's topk on a 4096 x 1024 tile)."""
    if tile.device.type != "cpu" or k > 2:
        return tile.topk(min(k, tile.shape[1]), dim=1, largest=False, sorted=True)
    a = tile.numpy()
    rows = np.arange(len(a))
    first = a.argmin(1)
    if k == 1 or a.shape[1] == 1:
        return torch.from_numpy(a[rows, first][:, None]), torch.from_numpy(first[:, None])
    values = a[rows, first].copy()
    a[rows, first] = np.inf  # the tile is ours: a fresh product
    second = a.argmin(1)
    out_v = np.stack([values, a[rows, second]], 1)
    return torch.from_numpy(out_v), torch.from_numpy(np.stack([first, second], 1))


def _min(tile):
    """(values, first index) of each row's minimum; numpy's argmin is 3x faster than torch's
    ``min(dim)`` on the CPU."""
    if tile.device.type != "cpu":
        return tile.min(1)
    a = tile.numpy()
    i = a.argmin(1)
    return torch.from_numpy(a[np.arange(len(a)), i]), torch.from_numpy(i)


def _finish(partial, x_sq):
    """Add back ``|x|^2`` and clamp the rounding below zero, on the (rows, k) selected values only."""
    if x_sq is not None:
        partial = partial + (x_sq[:, None] if partial.ndim == 2 else x_sq)
    return partial.clamp_min_(0.0)


def distances(x: torch.Tensor, centroids: torch.Tensor, *, metric: str = "euclidean") -> torch.Tensor:
    """All (n, K) distances: for outputs that are n x K by definition (``transform``) and for
    small problems such as k-means++ on a sample."""
    _check(x, centroids, metric)
    x, x_sq, operand = _prepare(x, centroids, metric)
    return _finish(operand.tile(operand.rows(x), 0, centroids.shape[0]), x_sq)


def _for_row_tiles(n, row_tile, work, on_cpu):
    """``work(rows)`` for every row tile. On the CPU the tiles run in parallel threads, each with
    a single-threaded BLAS: a tile's product and its scan of the result then keep both cores
    busy, where a multi-threaded product followed by a one-thread scan idles one (200k x 128
    against 1024 centroids: 0.56 s against 0.80 s). Every tile, whatever its size, takes this
    path, so a row's bits never depend on how many rows came with it."""
    tiles = [slice(r0, min(r0 + row_tile, n)) for r0 in range(0, n, row_tile)]
    if not on_cpu:
        for rows in tiles:
            work(rows)
        return
    parallel_map(work, tiles)


def nearest_reference(x, centroids, *, metric="euclidean"):
    """Torch twin of :func:`nearest`."""
    _check(x, centroids, metric)
    x, x_sq, operand = _prepare(x, centroids, metric)
    n, k = x.shape[0], centroids.shape[0]
    row_tile, k_tile = _tiles(n, k)
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
        best_d[rows], best_i[rows] = _finish(d_run, None if x_sq is None else x_sq[rows]), i_run

    _for_row_tiles(n, row_tile, work, operand.on_cpu)
    return best_d, best_i


def topk_reference(x, centroids, k, *, metric="euclidean"):
    """Torch twin of :func:`topk`."""
    _check(x, centroids, metric)
    if not 1 <= k <= centroids.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of centroids ({centroids.shape[0]})")
    x, x_sq, operand = _prepare(x, centroids, metric)
    n, n_c = x.shape[0], centroids.shape[0]
    row_tile, k_tile = _tiles(n, n_c)
    out_d = torch.empty(n, k, dtype=x.dtype, device=x.device)
    out_i = torch.empty(n, k, dtype=torch.int64, device=x.device)

    def work(rows):
        xr = operand.rows(x[rows])
        d_run = i_run = None
        for k0 in range(0, n_c, k_tile):
            d, i = _smallest(operand.tile(xr, k0, k0 + k_tile, scratch=True), k)
            i += k0
            if d_run is not None:
                # Earlier tiles first plus a stable sort: equal distances keep the lower index.
                d, order = torch.cat([d_run, d], 1).sort(dim=1, stable=True)
                i = torch.cat([i_run, i], 1).gather(1, order)
            d_run, i_run = d[:, :k], i[:, :k]
        out_d[rows], out_i[rows] = _finish(d_run, None if x_sq is None else x_sq[rows]), i_run

    _for_row_tiles(n, row_tile, work, operand.on_cpu)
    return out_d, out_i


TOPK_KERNEL_MAX_K = 16  # topk_triton.MAX_K (not imported here: triton is optional)


def _use_triton(x: torch.Tensor, backend: str) -> bool:
    """Triton on CUDA for fp16 / bf16 / fp32 inputs ("auto"), always when asked ("triton": also
    under ``TRITON_INTERPRET=1`` on the CPU, as the tests do), never for "torch"."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto":
        if not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32)):
            return False
        if importlib.util.find_spec("triton") is None:
            _warn_once("triton is not installed: CUDA assignment runs the torch reference (pip install "
                       "'mega-taxonomy[gpu]')")
            return False
        return True
    return backend == "triton"


_WARNED = set()


def _warn_once(message):
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def fused(kernel, x, centroids, metric, *, adds_norms=False):
    """Distances through a fused Triton kernel ``kernel(x, c, bias, alpha, exact)`` that returns
    the selected ``bias - alpha * x.c`` (and their indices): inputs stay in their dtype (tensor
    cores), distances come back in float32. The nearest, top-k and grouped dispatchers share it.
    ``adds_norms``: the kernel also takes ``norms=``, the rows' squared norms, and returns the
    distances themselves (two launches fewer a call: their host time counts, block after block)."""
    x = x.detach()
    c, bias = _prepared(centroids, x.device, x.dtype, metric)
    # float32 products in tf32 only where torch's own matmuls may use it too.
    exact = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    if metric == "cosine":
        d, i = kernel(normalize_rows(x.float()).to(x.dtype), c, bias, 1.0, exact)
        return d.clamp_min_(0.0), i
    from .assign_triton import squared_norms_triton

    x_sq = squared_norms_triton(x)
    if adds_norms:
        return kernel(x, c, bias, 2.0, exact, norms=x_sq)
    d, i = kernel(x, c, bias, 2.0, exact)
    return _finish(d, x_sq), i


# The last centroids prepared by ``fused``: (weak reference, their version, device, dtype, metric), (c, bias).
_NOTHING_PREPARED = (lambda: None, None), None
_last_prepared = _NOTHING_PREPARED


def _forget(ref):
    """Drop the prepared operands with their centroids (they may hold hundreds of MB of a GPU)."""
    global _last_prepared
    if _last_prepared[0][0] is ref:
        _last_prepared = _NOTHING_PREPARED


def _prepared(centroids, device, dtype, metric):
    """The centroids in the rows' device and dtype, with the kernel's bias (squared norms; ones for
    cosine), kept while the same centroids tensor comes back unchanged: a pass over many blocks
    prepares them once, not per block (at 65536 x 1024 children, 1 ms of every block on an H200).
    Only centroids already on ``device`` are kept: torch counts their in-place changes (``_version``),
    not those of a numpy array that a CPU tensor may share."""
    global _last_prepared
    (ref, key), operands = _last_prepared
    now = (centroids._version, device, dtype, metric)
    if ref() is centroids and key == now:
        return operands
    c = centroids.detach().to(device=device, dtype=dtype)
    if metric == "cosine":
        c = normalize_rows(c.float()).to(dtype)
        operands = c, torch.ones(c.shape[0], device=device)
    else:
        operands = c, _squared_norms(c.float())
    if centroids.device == device:
        _last_prepared = (weakref.ref(centroids, _forget), now), operands
    return operands


def prepare_ahead(centroids: torch.Tensor) -> None:
    """Prepare ``centroids`` now as the last ones were prepared (same device, dtype and metric), for
    the passes to come: an iterative driver calls this as soon as it has queued the next
    centroids on the GPU, behind the pass still running there, so that the next pass's first
    block finds them ready (preparing them there took 0.12 ms of host time, the GPU idle, in
    every Lloyd iteration at 4096 x 1024). Nothing to do without such a last preparation."""
    (ref, key), _ = _last_prepared
    if ref() is not None and isinstance(centroids, torch.Tensor) and centroids.device == key[1]:
        _prepared(centroids, *key[1:])


def nearest_triton_dispatch(x, centroids, metric):
    """``nearest`` through the Triton kernel."""
    from .assign_triton import nearest_triton

    return fused(lambda x, c, bias, alpha, exact, norms=None: nearest_triton(x, c, bias, alpha, exact=exact, norms=norms),
                 x, centroids, metric, adds_norms=True)


def nearest(x: torch.Tensor, centroids: torch.Tensor, *, metric: str = "euclidean", backend: str = "auto"):
    """Nearest centroid of every row of ``x``.

    Parameters
    ----------
    x : torch.Tensor of shape (n, d)
        float16, bfloat16, float32 or float64; computed in float32 (float64 stays float64).
    centroids : torch.Tensor of shape (K, d)
    metric : {"euclidean", "cosine"}, default="euclidean"
        Squared L2, or ``1 - cos``.
    backend : {"auto", "torch", "triton"}, default="auto"
        "auto": the Triton kernel for fp16 / bf16 / fp32 tensors on CUDA (fp32 products in tf32
        when ``torch.backends.cuda.matmul.allow_tf32`` is set, IEEE fp32 otherwise); on the CPU
        the compiled kernel of ``grouped_assign_numba`` for up to ``MAX_CHILDREN`` centroids, the
        torch twin otherwise.

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
    _check(x, centroids, metric)
    if _use_triton(x, backend):
        return nearest_triton_dispatch(x, centroids, metric)
    if x.device.type == "cpu" and backend == "auto" and centroids.shape[0] <= MAX_CHILDREN:
        return grouped_nearest_numba(x, None, centroids, [0, centroids.shape[0]], metric)
    return nearest_reference(x, centroids, metric=metric)


def topk(x: torch.Tensor, centroids: torch.Tensor, k: int, *, metric: str = "euclidean", backend: str = "auto"):
    """The ``k`` nearest centroids of every row of ``x``, nearest first.

    Same parameters as :func:`nearest`; returns ``(distances, indices)`` of shape (n, k).
    On CUDA, "auto" runs the fused kernel (``topk_triton``) for k <= 16: 3.2-20x faster than
    the twin on an H200 (benchmarks/results/topk_gpu.json); larger k runs the twin.
    """
    _check(x, centroids, metric)
    if not 1 <= k <= centroids.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of centroids ({centroids.shape[0]})")
    if _use_triton(x, backend) and (backend == "triton" or k <= TOPK_KERNEL_MAX_K):
        return _topk_triton_dispatch(x, centroids, k, metric)
    return topk_reference(x, centroids, k, metric=metric)


def _topk_triton_dispatch(x, centroids, k, metric):
    from .topk_triton import topk_triton

    return fused(lambda x, c, bias, alpha, exact: topk_triton(x, c, bias, alpha, k, exact=exact), x, centroids, metric)
