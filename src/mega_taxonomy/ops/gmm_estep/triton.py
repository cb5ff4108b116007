"""Triton kernels of the E-step of a diagonal (or spherical) Gaussian mixture: every row's
log-sum-exp over the components, then the statistics, with no (N, K) array in memory.

With the precisions p_k (K, D) = 1 / variances and the means m_k, a row's weighted log density is

    log w_k + log N(x | k) = c_k + x . (m_k p_k) - 0.5 x^2 . p_k,
    c_k = log w_k - 0.5 (D log 2 pi + sum m_k^2 p_k) + 0.5 sum log p_k,

two products of the rows (x and x^2, D wide) with (D, K) operands. The rows are shifted first
by ``shift`` (the mixture's mean; the means likewise), which keeps the expansion's terms small:
the float32 cancellation between them is what turned other GPU mixtures' fits to NaN.

Kernel contract
  x       : (N, D)  float16 / bfloat16 / float32 rows (row stride ``stride_x``), D <= MAX_D
  shift   : (D,)    float32, subtracted from every row
  a, b    : (D, K)  float32: (m_k - shift) p_k and -0.5 p_k, column k for component k
  c       : (K,)    float32: c_k of the shifted means
  lse     : (N,)    float32 out (``_lse_kernel``): log sum_k exp(log density), online over tiles
  r_part  : (S, K)  float32 out (``_stats_kernel``): per split s of the rows, sum r
  x_part  : (S, K, D), x2_part: (S, K, D) float32 out: sum r (x - shift), sum r (x - shift)^2
The statistics kernel runs a program per (component tile, row split), which walks its rows and
keeps its sums in registers: no atomics, so the bits are the same on every run; the S splits
(a function of N alone) are added in float64 afterwards, in order. Products run on tensor cores
in float32 accumulation: TF32 where torch allows it (``allow_tf32``), else 3xTF32 (float32
accuracy, see ``ops.assign``). Half-precision rows are read as they are and computed in float32.

Also here, for the products method (``products.py``): ``_resp_kernel``, every row's log-sum-exp
of a (rows, K) float32 array of log densities and the responsibilities written over it, in one
read and one write, with their column sums by groups of rows (the statistics' sum r); and
``_diag_features_kernel``, its operand F = [x - shift, (x - shift)^2, 1, zeros] in one read of
the rows and one write.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import TRITON_MAX_D as MAX_D  # the rows' tile and the statistics' sums stay on chip up to this width
from .products import diag_operands

ROWS_PER_SPLIT = 4096  # rows walked by one statistics program: a 65,536-row block makes 16 splits


@triton.jit
def _log_density(x_ptr, rows, row_ok, stride_x, shift_ptr, dims, dim_ok, a_ptr, b_ptr, c_ptr, comps, comp_ok, K,
                 TF32: tl.constexpr):
    """(shifted rows, their squares, (rows, comps) log densities; -inf past K)."""
    x = tl.load(x_ptr + rows[:, None] * stride_x + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :],
                other=0.0).to(tl.float32)
    x = tl.where(dim_ok[None, :], x - tl.load(shift_ptr + dims, mask=dim_ok, other=0.0)[None, :], 0.0)
    x2 = x * x
    a = tl.load(a_ptr + dims[:, None] * K + comps[None, :], mask=dim_ok[:, None] & comp_ok[None, :], other=0.0)
    b = tl.load(b_ptr + dims[:, None] * K + comps[None, :], mask=dim_ok[:, None] & comp_ok[None, :], other=0.0)
    if TF32:
        acc = tl.dot(x, a) + tl.dot(x2, b)
    else:
        acc = tl.dot(x, a, input_precision="tf32x3") + tl.dot(x2, b, input_precision="tf32x3")
    c = tl.load(c_ptr + comps, mask=comp_ok, other=0.0)
    return x, x2, tl.where(comp_ok[None, :], acc + c[None, :], float("-inf"))


@triton.jit
def _lse_kernel(x_ptr, shift_ptr, a_ptr, b_ptr, c_ptr, lse_ptr, N, D, K, stride_x,
                BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, TF32: tl.constexpr):
    """A program per tile of rows: the running maximum and sum of exp over component tiles."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D
    top = tl.full((BLOCK_M,), -1e30, tl.float32)  # finite: exp(top - new_top) never sees inf - inf
    total = tl.zeros((BLOCK_M,), tl.float32)
    for c0 in range(0, K, BLOCK_C):
        comps = c0 + tl.arange(0, BLOCK_C)
        _, _, lp = _log_density(x_ptr, rows, row_ok, stride_x, shift_ptr, dims, dim_ok, a_ptr, b_ptr, c_ptr, comps,
                                comps < K, K, TF32)
        new_top = tl.maximum(top, tl.max(lp, axis=1))
        total = total * tl.exp(top - new_top) + tl.sum(tl.exp(lp - new_top[:, None]), axis=1)
        top = new_top
    tl.store(lse_ptr + rows, top + tl.log(total), mask=row_ok)


@triton.jit
def _stats_kernel(x_ptr, shift_ptr, a_ptr, b_ptr, c_ptr, lse_ptr, r_ptr, xs_ptr, x2s_ptr, N, D, K, stride_x,
                  ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                  TF32: tl.constexpr):
    """A program per (component tile, split of ROWS rows): responsibilities of its rows, their
    sums, and the products with the rows and their squares, kept in registers until the end."""
    comps = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    comp_ok = comps < K
    split = tl.program_id(1).to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D
    acc_r = tl.zeros((BLOCK_C,), tl.float32)
    acc_x = tl.zeros((BLOCK_C, BLOCK_D), tl.float32)
    acc_x2 = tl.zeros((BLOCK_C, BLOCK_D), tl.float32)
    for r0 in range(0, ROWS, BLOCK_M):
        rows = split * ROWS + r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        x, x2, lp = _log_density(x_ptr, rows, row_ok, stride_x, shift_ptr, dims, dim_ok, a_ptr, b_ptr, c_ptr,
                                 comps, comp_ok, K, TF32)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        r = tl.where(row_ok[:, None], tl.exp(lp - lse[:, None]), 0.0)
        acc_r += tl.sum(r, axis=0)
        rt = tl.trans(r)
        if TF32:
            acc_x += tl.dot(rt, x)
            acc_x2 += tl.dot(rt, x2)
        else:
            acc_x += tl.dot(rt, x, input_precision="tf32x3")
            acc_x2 += tl.dot(rt, x2, input_precision="tf32x3")
    out = (split * K + comps)[:, None] * D + dims[None, :]
    ok = comp_ok[:, None] & dim_ok[None, :]
    tl.store(xs_ptr + out, acc_x, mask=ok)
    tl.store(x2s_ptr + out, acc_x2, mask=ok)
    tl.store(r_ptr + split * K + comps, acc_r, mask=comp_ok)


@triton.jit
def _resp_kernel(l_ptr, lse_ptr, sums_ptr, N, K, GROUP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                 ONE_TILE: tl.constexpr):
    """Each row's log-sum-exp of L (N, K), and exp(L - lse) over L. Rows of up to BLOCK_K
    components: a program per GROUP rows, BLOCK_R at a time, each read once, and the group's
    column sums of the responsibilities (float32, in row order) into sums (N / GROUP, K): the
    statistics' sum r without a second read of R. Wider rows: a program per BLOCK_R rows, read
    twice (an online sweep, then exp), no sums."""
    cols = tl.arange(0, BLOCK_K)
    if ONE_TILE:
        group = tl.program_id(0).to(tl.int64)
        col_sums = tl.zeros((BLOCK_K,), tl.float32)
        for r0 in range(0, GROUP, BLOCK_R):
            rows = group * GROUP + r0 + tl.arange(0, BLOCK_R)
            row_ok = rows < N
            ok = row_ok[:, None] & (cols < K)[None, :]
            ptrs = l_ptr + rows[:, None] * K + cols[None, :]
            v = tl.load(ptrs, mask=ok, other=float("-inf"))
            top = tl.where(row_ok, tl.max(v, axis=1), 0.0)  # a row past N: -inf everywhere, kept out of NaN
            e = tl.exp(v - top[:, None])
            total = tl.sum(e, axis=1)
            r = e / total[:, None]
            tl.store(ptrs, r, mask=ok)
            tl.store(lse_ptr + rows, top + tl.log(total), mask=row_ok)
            col_sums += tl.sum(tl.where(ok, r, 0.0), axis=0)
        tl.store(sums_ptr + group * K + cols, col_sums, mask=cols < K)
    else:
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < N
        top = tl.full((BLOCK_R,), -1e30, tl.float32)  # finite: exp(top - new_top) never sees inf - inf
        total = tl.zeros((BLOCK_R,), tl.float32)
        for c0 in range(0, K, BLOCK_K):
            ok = row_ok[:, None] & (c0 + cols < K)[None, :]
            v = tl.load(l_ptr + rows[:, None] * K + c0 + cols[None, :], mask=ok, other=float("-inf"))
            new_top = tl.maximum(top, tl.max(v, axis=1))
            total = total * tl.exp(top - new_top) + tl.sum(tl.exp(v - new_top[:, None]), axis=1)
            top = new_top
        lse = top + tl.log(total)
        for c0 in range(0, K, BLOCK_K):
            ok = row_ok[:, None] & (c0 + cols < K)[None, :]
            ptrs = l_ptr + rows[:, None] * K + c0 + cols[None, :]
            tl.store(ptrs, tl.exp(tl.load(ptrs, mask=ok, other=0.0) - lse[:, None]), mask=ok)
        tl.store(lse_ptr + rows, lse, mask=row_ok)


RESP_TILE = 4096  # elements of L per program: a row of up to 4,096 components is read once
SUM_TILE = 1024  # lanes of a block's sum of one column
COLUMN_LANES, COLUMN_TILE = 32, 64  # lanes and columns of a program of a block's sums of many columns


@triton.jit
def _block_sums_kernel(v_ptr, out_ptr, M, K, stride_out, LANES: tl.constexpr, TILE_K: tl.constexpr):
    """Program (block, column tile): the float64 sums of a block's M rows of v (rows of K), by
    column, LANES lanes each adding every LANES-th row in turn, then a fixed tree over the lanes.
    The same steps for a block whatever the others."""
    block = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * TILE_K + tl.arange(0, TILE_K)
    lanes = tl.arange(0, LANES)
    acc = tl.zeros((LANES, TILE_K), tl.float64)
    for t in range(0, M, LANES):
        rows = block * M + t + lanes
        ok = ((t + lanes) < M)[:, None] & (cols < K)[None, :]
        acc += tl.load(v_ptr + rows[:, None] * K + cols[None, :], mask=ok, other=0.0).to(tl.float64)
    tl.store(out_ptr + block * stride_out + cols, tl.sum(acc, axis=0), mask=cols < K)


def block_lanes(k: int) -> tuple[int, int]:
    """(lanes, columns) of a program of ``products.block_sums`` over rows of ``k`` values: many
    lanes for one long column; for many columns fewer, and a program per tile of them."""
    return (SUM_TILE, 1) if k == 1 else (COLUMN_LANES, COLUMN_TILE)


def block_sums_triton(values: torch.Tensor, m: int, out: torch.Tensor) -> torch.Tensor:
    """``products.block_sums`` in one launch, into ``out`` ((B,) or (B, K), each block's sums
    contiguous)."""
    k = values.shape[1] if values.ndim == 2 else 1
    lanes, tile_k = block_lanes(k)
    assert k == 1 or out.stride(1) == 1
    if len(out):
        _block_sums_kernel[(len(out), triton.cdiv(k, tile_k))](values.contiguous(), out, m, k, out.stride(0),
                                                               LANES=lanes, TILE_K=tile_k)
    return out


FEATURE_ROWS = 32  # rows per program of _diag_features_kernel


@triton.jit
def _diag_features_kernel(x_ptr, shift_ptr, f_ptr, N, D, W, stride_x, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (row tile, column tile): F[r] = [x', x'^2, 1, zeros] (W columns) of x' = x[r] -
    shift, in float32: the operations of torch's ``x.float() - shift`` and ``x' * x'``, the same bits."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    dims = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok, dim_ok = rows < N, dims < D
    ok = row_ok[:, None] & dim_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + dims[None, :], mask=ok, other=0.0).to(tl.float32)
    xs = x - tl.load(shift_ptr + dims, mask=dim_ok, other=0.0)[None, :]
    out = f_ptr + rows[:, None] * W + dims[None, :]
    tl.store(out, xs, mask=ok)
    tl.store(out + D, xs * xs, mask=ok)
    # the columns past 2D (a one, then zeros) by the programs of the first column tile
    if tl.program_id(1) == 0:
        tail = 2 * D + tl.arange(0, BLOCK_D)
        tl.store(f_ptr + rows[:, None] * W + tail[None, :], tl.where(tail == 2 * D, 1.0, 0.0)[None, :],
                 mask=row_ok[:, None] & (tail < W)[None, :])


def diag_features_triton(x: torch.Tensor, shift: torch.Tensor, width: int) -> torch.Tensor:
    """``products.diag_features``'s F (len(x), width) in one launch: rows of float16, bfloat16 or
    float32 (a row stride of their own), width - 2D columns of the one and zeros (at most 4)."""
    n, d = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    f = torch.empty(n, width, dtype=torch.float32, device=x.device)
    block_d = max(16, min(128, triton.next_power_of_2(d)))
    assert width - 2 * d <= block_d
    if n:
        _diag_features_kernel[(triton.cdiv(n, FEATURE_ROWS), triton.cdiv(d, block_d))](
            x, shift.float().contiguous(), f, n, d, width, x.stride(0), BLOCK_R=FEATURE_ROWS, BLOCK_D=block_d)
    return f


FOLD_TILE = 1024  # elements of a block's sums per program


@triton.jit
def _fold_chunks_kernel(s_ptr, out_ptr, CHUNKS, ROWS, K, stride_b, stride_c, stride_r, stride_out,
                        TILE: tl.constexpr):
    """Program (block, tile): the block's chunk sums s[b, :, :ROWS, :] (float32) added in chunk
    order in float64, from 0.0 (which adds no rounding), into out[b] (ROWS, K): its rows contiguous,
    the blocks stride_out apart."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64) * TILE + tl.arange(0, TILE)
    ok = i < ROWS * K
    offset = b * stride_b + (i // K) * stride_r + i % K
    acc = tl.zeros((TILE,), tl.float64)
    for chunk in range(CHUNKS):
        acc += tl.load(s_ptr + offset + chunk * stride_c, mask=ok, other=0.0).to(tl.float64)
    tl.store(out_ptr + b * stride_out + i, acc, mask=ok)


def fold_chunks_triton(per_chunk: torch.Tensor, rows: int, out: torch.Tensor) -> torch.Tensor:
    """``products.fold_chunks`` in one launch, into ``out`` ((B, rows, K) float64, each block's
    rows contiguous)."""
    blocks, chunks, _, k = per_chunk.shape
    assert per_chunk.stride(3) == 1 and out.stride(2) == 1 and out.stride(1) == k
    if blocks:
        _fold_chunks_kernel[(blocks, triton.cdiv(rows * k, FOLD_TILE))](
            per_chunk, out, chunks, rows, k, per_chunk.stride(0), per_chunk.stride(1), per_chunk.stride(2),
            out.stride(0), TILE=FOLD_TILE)
    return out


def gives_group_sums(k: int) -> bool:
    """Whether ``_resp_kernel`` sums the responsibilities of rows of ``k`` components by groups."""
    return k <= RESP_TILE


def responsibilities_triton_(logp: torch.Tensor, group: int, lse: torch.Tensor | None = None,
                             sums: torch.Tensor | None = None):
    """``products.responsibilities_`` through ``_resp_kernel``: lse (C,), exp(L - lse) over L, and
    the column sums of every ``group`` rows (ceil(C / group), K) float32, or None for rows wider
    than ``RESP_TILE`` (the caller sums R itself); into ``lse`` and ``sums`` where given."""
    n, k = logp.shape
    assert logp.is_contiguous() and logp.dtype == torch.float32
    block_k = min(triton.next_power_of_2(k), RESP_TILE)
    block_r = min(RESP_TILE // block_k, group)
    one_tile = gives_group_sums(k)
    assert not one_tile or group % block_r == 0
    if lse is None:
        lse = torch.empty(n, dtype=torch.float32, device=logp.device)
    if not one_tile:
        sums = None
    elif sums is None:
        sums = torch.empty(triton.cdiv(n, group), k, dtype=torch.float32, device=logp.device)
    grid = triton.cdiv(n, group if one_tile else block_r)
    if n:
        _resp_kernel[(grid,)](logp, lse, sums if one_tile else lse, n, k, GROUP=group, BLOCK_R=block_r,
                              BLOCK_K=block_k, ONE_TILE=one_tile, num_warps=8)
    return lse, sums


def _tiles(d: int, stats: bool = False) -> dict:
    """Tiles of the kernels at ``d`` features. Shared memory bounds them at wide rows: each stage of
    a loop's software pipeline holds a tile of rows (and squares) and two of operands, and 3xTF32
    splits every operand in two: at D = 128, the log-sum-exp kernel asked for 320 KiB of an H200's
    227 with three stages, and the statistics kernel (also the transposed responsibilities) with
    one. The statistics' two (BLOCK_C, BLOCK_D) float32 accumulators stay in registers."""
    block_d = max(16, triton.next_power_of_2(d))
    wide = block_d >= 128
    return dict(BLOCK_M=32 if stats and wide else 64, BLOCK_C=32 if wide and (stats or block_d > 128) else 64,
                BLOCK_D=block_d, num_stages=1 if wide else 2)


def diag_estep_triton(x: torch.Tensor, weights, means, precisions, shift):
    """(per-row log-sum-exp (N,) float32, sum r (K,), sum r (x - shift) (K, D), sum r (x - shift)^2
    (K, D), the three float64, added over the row splits in order) of a diagonal mixture."""
    if x.stride(1) != 1:
        x = x.contiguous()
    n, d = x.shape
    k = means.shape[0]
    if d > MAX_D:
        raise ValueError(f"the Triton E-step takes up to {MAX_D} features, not {d}")
    a, b, c = diag_operands(weights, means, precisions, shift)
    shift32 = shift.float().contiguous()
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32) and x.is_cuda
    tiles = _tiles(d)
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    _lse_kernel[(triton.cdiv(n, tiles["BLOCK_M"]),)](x, shift32, a, b, c, lse, n, d, k, x.stride(0), TF32=tf32,
                                                     num_warps=4, **tiles)
    splits = triton.cdiv(n, ROWS_PER_SPLIT)
    r_part = torch.empty(splits, k, dtype=torch.float32, device=x.device)
    x_part = torch.empty(splits, k, d, dtype=torch.float32, device=x.device)
    x2_part = torch.empty(splits, k, d, dtype=torch.float32, device=x.device)
    stats = _tiles(d, stats=True)
    _stats_kernel[(triton.cdiv(k, stats["BLOCK_C"]), splits)](x, shift32, a, b, c, lse, r_part, x_part, x2_part, n,
                                                              d, k, x.stride(0), ROWS=ROWS_PER_SPLIT, TF32=tf32,
                                                              num_warps=8, **stats)
    return lse, r_part.double().sum(0), x_part.double().sum(0), x2_part.double().sum(0)
