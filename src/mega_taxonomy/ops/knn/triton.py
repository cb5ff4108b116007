"""Triton kernel of the kd-tree's bucket scan (``buckets.py``): blocks of queries against their
candidate leaves, a running top-k per query.

Kernel contract
  q        : (Q, D)  float64, row-major, sorted by leaf       -> queries
  pts      : (D, N)  float64, row-major (one row a dimension)  -> the tree's points in leaf order
  perm     : (N,)    int64: each column's original row
  starts, ends : (M,) int64: node columns [start, end)
  lo, hi   : (M, D)  float64: each node's box
  offsets  : (n_blocks + 1,) int64; leaves : (L,) int64: block b's candidate leaves are
             leaves[offsets[b]:offsets[b + 1]], nearest first (``buckets.candidates``)
  out_d    : (Q, k)  float64: the k smallest squared distances below ``bound``, ascending
  out_i    : (Q, k)  int64: their rows; equal distances in increasing row; N where missing
Each program owns BLOCK queries (consecutive: one region of space) and scans its candidate leaves
LEAF columns at a time (LEAF: the largest leaf, rounded up to a power of two). Each query's k best
so far stay in registers as a bag (KP slots, k rounded up to a power of two) with its worst entry
by (distance, row): a leaf's point that beats it takes its slot, one point a step, as many steps
as the block's row with the most such points needs (a leaf that improves no row: none); a leaf
whose box is farther from every row than the row's worst is skipped unread. The bag is put in
(distance, row) order once, at the end, so ties go to the smaller row whichever leaf came first.
Q, D, N and the number of leaves are runtime values; program ids are 64-bit. float64 throughout:
the answer is exact and equals the CPU's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_K = 32
BIG = tl.constexpr(2**62)  # (a plain global is refused by the compiler, not by the interpreter)


@triton.jit
def _worst(run_d, run_i, slots, K: tl.constexpr):
    """Per row, the worst (distance, row) kept: the largest in that order among slots < K."""
    kept = slots[None, :] < K
    worst_d = tl.max(tl.where(kept, run_d, -float("inf")), axis=1)
    worst_i = tl.max(tl.where(kept & (run_d == worst_d[:, None]), run_i, -1), axis=1)
    return worst_d, worst_i


@triton.jit
def _bucket_knn_kernel(
    q_ptr, pts_ptr, perm_ptr, starts_ptr, ends_ptr, lo_ptr, hi_ptr, offsets_ptr, leaves_ptr, out_d_ptr, out_i_ptr,
    Q, D, N, bound,
    BLOCK: tl.constexpr, LEAF: tl.constexpr, KP: tl.constexpr, K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < Q
    slots = tl.arange(0, KP)
    lanes = tl.arange(0, LEAF)
    # each row's K best so far, in no order (a bag): empty slots are (inf, BIG + slot), distinct, so
    # that the worst is one slot; slots K..KP-1 never take part
    run_d = tl.full((BLOCK, KP), float("inf"), tl.float64)
    run_i = tl.broadcast_to((slots.to(tl.int64) + BIG)[None, :], (BLOCK, KP))
    worst_d, worst_i = _worst(run_d, run_i, slots, K)
    first = tl.load(offsets_ptr + pid)
    last = tl.load(offsets_ptr + pid + 1)
    for t in range(first, last):
        node = tl.load(leaves_ptr + t)
        # the leaf's box against each row's worst kept: a leaf farther from every row than its
        # worst is skipped, points unread (leaves come nearest first, so most later ones are)
        box = tl.zeros((BLOCK,), tl.float64)
        for a in range(D):
            qa = tl.load(q_ptr + rows * D + a, mask=row_ok, other=0.0)
            gap = tl.maximum(tl.load(lo_ptr + node * D + a) - qa, qa - tl.load(hi_ptr + node * D + a))
            gap = tl.maximum(gap, 0.0)
            box += gap * gap
        if tl.sum((row_ok & (box <= worst_d)).to(tl.int32), axis=0) > 0:
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
            # the leaf's points that beat a row's worst kept: most leaves have none for any row,
            # and a few rows a few (a step each, for the block's most: not K steps a leaf)
            enter = row_ok[:, None] & (d < float("inf")) & (
                (d < worst_d[:, None]) | ((d == worst_d[:, None]) & (ids < worst_i[:, None])))
            for _ in range(tl.max(tl.sum(enter.to(tl.int32), axis=1), axis=0)):
                cand = tl.where(enter, d, float("inf"))
                m = tl.min(cand, axis=1)
                mi = tl.min(tl.where(enter & (cand == m[:, None]), ids, BIG), axis=1)
                # still better than the worst, which the row's earlier steps may have lowered
                better = (mi < BIG) & ((m < worst_d) | ((m == worst_d) & (mi < worst_i)))
                swap = better[:, None] & (run_d == worst_d[:, None]) & (run_i == worst_i[:, None])
                run_d = tl.where(swap, m[:, None], run_d)
                run_i = tl.where(swap, mi[:, None], run_i)
                enter = enter & (ids != mi[:, None])
                worst_d, worst_i = _worst(run_d, run_i, slots, K)
    # the bag in order, by (distance, row): K extraction steps, once per block of queries
    out = rows[:, None] * K + slots[None, :]
    mask = row_ok[:, None] & (slots[None, :] < K)
    sorted_d = tl.full((BLOCK, KP), float("inf"), tl.float64)
    sorted_i = tl.full((BLOCK, KP), BIG, tl.int64)
    live = slots[None, :] < K
    for j in tl.static_range(K):
        m = tl.min(tl.where(live, run_d, float("inf")), axis=1)
        mi = tl.min(tl.where(live & (run_d == m[:, None]), run_i, BIG + KP), axis=1)  # above every slot's
        sorted_d = tl.where(slots[None, :] == j, m[:, None], sorted_d)
        sorted_i = tl.where(slots[None, :] == j, mi[:, None], sorted_i)
        live = live & (run_i != mi[:, None])
    sorted_i = tl.where(sorted_i >= BIG, N, sorted_i)
    tl.store(out_d_ptr + out, sorted_d, mask=mask)
    tl.store(out_i_ptr + out, sorted_i, mask=mask)


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
        q, t.pts, t.perm, t.starts, t.ends, t.lo, t.hi, offsets, leaves, out_d, out_i,
        len(q), t.dim, t.n, float(bound),
        BLOCK=block, LEAF=triton.next_power_of_2(t.max_leaf), KP=triton.next_power_of_2(k), K=k,
    )
    return out_d, out_i
