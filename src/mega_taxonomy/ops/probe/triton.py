"""Triton kernel of probe-and-rerank (CUDA): each (query, probed list) pair scans the list's rows
and keeps its best KP; a torch step merges a query's candidates (deduplicated) into its top-k.

Kernel contract
  q        : (n, D)       float32 / float16 / bfloat16, row-major   (cosine: rows normalized)
  q_base   : (n,)         float32: |q|^2, 1 or 0 (see ops/probe)
  probes   : (n, P)       int64: lists probed, -1 for none
  offsets  : (L + 1,)     int64 CSR: rows of list l are offsets[l]:offsets[l + 1]
  vectors  : (N, D)       same dtype as q, row-major, grouped by list
  x_add    : (N,)         float32;  x_scale : (N,) float32
  out_d    : (n, P, KP)   float32: the KP smallest q_base + x_add + x_scale * q.x of the list, ascending
  out_p    : (n, P, KP)   int64: their rows (positions in vectors), -1 padding
One program per (query, probe slot): row tiles of BLOCK_N, products accumulated in float32 over
D in BLOCK_D chunks, a running top-KP (KP = k rounded up to a power of two, at most 16) merged
by KP extraction steps, as ``topk/triton.py`` does. Not yet: grouping the queries of a list into
one tensor-core product (the CPU kernel's layout); this first kernel reads a list once per query.
Tested in Triton's interpreter (tests/ops/probe); not yet timed on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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


def probe_scan_triton(q, q_base, probes, offsets, vectors, x_add, x_scale, k, floor, *, block_n=64):
    """(distances, positions), both (n, P * KP): every probed list's best KP rows of each query."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"the probe kernel takes 1 <= k <= {MAX_K}, got {k}")
    q, vectors = q.contiguous(), vectors.to(q.dtype).contiguous()
    n, p = probes.shape
    kp = 1 << max(k - 1, 0).bit_length()
    out_d = torch.empty(n, p, kp, dtype=torch.float32, device=q.device)
    out_p = torch.empty(n, p, kp, dtype=torch.int64, device=q.device)
    block_d = min(128, triton.next_power_of_2(q.shape[1]))
    if n and p:
        _probe_kernel[(n, p)](q, q_base.float().contiguous(), probes.contiguous(), offsets.contiguous(), vectors,
                              x_add.float().contiguous(), x_scale.float().contiguous(), out_d, out_p, p, q.shape[1],
                              q.stride(0), vectors.stride(0), float(floor), KP=kp, BLOCK_N=block_n, BLOCK_D=block_d)
    return out_d.reshape(n, p * kp), out_p.reshape(n, p * kp)
