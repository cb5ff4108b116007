"""Triton kernel of ``topk`` for small k: a fused matrix product and a running top-k.

Kernel contract
  x        : (N, D)  float16 / bfloat16 / float32, row-major      -> rows
  c        : (K, D)  same dtype, row-major                         -> centroids
  bias     : (K,)    float32: |c|^2 (euclidean) or 1 (cosine, rows and centroids normalized)
  out_d    : (N, k)  float32: the k smallest of bias[j] - alpha * x.c_j, ascending
  out_i    : (N, k)  int64: their centroids; equal values keep the lower index
Each program owns BLOCK_M rows and walks all centroids BLOCK_N at a time (tensor-core dots,
float32 accumulation). The running best KP (k rounded up to a power of two, at most 16) per row
stay in registers; after each centroid tile, KP extraction steps merge them with the tile's
values, smallest first (the running entries come from earlier, lower indices, so they win
ties). The N x K distance matrix is never written; N, K and D are runtime values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..assign.triton import distance_tile
from ..common import next_pow2

MAX_K = 16


@triton.jit
def merge_running(run_d, run_i, d, n0, KP: tl.constexpr, BLOCK_N: tl.constexpr):
    """The KP smallest, ascending, of each row's running values ``run_d`` (rows, KP) with their
    indices ``run_i``, and of a tile's values ``d`` (rows, BLOCK_N) at indices n0 + column: KP
    extraction steps, one reduction each for a value and its position. Running entries come from
    earlier, lower indices: they win ties, and a tile's ties go to its lowest column."""
    slots = tl.arange(0, KP)
    new_d = tl.full(run_d.shape, float("inf"), tl.float32)
    new_i = tl.full(run_i.shape, -1, tl.int64)
    for j in tl.static_range(KP):
        m_t, p_t = tl.min(d, axis=1, return_indices=True)
        m_r, p_r = tl.min(run_d, axis=1, return_indices=True)
        i_r = tl.sum(tl.where(slots[None, :] == p_r[:, None], run_i, 0), axis=1)
        take_run = m_r <= m_t
        val = tl.where(take_run, m_r, m_t)
        idx = tl.where(take_run, i_r, p_t.to(tl.int64) + n0)
        new_d = tl.where(slots[None, :] == j, val[:, None], new_d)
        new_i = tl.where(slots[None, :] == j, idx[:, None], new_i)
        run_d = tl.where(take_run[:, None] & (slots[None, :] == p_r[:, None]), float("inf"), run_d)
        d = tl.where((~take_run)[:, None] & (tl.arange(0, BLOCK_N)[None, :] == p_t[:, None]), float("inf"), d)
    return new_d, new_i


@triton.jit
def _topk_kernel(
    x_ptr,  # *T [N, D]
    c_ptr,  # *T [K, D]
    bias_ptr,  # *f32 [K]
    out_d_ptr,  # *f32 [N, k]
    out_i_ptr,  # *i64 [N, k]
    N, K, D, k,
    stride_x, stride_c,
    alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, KP: tl.constexpr, EXACT: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    slots = tl.arange(0, KP)
    run_d = tl.full((BLOCK_M, KP), float("inf"), tl.float32)
    run_i = tl.full((BLOCK_M, KP), -1, tl.int64)
    for n0 in range(0, K, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < K
        d = distance_tile(x_ptr, rows, row_ok, stride_x, c_ptr, cols, col_ok, stride_c, bias_ptr, alpha, D,
                          BLOCK_M, BLOCK_N, BLOCK_K, EXACT)
        run_d, run_i = merge_running(run_d, run_i, d, n0, KP, BLOCK_N)
    out = rows[:, None] * k + slots[None, :]
    ok = row_ok[:, None] & (slots[None, :] < k)
    tl.store(out_d_ptr + out, run_d, mask=ok)
    tl.store(out_i_ptr + out, run_i, mask=ok)


def topk_triton(x: torch.Tensor, c: torch.Tensor, bias: torch.Tensor, alpha: float, k: int, *, exact: bool = False,
                config: dict | None = None):
    """(n, k) smallest values of ``bias - alpha * x.c`` and their centroids; see the contract."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"the top-k kernel takes 1 <= k <= {MAX_K}, got {k}")
    x, c = x.contiguous(), c.to(x.dtype).contiguous()
    n, d = x.shape
    out_d = torch.empty(n, k, dtype=torch.float32, device=x.device)
    out_i = torch.empty(n, k, dtype=torch.int64, device=x.device)
    cfg = config or dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64 if x.element_size() == 2 else 32, num_warps=4,
                         num_stages=3)
    kp = next_pow2(k)
    _topk_kernel[(triton.cdiv(n, cfg["BLOCK_M"]),)](
        x, c, bias.float().contiguous(), out_d, out_i, n, c.shape[0], d, k, x.stride(0), c.stride(0), float(alpha),
        KP=kp, EXACT=exact, **cfg)
    return out_d, out_i
