"""Triton kernels of the bucketed hash table (the layout of ``hash_table/numba.py``).

Kernel contract
  tkeys   : (nb, bs) int64  keys' bits; the empty key marks a free slot
  tdig    : (nb, bs) uint8  digests (bits 32..39 of fmix64(key))
  tscores : (nb, bs) int64  scores' bits, compared as uint64 through ``x ^ SIGN``
  sizes   : (nb,) int32     occupied slots per bucket
  keys    : (n,) int64      the batch (reserved keys were refused by the caller)
A program takes BLOCK keys and loads, for each, its bucket's bs digest bytes as one row of a
(BLOCK, bs) tile: one 128-byte line per key at bs = 128, as the original reads. Keys are loaded
only where digests match. ``_upsert_buckets`` runs every round of ``ops.hash_table.upsert_rounds``
in one launch: a program owns whole buckets and applies each one's keys in order, so no two
programs touch a bucket and it needs no atomics. n, nb are runtime values; bs is a constexpr (a
power of two); program ids are 64-bit.
Values are not touched here: the caller gathers and scatters them by slot (``kv/tiers.py``), so
the same kernels serve values in GPU memory and in pinned host memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import EVICTED, FOUND, INSERTED, MISSING, REFUSED, SCORE_ADD, SCORE_EPOCH_ADD, SCORE_SET, SIGN

# Triton reads module globals inside kernels only as constexprs.
_FOUND, _INSERTED, _EVICTED = tl.constexpr(FOUND), tl.constexpr(INSERTED), tl.constexpr(EVICTED)
_REFUSED, _MISSING = tl.constexpr(REFUSED), tl.constexpr(MISSING)
_SET, _ADD, _EPOCH_ADD = tl.constexpr(SCORE_SET), tl.constexpr(SCORE_ADD), tl.constexpr(SCORE_EPOCH_ADD)

M1 = 0xFF51AFD7ED558CCD  # passed as arguments: Triton types ints >= 2**63 as uint64
M2 = 0xC4CEB9FE1A85EC53
LOW32 = 0xFFFFFFFF
HIGH32 = -(2**32)
# Keys per program: a (BLOCK, bs) tile of digest bytes, 4 KB at bs = 128. Not tuned on a GPU yet.
BLOCK = 32
# Buckets per program of the upsert: their keys, digests and scores are held in registers.
BUCKETS = 8


@triton.jit
def _lookup(tkeys, tdig, tscores, keys, out_slots, out_scores, vals, out_vals, dim, n, nb_mask, m1, m2,
            SHIFT: tl.constexpr, BS: tl.constexpr, BLOCK: tl.constexpr, DIM: tl.constexpr, COPY: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    k = tl.load(keys + offs, mask=m, other=0)
    h = k.to(tl.uint64, bitcast=True)
    h = h ^ (h >> 33)
    h = h * m1
    h = h ^ (h >> 33)
    h = h * m2
    h = h ^ (h >> 33)
    bucket = (h >> SHIFT).to(tl.int64) & nb_mask
    digest = ((h >> 32) & 0xFF).to(tl.uint8)
    cols = tl.arange(0, BS)
    base = bucket[:, None] * BS + cols[None, :]
    cand = (tl.load(tdig + base, mask=m[:, None], other=0) == digest[:, None]) & m[:, None]
    hit = cand & (tl.load(tkeys + base, mask=cand, other=0) == k[:, None])
    pos = tl.min(tl.where(hit, cols[None, :], BS), axis=1)
    found = (pos < BS) & m
    slot = bucket * BS + pos
    tl.store(out_slots + offs, tl.where(found, slot, -1), mask=m)
    tl.store(out_scores + offs, tl.load(tscores + slot, mask=found, other=0), mask=m)
    if COPY:  # the found keys' values (dim of them a row), zeros for the missing
        d = tl.arange(0, DIM)
        row_ok = (d < dim)[None, :]
        v = tl.load(vals + slot[:, None] * dim + d[None, :], mask=found[:, None] & row_ok, other=0)
        tl.store(out_vals + offs[:, None] * dim + d[None, :], v, mask=m[:, None] & row_ok)


@triton.jit
def _upsert_buckets(tkeys, tdig, tscores, sizes, keys, digests, desired, by_bucket, starts, counts, out_slots,
                    out_status, out_old_keys, out_old_scores, nb, empty, sign, low32, high32,
                    RULE: tl.constexpr, INSERT: tl.constexpr, BS: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    count = tl.load(counts + b, mask=b < nb, other=0)
    first = tl.load(starts + b, mask=count > 0, other=0)
    cols = tl.arange(0, BS)
    base = b[:, None] * BS + cols[None, :]
    m2 = (count > 0)[:, None]
    # the buckets' slots, loaded once and kept current in registers: a bucket's r-th key sees what
    # its earlier keys wrote without reading global memory back (no ordering between threads needed)
    tk = tl.load(tkeys + base, mask=m2, other=0)
    td = tl.load(tdig + base, mask=m2, other=0)
    ts = tl.load(tscores + base, mask=m2, other=0) ^ sign  # unsigned order
    grown = tl.zeros((BLOCK,), tl.int32)
    for r in range(tl.max(count, axis=0)):
        live = r < count
        i = tl.load(by_bucket + first + r, mask=live, other=0)
        k = tl.load(keys + i, mask=live, other=0)
        d = tl.load(digests + i, mask=live, other=0)
        des = tl.load(desired + i, mask=live, other=0)
        hit = (td == d[:, None]) & (tk == k[:, None]) & live[:, None]
        hpos = tl.min(tl.where(hit, cols[None, :], BS), axis=1)
        fpos = tl.min(tl.where(tk == empty, cols[None, :], BS), axis=1)
        low = tl.min(ts, axis=1)
        lpos = tl.min(tl.where(ts == low[:, None], cols[None, :], BS), axis=1)
        found = hpos < BS
        has_free = fpos < BS
        pos = tl.where(found, hpos, tl.where(has_free, fpos, lpos))
        admit = has_free | ((des ^ sign) >= low)
        if INSERT:
            put = (~found) & admit & live
            status = tl.where(found, _FOUND, tl.where(admit, tl.where(has_free, _INSERTED, _EVICTED), _REFUSED))
        else:
            put = found & (~live)  # never
            status = tl.where(found, _FOUND, _MISSING)
        at = cols[None, :] == pos[:, None]
        old_k = tl.sum(tl.where(at, tk, 0), axis=1)
        old_s = tl.sum(tl.where(at, ts, 0), axis=1) ^ sign
        if RULE == _SET:
            new = des
        elif RULE == _ADD:
            new = old_s + des
        elif RULE == _EPOCH_ADD:
            new = (des & high32) | tl.minimum((old_s & low32) + (des & low32), low32)
        else:
            new = old_s
        score = tl.where(found, new, des)
        write = (found | put) & live
        at = at & write[:, None]
        tk = tl.where(at, k[:, None], tk)
        td = tl.where(at, d[:, None], td)
        ts = tl.where(at, (score ^ sign)[:, None], ts)
        slot = b * BS + pos
        tl.store(tkeys + slot, k, mask=write)
        tl.store(tdig + slot, d, mask=write)
        tl.store(tscores + slot, score, mask=write)
        grown += (put & has_free).to(tl.int32)
        tl.store(out_slots + i, tl.where(write, slot, -1), mask=live)
        tl.store(out_status + i, status.to(tl.int64), mask=live)
        tl.store(out_old_keys + i, old_k, mask=live)
        tl.store(out_old_scores + i, old_s, mask=live)
    tl.store(sizes + b, tl.load(sizes + b, mask=grown > 0, other=0) + grown, mask=grown > 0)


def lookup_triton(b, keys: torch.Tensor, values: torch.Tensor | None = None):
    """(slots, scores) of ``keys``, -1 and 0 where missing; see ``lookup_reference``. With
    ``values`` (slots, dim) on the keys' device, also the keys' rows of it (zeros where missing),
    read in the same launch: a gather after the lookup read the slots back and took twice the
    lookup's time (2^20 keys of dim 8, an H100)."""
    keys = keys.contiguous()
    n = len(keys)
    nb, bs = b.keys.shape
    slots = torch.empty(n, dtype=torch.int64, device=keys.device)
    scores = torch.empty(n, dtype=torch.int64, device=keys.device)
    copy = values is not None
    dim = values.shape[1] if copy else 1
    found = torch.empty(n if copy else 0, dim, dtype=values.dtype if copy else torch.float32, device=keys.device)
    if n:
        _lookup[(triton.cdiv(n, BLOCK),)](b.keys, b.digests, b.scores, keys, slots, scores,
                                           values.contiguous() if copy else slots, found if copy else slots, dim, n,
                                           nb - 1, M1, M2, SHIFT=b.shift, BS=bs, BLOCK=BLOCK,
                                           DIM=triton.next_power_of_2(dim), COPY=copy)
    return (slots, scores, found) if copy else (slots, scores)


def upsert_buckets_triton(b, keys, digest, desired, by_bucket, starts, counts, rule, insert):
    """Every round of ``upsert_rounds`` in one launch: a program takes BLOCK buckets and applies
    each bucket's keys in their order (``by_bucket[starts[j]:starts[j] + counts[j]]`` are bucket
    j's, in first-occurrence order), as the rounds would one after the other; returns (slots,
    status, old_keys, old_scores) per key, as ``upsert_round_reference`` does per round."""
    n, nb = len(keys), b.keys.shape[0]
    out = [torch.empty(n, dtype=torch.int64, device=keys.device) for _ in range(4)]
    if n:
        _upsert_buckets[(triton.cdiv(nb, BUCKETS),)](
            b.keys, b.digests, b.scores, b.sizes, keys.contiguous(), digest.contiguous(), desired.contiguous(),
            by_bucket.contiguous(), starts.contiguous(), counts.contiguous(), *out, nb, b.empty, SIGN, LOW32, HIGH32,
            RULE=rule, INSERT=bool(insert), BS=b.keys.shape[1], BLOCK=BUCKETS)
    return tuple(out)


__all__ = ["lookup_triton", "upsert_buckets_triton"]
