"""Triton kernels of ``cluster_stats``: per-cluster sums of rows by a sort, then a segmented
reduction in a fixed order (no atomics, so the bits are the same on every run).

Kernel contract
  x           : (N, D)  float16 / bfloat16 / float32, rows of the block (row stride ``stride_x``)
  order       : (N,)    int64: row positions sorted by label (stable), rows without a label first
  w           : (N,)    float32: one value per row (its distance), summed per cluster too
  bounds      : (K + 1,) int64: cluster c is sorted positions bounds[c]:bounds[c + 1]
  piece_off   : (K + 1,) int64: its pieces are numbered piece_off[c]:piece_off[c + 1]; each
                program finds its piece's cluster by a binary search (``piece_of``)
  piece_sums  : (P, D)  float64 out: sum of the piece's rows; piece_w : (P,) float64 out
Pieces are runs of at most ``rows_per_piece`` sorted rows of one cluster: a large cluster is
cut into several, so that no program walks a whole cluster alone. The combine kernel then adds,
for each cluster, its pieces in order (float64): sums (K, D), w_sums (K,). When the clusters
are many for the rows (a row tile each on average), one kernel does both, a program per
cluster (``_cluster_sums_kernel``): the same additions in the same order, the same bits.

Within a piece, BLOCK_R rows at a time are added in float32 (a fixed tree: tl.sum), and those
partial sums in float64. The launch grid is sized from N and K alone (an upper bound on the
number of pieces), so nothing waits for the host between the sort and the sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Rows per piece: 8 tiles of BLOCK_R rows. Enough work per program to hide the index loads,
# few enough pieces that one big cluster still spreads over many programs.
ROWS_PER_PIECE = 256
BLOCK_R = 32
# Clusters of at most this many rows on average (one row tile): one program per cluster walks
# them, without a search for a piece's cluster nor a (P, D) buffer between two kernels. On an
# H200, a grouped level's 65,536 x 1024 block of 65,536 clusters: 2.01 ms against 2.75 ms. Not
# beyond: there one big cluster (random rows as centroids make hubs) is walked by one program
# (N = 1M, K = 1024, D = 128: a k-means iteration 4.3 ms against 1.8 ms).
ROWS_PER_CLUSTER = BLOCK_R
BLOCK_D = 128


@triton.jit
def piece_of(p, piece_off_ptr, bounds_ptr, K, ROWS_PER_PIECE: tl.constexpr):
    """(cluster, first sorted position, one past the last) of piece ``p``: a binary search for the
    last cluster c with piece_off[c] <= p (pieces are numbered cluster by cluster)."""
    lo = p * 0  # int64 tensors from the start: loop-carried values keep their type when compiled
    hi = lo + (K - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(piece_off_ptr + mid) <= p:
            lo = mid
        else:
            hi = mid - 1
    start = tl.load(bounds_ptr + lo) + (p - tl.load(piece_off_ptr + lo)) * ROWS_PER_PIECE
    stop = tl.minimum(start + ROWS_PER_PIECE, tl.load(bounds_ptr + lo + 1))
    return lo, start, stop


@triton.jit
def piece_sum(x_ptr, order_ptr, w_ptr, start, stop, cols, col_ok, stride_x,
              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """(float64 sums of the columns ``cols``, float64 sum of w) over sorted rows start:stop:
    BLOCK_R rows at a time in float32 (a fixed tree), those sums in float64."""
    acc = tl.zeros((BLOCK_D,), tl.float64)
    acc_w = tl.zeros((BLOCK_R,), tl.float64)
    for r0 in range(start, stop, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        ok = r < stop
        row = tl.load(order_ptr + r, mask=ok, other=0)
        v = tl.load(x_ptr + row[:, None] * stride_x + cols[None, :], mask=ok[:, None] & col_ok[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(v, axis=0).to(tl.float64)
        acc_w += tl.load(w_ptr + row, mask=ok, other=0.0).to(tl.float64)
    return acc, tl.sum(acc_w, axis=0)


@triton.jit
def _piece_sums_kernel(
    x_ptr,  # *T [N, D]
    order_ptr,  # *i64 [N]
    w_ptr,  # *f32 [N]
    bounds_ptr,  # *i64 [K + 1]: cluster c is sorted positions bounds[c]:bounds[c + 1]
    piece_off_ptr,  # *i64 [K + 1]: pieces of cluster c are piece_off[c]:piece_off[c + 1]
    out_ptr,  # *f64 [P, D]
    out_w_ptr,  # *f64 [P]
    K, D, stride_x,
    ROWS_PER_PIECE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    dt = tl.program_id(1)
    if p < tl.load(piece_off_ptr + K):
        _, start, stop = piece_of(p, piece_off_ptr, bounds_ptr, K, ROWS_PER_PIECE)
        cols = dt * BLOCK_D + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        acc, acc_w = piece_sum(x_ptr, order_ptr, w_ptr, start, stop, cols, col_ok, stride_x, BLOCK_R, BLOCK_D)
        tl.store(out_ptr + p * D + cols, acc, mask=col_ok)
        if dt == 0:
            tl.store(out_w_ptr + p, acc_w)


@triton.jit
def _combine_kernel(
    piece_sums_ptr,  # *f64 [P, D]
    piece_w_ptr,  # *f64 [P]
    piece_off_ptr,  # *i64 [K + 1]: pieces of cluster k are piece_off[k]:piece_off[k + 1]
    sums_ptr,  # *f64 [K, D]
    w_sums_ptr,  # *f64 [K]
    D,
    BLOCK_D: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    dt = tl.program_id(1)
    lo = tl.load(piece_off_ptr + k)
    hi = tl.load(piece_off_ptr + k + 1)
    cols = dt * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros((BLOCK_D,), tl.float64)
    acc_w = tl.zeros((1,), tl.float64)
    for p in range(lo, hi):
        acc += tl.load(piece_sums_ptr + p * D + cols, mask=col_ok, other=0.0)
        acc_w += tl.load(piece_w_ptr + p + tl.arange(0, 1))
    tl.store(sums_ptr + k * D + cols, acc, mask=col_ok)
    if dt == 0:
        tl.store(w_sums_ptr + k + tl.arange(0, 1), acc_w)


@triton.jit
def _cluster_sums_kernel(
    x_ptr, order_ptr, w_ptr,
    bounds_ptr,  # *i64 [K + 1]: cluster k is sorted positions bounds[k]:bounds[k + 1]
    sums_ptr,  # *f64 [K, D]
    w_sums_ptr,  # *f64 [K]
    D, stride_x,
    ROWS_PER_PIECE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The piece and combine kernels in one, a program per cluster: its pieces summed, then added
    in order, exactly as those two kernels do, with no (P, D) buffer between them."""
    k = tl.program_id(0).to(tl.int64)
    dt = tl.program_id(1)
    lo = tl.load(bounds_ptr + k)
    hi = tl.load(bounds_ptr + k + 1)
    cols = dt * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros((BLOCK_D,), tl.float64)
    acc_w = tl.zeros((1,), tl.float64)
    for start in range(lo, hi, ROWS_PER_PIECE):
        piece, piece_w = piece_sum(x_ptr, order_ptr, w_ptr, start, tl.minimum(start + ROWS_PER_PIECE, hi), cols,
                                   col_ok, stride_x, BLOCK_R, BLOCK_D)
        acc += piece
        acc_w += piece_w
    tl.store(sums_ptr + k * D + cols, acc, mask=col_ok)
    if dt == 0:
        tl.store(w_sums_ptr + k + tl.arange(0, 1), acc_w)


def segments(labels: torch.Tensor, k: int, rows_per_piece: int = ROWS_PER_PIECE):
    """The sort and its cut into pieces, in a few torch operations and no host round trip.

    Returns (order, bounds (K + 1,), piece_off (K + 1,), bound): rows sorted by label (stable,
    rows labelled below 0 first), cluster c at sorted positions bounds[c]:bounds[c + 1], its
    pieces numbered piece_off[c]:piece_off[c + 1], and an upper bound on the number of pieces
    (the launch grid: programs past piece_off[K] exit at once). ``grouped_assign_triton`` cuts
    its row tiles the same way.
    """
    order, bounds = sorted_by_label(labels, k)
    per_cluster = (bounds[1:] - bounds[:-1] + rows_per_piece - 1) // rows_per_piece
    piece_off = torch.nn.functional.pad(torch.cumsum(per_cluster, 0), (1, 0))
    return order, bounds, piece_off, -(-labels.shape[0] // rows_per_piece) + k


def sorted_by_label(labels: torch.Tensor, k: int):
    """(order, bounds) of :func:`segments`, without the pieces."""
    key = labels.clamp_min(-1).to(torch.int32)  # int32 keys: half the passes of a radix sort
    sorted_key, order = torch.sort(key, stable=True)
    bounds = torch.searchsorted(sorted_key, torch.arange(-1, k, dtype=torch.int32, device=labels.device),
                                right=True)
    return order, bounds


def cluster_stats_triton(x: torch.Tensor, labels: torch.Tensor, values: torch.Tensor, k: int):
    """(sums (k, D) float64, counts (k,) int64, value sums (k,) float64); labels < 0 take no part."""
    if x.stride(1) != 1:
        x = x.contiguous()
    n, d = x.shape
    d_tiles = triton.cdiv(d, BLOCK_D)
    sums = torch.empty(k, d, dtype=torch.float64, device=x.device)
    w_sums = torch.empty(k, dtype=torch.float64, device=x.device)
    if n <= ROWS_PER_CLUSTER * k:  # no pieces to number
        order, bounds = sorted_by_label(labels, k)
        _cluster_sums_kernel[(k, d_tiles)](x, order, values.float().contiguous(), bounds, sums, w_sums, d,
                                           x.stride(0), ROWS_PER_PIECE=ROWS_PER_PIECE, BLOCK_R=BLOCK_R,
                                           BLOCK_D=BLOCK_D, num_warps=4)
        return sums, bounds[1:] - bounds[:-1], w_sums
    order, bounds, piece_off, bound = segments(labels, k)
    piece_sums = torch.empty(bound, d, dtype=torch.float64, device=x.device)
    piece_w = torch.empty(bound, dtype=torch.float64, device=x.device)
    _piece_sums_kernel[(bound, d_tiles)](x, order, values.float().contiguous(), bounds, piece_off, piece_sums, piece_w,
                                         k, d, x.stride(0), ROWS_PER_PIECE=ROWS_PER_PIECE, BLOCK_R=BLOCK_R,
                                         BLOCK_D=BLOCK_D, num_warps=4)
    _combine_kernel[(k, d_tiles)](piece_sums, piece_w, piece_off, sums, w_sums, d, BLOCK_D=BLOCK_D, num_warps=4)
    return sums, bounds[1:] - bounds[:-1], w_sums
