"""Triton kernel of ``grouped_nearest``: each row against the children of its own group only.

Kernel contract
  x          : (N, D)  float16 / bfloat16 / float32, row-major          -> rows to assign
  c          : (C, D)  same dtype, the children of all groups, group by group
  bias       : (C,)    float32: |c|^2 (euclidean) or 1 (cosine, rows and children normalized)
  offsets    : (G + 1,) int64 CSR: the children of group g are c[offsets[g]:offsets[g + 1]]
  order      : (N,)    int64: row positions sorted by group (stable)
  bounds     : (G + 1,) int64: group g is sorted positions bounds[g]:bounds[g + 1]
  tile_off   : (G + 1,) int64: its tiles of at most BLOCK_M rows are numbered
               tile_off[g]:tile_off[g + 1] (``segments``); programs past tile_off[G]
               exit at once
  out_d      : (N,)    float32: min over the group's children of bias - alpha * x.c (inf: none)
  out_i      : (N,)    int64: its global child index, ties to the lowest; -1 when none
One launch per batch, whatever the number of groups: each program takes one tile of rows of
one group and walks only that group's children, BLOCK_N at a time, with tensor-core dot
products (fp32 accumulation) and a running argmin. Groups, N, C and D are runtime values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..assign.triton import distance_tile, running_argmin
from ..common import OperandCache, check, fused, next_pow2, offsets_on
from ...io.device import kept, to_device
from ..update.triton import sorted_by_label


@triton.jit
def tile_of(t, tile_off_ptr, bounds_ptr, G, ROWS: tl.constexpr):
    """(group, first sorted position, one past the last) of row tile ``t``: a binary search for
    the last group g with tile_off[g] <= t (tiles are numbered group by group)."""
    lo = t * 0  # int64 tensors from the start: loop-carried values keep their type when compiled
    hi = lo + (G - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(tile_off_ptr + mid) <= t:
            lo = mid
        else:
            hi = mid - 1
    start = tl.load(bounds_ptr + lo) + (t - tl.load(tile_off_ptr + lo)) * ROWS
    stop = tl.minimum(start + ROWS, tl.load(bounds_ptr + lo + 1))
    return lo, start, stop


def segments(groups: torch.Tensor, n_groups: int, rows_per_tile: int):
    """Rows sorted by group and cut into tiles of one group each, in a few torch operations and no
    host round trip.

    Returns (order, bounds (G + 1,), tile_off (G + 1,), bound): rows sorted by group (stable,
    rows of group -1 first), group g at sorted positions bounds[g]:bounds[g + 1], its tiles
    numbered tile_off[g]:tile_off[g + 1], and an upper bound on the number of tiles (the launch
    grid: programs past tile_off[G] exit at once).
    """
    order, _, bounds = sorted_by_label(groups, n_groups)
    per_group = (bounds[1:] - bounds[:-1] + rows_per_tile - 1) // rows_per_tile
    tile_off = torch.nn.functional.pad(torch.cumsum(per_group, 0), (1, 0))
    return order, bounds, tile_off, -(-groups.shape[0] // rows_per_tile) + n_groups


@triton.jit
def _grouped_nearest_kernel(
    x_ptr,  # *T [N, D]
    c_ptr,  # *T [C, D]
    bias_ptr,  # *f32 [C]
    offsets_ptr,  # *i64 [G + 1]
    order_ptr,  # *i64 [N]
    bounds_ptr,  # *i64 [G + 1]: group g is sorted positions bounds[g]:bounds[g + 1]
    tile_off_ptr,  # *i64 [G + 1]: its row tiles are numbered tile_off[g]:tile_off[g + 1]
    out_d_ptr,  # *f32 [N]
    out_i_ptr,  # *i64 [N]
    G, D, stride_x, stride_c,
    alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EXACT: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    if t < tl.load(tile_off_ptr + G):
        g, start, stop = tile_of(t, tile_off_ptr, bounds_ptr, G, BLOCK_M)
        lo = tl.load(offsets_ptr + g)
        hi = tl.load(offsets_ptr + g + 1)
        r = start + tl.arange(0, BLOCK_M)
        row_ok = r < stop
        rows = tl.load(order_ptr + r, mask=row_ok, other=0)
        best_d = tl.full((BLOCK_M,), float("inf"), tl.float32)
        best_i = tl.full((BLOCK_M,), -1, tl.int64)
        for n0 in range(lo, hi, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < hi
            d = distance_tile(x_ptr, rows, row_ok, stride_x, c_ptr, cols, col_ok, stride_c, bias_ptr, alpha, D,
                              BLOCK_M, BLOCK_N, BLOCK_K, EXACT)
            best_d, best_i = running_argmin(d, n0, best_d, best_i)
        tl.store(out_d_ptr + rows, best_d, mask=row_ok)
        tl.store(out_i_ptr + rows, best_i, mask=row_ok)


def config(n: int, n_groups: int, width: int, d: int, element_size: int) -> dict:
    """Tile shapes from the shapes alone: BLOCK_N covers a group's children (16..128), BLOCK_M
    shrinks when groups hold few rows each (less masked work)."""
    block_n = min(128, max(16, next_pow2(width)))
    block_m = 128 if n >= 128 * n_groups else 64
    if element_size == 4:
        block_k = 32 if block_n * block_m >= 128 * 128 else 64
    else:
        block_k = 64
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4 if block_m * block_n <= 8192 else 8,
                num_stages=3)


def grouped_nearest_triton(x, groups, c, bias, offsets, alpha, *, width, exact=False, cfg=None):
    """(min of bias - alpha x.c over the row's group, global child index); see the contract.

    ``width``: the largest number of children of one group (host int).
    """
    x, c = x.contiguous(), c.to(x.dtype).contiguous()
    n, d = x.shape
    n_groups = offsets.shape[0] - 1
    cfg = cfg or config(n, n_groups, width, d, x.element_size())
    # Kept for the next pass of the level, which gives the same groups tensor (its version
    # changes if it is written to in place).
    order, bounds, tile_off, bound = kept.get(groups, ("segments", n_groups, cfg["BLOCK_M"], groups._version),
                                              groups.device, lambda: segments(groups, n_groups, cfg["BLOCK_M"]))
    out_d = torch.empty(n, dtype=torch.float32, device=x.device)
    out_i = torch.empty(n, dtype=torch.int64, device=x.device)
    _grouped_nearest_kernel[(bound,)](
        x, c, bias.float().contiguous(), offsets, order, bounds, tile_off, out_d, out_i,
        n_groups, d, x.stride(0), c.stride(0), float(alpha), EXACT=exact, **cfg)
    return out_d, out_i


def grouped_nearest_dispatch(x, groups, centroids, offsets, metric, cache: OperandCache | None = None):
    """``grouped_nearest`` through the kernel (operands prepared as for ``nearest``: ``fused``;
    the offsets moved once per array where a ``cache`` keeps them)."""
    check(x, centroids, metric)
    offsets, width = offsets_on(offsets, x.device) if cache is None else cache.offsets_on(offsets, x.device)
    groups = to_device(groups, x.device).long()
    if x.shape[0] == 0 or len(offsets) < 2:
        return (torch.full((x.shape[0],), float("inf"), device=x.device),
                torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device))

    def kernel(x, c, bias, alpha, exact):
        return grouped_nearest_triton(x, groups, c, bias, offsets, alpha, width=width, exact=exact)

    return fused(kernel, x, centroids, metric, cache=cache)
