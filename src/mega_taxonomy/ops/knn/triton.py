"""Triton kernel of the kd-tree's bucket scan (``buckets.py``): blocks of queries against their
candidate leaves, a running top-k per query.

Kernel contract
  q        : (Q, D)  float64, row-major, sorted by leaf       -> queries
  pts      : (D, N)  float64, row-major (one row a dimension)  -> the tree's points in leaf order
  perm     : (N,)    int64: each column's original row
  starts, ends : (M,) int64: node columns [start, end)
  offsets  : (n_blocks + 1,) int64; leaves : (L,) int64: block b's candidate leaves are
             leaves[offsets[b]:offsets[b + 1]]
  out_d    : (Q, k)  float64: the k smallest squared distances below ``bound``, ascending
  out_i    : (Q, k)  int64: their rows; equal distances in increasing row; N where missing
Each program owns BLOCK queries (consecutive: one region of space) and scans its candidate leaves
LEAF columns at a time (LEAF: the largest leaf, rounded up to a power of two). The running best
KP (k rounded up to a power of two) per query stay in registers; after a leaf that can improve
one of the block's queries, k extraction steps merge them with the leaf's distances, each step
taking the smallest (distance, row) of either side, so ties go to the smaller row whichever leaf
came first. Q, D, N and the number of
leaves are runtime values; program ids are 64-bit. float64 throughout: the answer is exact and
equals the CPU's. Not tuned on a GPU yet (no GPU was at hand when it was written).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_K = 32
BIG = tl.constexpr(2**62)  # (a plain global is refused by the compiler, not by the interpreter)


@triton.jit
def _merge(d, ids, run_d, run_i, slots, BLOCK: tl.constexpr, KP: tl.constexpr, K: tl.constexpr):
    """The K best (distance, row) of the running entries and a leaf's, smallest first, by K
    extraction steps (slots K..KP-1 stay empty)."""
    new_d = tl.full((BLOCK, KP), float("inf"), tl.float64)
    new_i = tl.full((BLOCK, KP), BIG, tl.int64)
    for j in tl.static_range(K):
        m_t = tl.min(d, axis=1)
        id_t = tl.min(tl.where(d == m_t[:, None], ids, BIG), axis=1)
        m_r = tl.min(run_d, axis=1)
        id_r = tl.min(tl.where(run_d == m_r[:, None], run_i, BIG), axis=1)
        take_run = (m_r < m_t) | ((m_r == m_t) & (id_r < id_t))
        val = tl.where(take_run, m_r, m_t)
        idx = tl.where(take_run, id_r, id_t)
        new_d = tl.where(slots[None, :] == j, val[:, None], new_d)
        new_i = tl.where(slots[None, :] == j, idx[:, None], new_i)
        d = tl.where((ids == idx[:, None]) & (~take_run)[:, None], float("inf"), d)
        run_d = tl.where((run_i == idx[:, None]) & take_run[:, None], float("inf"), run_d)
    return new_d, new_i


@triton.jit
def _bucket_knn_kernel(
    q_ptr, pts_ptr, perm_ptr, starts_ptr, ends_ptr, offsets_ptr, leaves_ptr, out_d_ptr, out_i_ptr,
    Q, D, N, bound,
    BLOCK: tl.constexpr, LEAF: tl.constexpr, KP: tl.constexpr, K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < Q
    slots = tl.arange(0, KP)
    lanes = tl.arange(0, LEAF)
    run_d = tl.full((BLOCK, KP), float("inf"), tl.float64)
    run_i = tl.full((BLOCK, KP), BIG, tl.int64)
    first = tl.load(offsets_ptr + pid)
    last = tl.load(offsets_ptr + pid + 1)
    for t in range(first, last):
        node = tl.load(leaves_ptr + t)
        cols = tl.load(starts_ptr + node) + lanes
        col_ok = cols < tl.load(ends_ptr + node)
        acc = tl.zeros((BLOCK, LEAF), tl.float64)
        for a in range(D):
            qa = tl.load(q_ptr + rows * D + a, mask=row_ok, other=0.0)
            pa = tl.load(pts_ptr + a * N + cols, mask=col_ok, other=0.0)
            diff = qa[:, None] - pa[None, :]
            acc += diff * diff
        ids = tl.broadcast_to(tl.load(perm_ptr + cols, mask=col_ok, other=BIG)[None, :], (BLOCK, LEAF))
        d = tl.where(col_ok[None, :] & (acc < bound), acc, float("inf"))
        # most candidate leaves improve no query's k best: merge only when one may (<=: a tie may
        # still enter by its smaller row)
        kth = tl.min(tl.where(slots[None, :] == K - 1, run_d, float("inf")), axis=1)
        if tl.sum((d <= kth[:, None]).to(tl.int32)) > 0:
            run_d, run_i = _merge(d, ids, run_d, run_i, slots, BLOCK, KP, K)
    run_i = tl.where(run_d == float("inf"), N, run_i)
    out = rows[:, None] * K + slots[None, :]
    mask = row_ok[:, None] & (slots[None, :] < K)
    tl.store(out_d_ptr + out, run_d, mask=mask)
    tl.store(out_i_ptr + out, run_i, mask=mask)


def bucket_scan_triton(t, q, offsets, leaves, k, bound, block):
    """``buckets.scan_reference``'s contract, by the kernel: (out_d (Q, k), out_i (Q, k))."""
    if k > MAX_K:
        raise ValueError(f"the bucket kernel keeps at most {MAX_K} neighbours, not {k}")
    out_d = torch.empty((len(q), k), dtype=torch.float64, device=q.device)
    out_i = torch.empty((len(q), k), dtype=torch.int64, device=q.device)
    n_blocks = len(offsets) - 1
    if n_blocks == 0:
        return out_d, out_i
    _bucket_knn_kernel[(n_blocks,)](
        q, t.pts, t.perm, t.starts, t.ends, offsets, leaves, out_d, out_i,
        len(q), t.dim, t.n, float(bound),
        BLOCK=block, LEAF=triton.next_power_of_2(t.max_leaf), KP=triton.next_power_of_2(k), K=k,
    )
    return out_d, out_i
