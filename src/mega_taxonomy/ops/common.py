"""What the ops share: argument checks, the centroids as a GEMM operand, the tile sizes, the
backend choice, the fused-kernel launcher with its operand cache, and the numba helpers of the
per-cluster sums. Public inside ``ops/`` only: callers outside use the dispatchers
(``ops.nearest``, ``ops.grouped_nearest``, ``ops.update.cluster_stats``, ...).
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
import weakref

import numpy as np
import torch
from numba import njit

from ..threads import parallel_map
from ..io.device import to_device

METRICS = ("euclidean", "cosine")

# Elements of one distance tile: 2**22 float32 = 16 MiB. Big enough to keep the matrix
# product efficient on CPU and GPU, small enough to bound memory for any K.
TILE_ELEMENTS = 1 << 22


def shift_right_logical(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic): the hashes' uint64 shifts."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def int64_bits(x) -> int:
    """The int64 whose bits are the uint64 ``x``."""
    return int(x) - (1 << 64) if int(x) >= 1 << 63 else int(x)


def next_pow2(n: int) -> int:
    """The least power of two >= n (and >= 1): a kernel's tile width, computed in Python (Triton's
    ``next_power_of_2`` is a constexpr function, a few microseconds of host time a call)."""
    return 1 << max(n - 1, 0).bit_length()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other input is computed in float32 (fp32 accumulation)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check(x, centroids, metric):
    """Raise on an unknown metric, shapes that do not fit, or no centroids."""
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


class Operand:
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


def prepare(x, centroids, metric):
    """(x, x_sq, operand) in the compute dtype, such that ``distance = x_sq + operand.tile``
    (x_sq is None for cosine, whose distance is ``1 - x.c`` of normalized vectors)."""
    dtype = compute_dtype(x.dtype)
    x = x.detach().to(dtype)
    c = centroids.detach().to(device=x.device, dtype=dtype)
    if metric == "cosine":
        x, c = normalize_rows(x), normalize_rows(c)
        return x, None, Operand(c, torch.ones(c.shape[0], dtype=dtype, device=x.device), 1.0)
    return x, squared_norms(x), Operand(c, squared_norms(c), 2.0)


def squared_norms(v):
    """Row norms squared: einsum reads v once (``(v * v).sum(1)`` writes v * v first: 4x
    slower on the CPU); numpy's einsum is faster still there."""
    if v.device.type == "cpu":
        return torch.from_numpy(np.einsum("ij,ij->i", v.numpy(), v.numpy()))
    return torch.einsum("ij,ij->i", v, v)


def tiles(n, k):
    """Row and centroid tile sizes: a function of the shapes only, so results never depend on
    how the caller batched its rows (the Contracts' determinism)."""
    k_tile = min(k, 4096)
    # At most 8192 rows, so that a block makes several tiles for the threads even when K is small.
    row_tile = max(256, min(8192, TILE_ELEMENTS // k_tile))
    return row_tile, k_tile


def for_row_tiles(n, row_tile, work, on_cpu):
    """``work(rows)`` for every row tile. On the CPU the tiles run in parallel threads, each with
    a single-threaded BLAS: a tile's product and its scan of the result then keep both cores
    busy, where a multi-threaded product followed by a one-thread scan idles one (200k x 128
    against 1024 centroids: 0.56 s against 0.80 s). Every tile, whatever its size, takes this
    path, so a row's bits never depend on how many rows came with it."""
    row_tiles = [slice(r0, min(r0 + row_tile, n)) for r0 in range(0, n, row_tile)]
    if not on_cpu:
        for rows in row_tiles:
            work(rows)
        return
    parallel_map(work, row_tiles)


def finish(partial, x_sq):
    """Add back ``|x|^2`` and clamp the rounding below zero, on the (rows, k) selected values only."""
    if x_sq is not None:
        partial = partial + (x_sq[:, None] if partial.ndim == 2 else x_sq)
    return partial.clamp_min_(0.0)


def use_triton(x: torch.Tensor, backend: str) -> bool:
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


class OperandCache:
    """The last centroids prepared for the fused kernels (in the rows' device and dtype, with the
    kernel's bias: squared norms, ones for cosine) and the last offsets moved to a device, kept
    while the same objects come back unchanged: a pass over many blocks prepares them once, not
    per block (at 65536 x 1024 children, 1 ms of every block on an H200).

    The caller owns the cache and passes it to the dispatchers (``cache=``): a pass's task keeps
    one for its blocks, an iterative driver shares one with its passes and fills it ahead
    (:meth:`prepare_ahead`). Without one, the dispatchers prepare every call. A cache never
    crosses processes: it pickles empty.
    """

    def __init__(self):
        # (weak reference to the centroids, (their version, device, dtype, metric)), (c, bias)
        self._centroids = (lambda: None, None), None
        # (weak reference to the host array, the stream that waited for the copy), (tensor, width)
        self._offsets = (lambda: None, None), None
        # (weak reference to the rows, their version), their squared norms
        self._rows = (lambda: None, None), None

    def __reduce__(self):
        return OperandCache, ()

    def prepared(self, centroids, device, dtype, metric):
        """(c, bias) of ``centroids`` in ``device`` and ``dtype``. Only centroids already on
        ``device`` are kept: torch counts their in-place changes (``_version``), not those of a
        numpy array that a CPU tensor may share."""
        (ref, key), operands = self._centroids
        now = (centroids._version, device, dtype, metric)
        if ref() is centroids and key == now:
            return operands
        operands = prepared_operands(centroids, device, dtype, metric)
        if centroids.device == device:
            this = weakref.ref(self)

            def forget(gone):
                """Drop the operands with their centroids (they may hold hundreds of MB of a GPU)."""
                cache = this()
                if cache is not None and cache._centroids[0][0] is gone:
                    cache._centroids = (lambda: None, None), None

            self._centroids = (weakref.ref(centroids, forget), now), operands
        return operands

    def holds(self, centroids) -> bool:
        """Whether the centroids kept are ``centroids``."""
        return self._centroids[0][0]() is centroids

    @property
    def key(self):
        """(version, device, dtype, metric) of the centroids kept, or None."""
        return self._centroids[0][1] if self._centroids[0][0]() is not None else None

    def prepare_ahead(self, centroids: torch.Tensor) -> None:
        """Prepare ``centroids`` now as the last ones were prepared (same device, dtype and metric),
        for the passes to come: an iterative driver calls this as soon as it has queued the next
        centroids on the GPU, behind the pass still running there, so that the next pass's first
        block finds them ready (preparing them there took 0.12 ms of host time, the GPU idle, in
        every Lloyd iteration at 4096 x 1024). Nothing to do without such a last preparation."""
        (ref, key), _ = self._centroids
        if ref() is not None and isinstance(centroids, torch.Tensor) and centroids.device == key[1]:
            self.prepared(centroids, *key[1:])

    def row_norms(self, x: torch.Tensor, norms) -> torch.Tensor:
        """``norms(x.detach())``, the rows' squared norms, kept while the same tensor ``x`` comes back
        unchanged: a fit of rows on the GPU passes the whole tensor to every Lloyd pass, whose norms
        were read again each time (at 8M x 32 float32, about a third of a millisecond of an
        iteration's 2.6 on an H100). Blocks streamed through buffers are new tensors: computed
        every time."""
        (ref, version), kept = self._rows
        if ref() is x and version == x._version:
            return kept
        kept = norms(x.detach())
        this = weakref.ref(self)

        def forget(gone):
            """Drop the norms with their rows."""
            cache = this()
            if cache is not None and cache._rows[0][0] is gone:
                cache._rows = (lambda: None, None), None

        self._rows = (weakref.ref(x, forget), x._version), kept
        return kept

    def offsets_on(self, offsets, device) -> tuple[torch.Tensor, int]:
        """(offsets on ``device``, the largest group's number of children). Every block of a pass
        passes the same numpy array of a level's offsets (which nobody changes in place): it is
        moved once, not once per block."""
        (ref, on), moved = self._offsets
        # the stream that waited for the copy (the Triton interpreter runs on the CPU: no stream)
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else device
        if ref() is offsets and on == stream:
            return moved
        moved = offsets_on(offsets, device)
        if isinstance(offsets, np.ndarray):
            self._offsets = (weakref.ref(offsets), stream), moved
        return moved


def prepared_operands(centroids, device, dtype, metric):
    """(c, bias) of the fused kernels: the centroids in ``device`` and ``dtype``, with their
    squared norms (ones for cosine, the centroids normalized)."""
    c = centroids.detach().to(device=device, dtype=dtype)
    if metric == "cosine":
        c = normalize_rows(c.float()).to(dtype)
        return c, torch.ones(c.shape[0], device=device)
    return c, squared_norms(c.float())


def offsets_on(offsets, device) -> tuple[torch.Tensor, int]:
    """(offsets on ``device``, the largest group's number of children), moved now."""
    host = torch.as_tensor(offsets).cpu().long()  # a sync only when given on the device
    width = int((host[1:] - host[:-1]).max()) if len(host) > 1 else 0
    return to_device(host, device), width


def fused(kernel, x, centroids, metric, *, adds_norms=False, cache: OperandCache | None = None):
    """Distances through a fused Triton kernel ``kernel(x, c, bias, alpha, exact)`` that returns
    the selected ``bias - alpha * x.c`` (and their indices): inputs stay in their dtype (tensor
    cores), distances come back in float32. The nearest, top-k and grouped dispatchers share it.
    ``adds_norms``: the kernel also takes ``norms=``, the rows' squared norms, and returns the
    distances themselves (two launches fewer a call: their host time counts, block after block).
    ``cache``: where the prepared centroids are kept between calls (:class:`OperandCache`)."""
    rows, x = x, x.detach()  # (a detached view is a new object each call: the norms are kept by the rows)
    if cache is None:
        c, bias = prepared_operands(centroids, x.device, x.dtype, metric)
    else:
        c, bias = cache.prepared(centroids, x.device, x.dtype, metric)
    # float32 products in tf32 only where torch's own matmuls may use it too.
    exact = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    if metric == "cosine":
        d, i = kernel(normalize_rows(x.float()).to(x.dtype), c, bias, 1.0, exact)
        return d.clamp_min_(0.0), i
    from .assign.triton import squared_norms_triton

    x_sq = squared_norms_triton(x) if cache is None else cache.row_norms(rows, squared_norms_triton)
    if adds_norms:
        return kernel(x, c, bias, 2.0, exact, norms=x_sq)
    d, i = kernel(x, c, bias, 2.0, exact)
    return finish(d, x_sq), i


# -- numba helpers of per-cluster float64 sums (update/numba.py, and the fused Lloyd step of
# grouped_assign/numba.py: one loop, the same bits) ---------------------------------------------


@njit(inline="always")
def add_row(x, r, j, value, sums, counts, value_sums):  # pragma: no cover - compiled
    """Row ``r`` into cluster ``j``'s float64 sums (also inlined by the fused Lloyd kernel of
    grouped_assign/numba.py: one loop, the same bits)."""
    counts[j] += 1
    value_sums[j] += np.float64(value)
    for col in range(x.shape[1]):
        sums[j, col] += np.float64(x[r, col])


# Rows of a tile: at least this many, and 8 per cluster.
TILE_ROWS = 8192


def tile_starts(n: int, k: int) -> range:
    """First rows of the tiles of ``n`` rows summed into ``k`` clusters."""
    return range(0, max(n, 1), max(TILE_ROWS, 8 * k))


def tile_partials(n_tiles: int, k: int, d: int):
    """Zeroed (sums, counts, value_sums) of ``n_tiles`` tiles, each tile's first on axis 0."""
    return (np.zeros((n_tiles, k, d), dtype=np.float64), np.zeros((n_tiles, k), dtype=np.int64),
            np.zeros((n_tiles, k), dtype=np.float64))


def add_tiles(sums, counts, value_sums):
    """The tiles' partials (first axis) added in tile order."""
    for t in range(1, len(sums)):
        sums[0] += sums[t]
        counts[0] += counts[t]
        value_sums[0] += value_sums[t]
    return sums[0], counts[0], value_sums[0]
