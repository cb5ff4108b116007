"""Triton kernels of probe-and-rerank (CUDA): each probed list's best KP rows for each query that
probes it; a torch step merges a query's candidates (deduplicated) into its top-k.

Two layouts, the same outputs:
- ``_probe_kernel``, query-major: one program per (query, probe slot) scans the list's rows with
  products on CUDA cores. A list is read once per query that probes it: on an H200, 10k queries at
  nprobe 128 over 10M x 128 rows (``benchmarks/results/ivf_gpu.json``) ran at the speed of brute
  force, reading about 1.6 TB.
- ``_list_kernel``, list-major: the (query, slot) pairs grouped by list, one program per tile of
  BLOCK_Q queries of a list, which streams the list's rows once for all of them as tensor-core
  products (BLOCK_Q x BLOCK_N distances a step, TF32 where torch allows it, else 3xTF32 for float32
  accuracy), the queries' running top-KP kept per row; a row tile that improves no query's KP-th
  best skips the merge. The IVF layout the CPU kernel (``numba.py``) already uses.

Kernel contract
  q        : (n, D)       float32 / float16 / bfloat16, row-major   (cosine: rows normalized)
  q_base   : (n,)         float32: |q|^2, 1 or 0 (see ops/probe)
  probes   : (n, P)       int64: lists probed, -1 for none
  offsets  : (L + 1,)     int64 CSR: rows of list l are offsets[l]:offsets[l + 1]
  vectors  : (N, D)       same dtype as q, row-major, grouped by list
  x_add    : (N,)         float32;  x_scale : (N,) float32
  out_d    : (n, P, KP)   float32: the KP smallest q_base + x_add + x_scale * q.x of the list, ascending
  out_p    : (n, P, KP)   int64: their rows (positions in vectors), -1 padding
The running top-KP (KP = k rounded up to a power of two, at most 16) is merged by KP extraction
steps, as ``topk/triton.py`` does; earlier rows win ties.
"""


from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import next_pow2
from ..topk.triton import merge_running

MAX_K = 16


@triton.jit
def _probe_kernel(
    q_ptr,  # *T [n, D]
    q_base_ptr,  # *f32 [n]
    probes_ptr,  # *i64 [n, P]
    offsets_ptr,  # *i64 [L + 1]
    v_ptr,  # *T [N, D]
    x_add_ptr,  # *f32 [N]
    x_scale_ptr,  # *f32 [N]
    out_d_ptr,  # *f32 [n, P, KP]
    out_p_ptr,  # *i64 [n, P, KP]
    P, D, stride_q, stride_v, floor,
    KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64)
    lst = tl.load(probes_ptr + r * P + s)
    safe = tl.maximum(lst, 0)
    lo = tl.load(offsets_ptr + safe)
    hi = tl.load(offsets_ptr + safe + 1)
    hi = tl.where(lst >= 0, hi, lo)
    q_base = tl.load(q_base_ptr + r)
    slots = tl.arange(0, KP)
    lanes = tl.arange(0, BLOCK_N)
    run_d = tl.full((KP,), float("inf"), tl.float32)
    run_p = tl.full((KP,), -1, tl.int64)
    for n0 in range(lo, hi, BLOCK_N):
        rows = n0 + lanes
        ok = rows < hi
        acc = tl.zeros((BLOCK_N,), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_ok = cols < D
            x = tl.load(v_ptr + rows[:, None] * stride_v + cols[None, :], mask=ok[:, None] & col_ok[None, :],
                        other=0.0).to(tl.float32)
            qv = tl.load(q_ptr + r * stride_q + cols, mask=col_ok, other=0.0).to(tl.float32)
            acc += tl.sum(x * qv[None, :], axis=1)
        dist = q_base + tl.load(x_add_ptr + rows, mask=ok, other=0.0) + tl.load(x_scale_ptr + rows, mask=ok,
                                                                                 other=0.0) * acc
        dist = tl.where(ok, tl.maximum(dist, floor), float("inf"))
        new_d = tl.full((KP,), float("inf"), tl.float32)
        new_p = tl.full((KP,), -1, tl.int64)
        for j in tl.static_range(KP):
            m_t, p_t = tl.min(dist, axis=0, return_indices=True)
            m_r, p_r = tl.min(run_d, axis=0, return_indices=True)
            i_r = tl.sum(tl.where(slots == p_r, run_p, 0))
            take_run = m_r <= m_t  # running entries come from lower rows: they win ties
            val = tl.where(take_run, m_r, m_t)
            pos = tl.where(take_run, i_r, p_t.to(tl.int64) + n0)
            pos = tl.where(val < float("inf"), pos, -1)
            new_d = tl.where(slots == j, val, new_d)
            new_p = tl.where(slots == j, pos, new_p)
            run_d = tl.where(slots == p_r, tl.where(take_run, float("inf"), run_d), run_d)
            dist = tl.where(lanes == p_t, tl.where(take_run, dist, float("inf")), dist)
        run_d = new_d
        run_p = new_p
    out = (r * P + s) * KP + slots
    tl.store(out_d_ptr + out, run_d)
    tl.store(out_p_ptr + out, run_p)


@triton.jit
def _list_kernel(
    q_ptr,  # *T [n, D]
    q_base_ptr,  # *f32 [n]
    pair_q_ptr,  # *i64 [pairs]: the query of each (query, slot) pair, pairs grouped by list
    pair_s_ptr,  # *i64 [pairs]: its probe slot
    tile_list_ptr,  # *i64 [tiles]: the list of each tile of pairs
    tile_start_ptr,  # *i64 [tiles]: its first pair
    tile_end_ptr,  # *i64 [tiles]: one past its last pair
    offsets_ptr,  # *i64 [L + 1]
    v_ptr,  # *T [N, D]
    x_add_ptr,  # *f32 [N]
    x_scale_ptr,  # *f32 [N]
    out_d_ptr,  # *f32 [n, P, KP]
    out_p_ptr,  # *i64 [n, P, KP]
    P, D, stride_q, stride_v, floor,
    KP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, TF32: tl.constexpr,
):
    t = tl.program_id(0)
    lst = tl.load(tile_list_ptr + t)
    first = tl.load(tile_start_ptr + t)
    pairs = first + tl.arange(0, BLOCK_Q)
    q_ok = pairs < tl.load(tile_end_ptr + t)
    qi = tl.load(pair_q_ptr + pairs, mask=q_ok, other=0)
    si = tl.load(pair_s_ptr + pairs, mask=q_ok, other=0)
    lo = tl.load(offsets_ptr + lst)
    hi = tl.load(offsets_ptr + lst + 1)
    q_base = tl.load(q_base_ptr + qi, mask=q_ok, other=0.0)
    slots = tl.arange(0, KP)
    lanes = tl.arange(0, BLOCK_N)
    run_d = tl.full((BLOCK_Q, KP), float("inf"), tl.float32)
    run_p = tl.full((BLOCK_Q, KP), -1, tl.int64)
    for n0 in range(lo, hi, BLOCK_N):
        rows = n0 + lanes
        ok = rows < hi
        acc = tl.zeros((BLOCK_Q, BLOCK_N), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_ok = cols < D
            qt = tl.load(q_ptr + qi[:, None] * stride_q + cols[None, :], mask=q_ok[:, None] & col_ok[None, :],
                         other=0.0)
            xt = tl.load(v_ptr + rows[:, None] * stride_v + cols[None, :], mask=ok[:, None] & col_ok[None, :],
                         other=0.0)
            if TF32:
                acc += tl.dot(qt, tl.trans(xt))
            else:
                acc += tl.dot(qt, tl.trans(xt), input_precision="tf32x3")
        add = tl.load(x_add_ptr + rows, mask=ok, other=0.0)
        scale = tl.load(x_scale_ptr + rows, mask=ok, other=0.0)
        dist = q_base[:, None] + add[None, :] + scale[None, :] * acc
        dist = tl.where(ok[None, :] & q_ok[:, None], tl.maximum(dist, floor), float("inf"))
        # the merge only where a distance beats its query's KP-th best so far
        if tl.sum((dist < tl.max(run_d, axis=1)[:, None]).to(tl.int32)) > 0:
            run_d, run_p = merge_running(run_d, run_p, dist, n0, KP, BLOCK_N)
    run_p = tl.where(run_d < float("inf"), run_p, -1)
    out = (qi[:, None] * P + si[:, None]) * KP + slots[None, :]
    tl.store(out_d_ptr + out, run_d, mask=q_ok[:, None])
    tl.store(out_p_ptr + out, run_p, mask=q_ok[:, None])


def probe_scan_triton(q, q_base, probes, offsets, vectors, x_add, x_scale, k, floor, *, block_n=64):
    """(distances, positions), both (n, P * KP): every probed list's best KP rows of each query."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"the probe kernel takes 1 <= k <= {MAX_K}, got {k}")
    q, vectors = q.contiguous(), vectors.to(q.dtype).contiguous()
    n, p = probes.shape
    kp = next_pow2(k)
    out_d = torch.empty(n, p, kp, dtype=torch.float32, device=q.device)
    out_p = torch.empty(n, p, kp, dtype=torch.int64, device=q.device)
    block_d = min(128, triton.next_power_of_2(q.shape[1]))
    if n and p:
        _probe_kernel[(n, p)](q, q_base.float().contiguous(), probes.contiguous(), offsets.contiguous(), vectors,
                              x_add.float().contiguous(), x_scale.float().contiguous(), out_d, out_p, p, q.shape[1],
                              q.stride(0), vectors.stride(0), float(floor), KP=kp, BLOCK_N=block_n, BLOCK_D=block_d)
    return out_d.reshape(n, p * kp), out_p.reshape(n, p * kp)


def list_tiles(probes: torch.Tensor, n_lists: int, block_q: int):
    """The (query, slot) pairs of ``probes`` grouped by list (queries in order within a list), and
    tiles of at most ``block_q`` pairs of one list: (pair_q, pair_s, tile_list, tile_start,
    tile_end). One synchronisation: the number of tiles, the kernel's grid."""
    n, p = probes.shape
    lists = probes.reshape(-1)
    keep = lists >= 0
    pair = torch.arange(n * p, device=probes.device)[keep]
    lists = lists[keep]
    order = torch.argsort(lists, stable=True)
    lists, pair = lists[order], pair[order]
    counts = torch.bincount(lists, minlength=n_lists)
    tiles = (counts + block_q - 1) // block_q
    tile_list = torch.repeat_interleave(torch.arange(n_lists, device=probes.device), tiles)
    list_first = torch.cumsum(counts, 0) - counts
    within = torch.arange(len(tile_list), device=probes.device) - (torch.cumsum(tiles, 0) - tiles)[tile_list]
    tile_start = list_first[tile_list] + within * block_q
    tile_end = torch.minimum(tile_start + block_q, list_first[tile_list] + counts[tile_list])
    return pair // p, pair % p, tile_list, tile_start, tile_end


def probe_scan_list_triton(q, q_base, probes, offsets, vectors, x_add, x_scale, k, floor, *, block_q=64,
                           block_n=64):
    """:func:`probe_scan_triton`'s outputs through the list-major ``_list_kernel``."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"the probe kernel takes 1 <= k <= {MAX_K}, got {k}")
    q, vectors = q.contiguous(), vectors.to(q.dtype).contiguous()
    n, p = probes.shape
    kp = next_pow2(k)
    out_d = torch.full((n, p, kp), float("inf"), dtype=torch.float32, device=q.device)
    out_p = torch.full((n, p, kp), -1, dtype=torch.int64, device=q.device)
    pair_q, pair_s, tile_list, tile_start, tile_end = list_tiles(probes.contiguous(), len(offsets) - 1, block_q)
    block_d = min(128, max(16, triton.next_power_of_2(q.shape[1])))
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32) or q.dtype != torch.float32
    if len(tile_list):
        _list_kernel[(len(tile_list),)](
            q, q_base.float().contiguous(), pair_q, pair_s, tile_list, tile_start, tile_end, offsets.contiguous(),
            vectors, x_add.float().contiguous(), x_scale.float().contiguous(), out_d, out_p, p, q.shape[1],
            q.stride(0), vectors.stride(0), float(floor), KP=kp, BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d,
            TF32=tf32, num_warps=4)
    return out_d.reshape(n, p * kp), out_p.reshape(n, p * kp)
