"""Triton kernels of the bucketed hash table (the layout of ``hash_table/numba.py``).

Kernel contract
  tkeys   : (nb, bs) int64  keys' bits; the empty key marks a free slot
  tdig    : (nb, bs) uint8  digests (bits 32..39 of fmix64(key))
  tscores : (nb, bs) int64  scores' bits, compared as uint64 through ``x ^ SIGN``
  sizes   : (nb,) int32     occupied slots per bucket
  keys    : (n,) int64      the batch (reserved keys were refused by the caller)
A program takes BLOCK keys and loads, for each, its bucket's bs digest bytes as one row of a
(BLOCK, bs) tile: one 128-byte line per key at bs = 128, as the original reads. Keys are loaded
only where digests match. ``_upsert_round`` gets keys that lie in distinct buckets (one round of
``ops.hash_table.upsert_rounds``), so its reads and writes of a bucket never race and it needs
no atomics. n, nb are runtime values; bs is a constexpr (a power of two); program ids are 64-bit.
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


@triton.jit
def _lookup(tkeys, tdig, tscores, keys, out_slots, out_scores, n, nb_mask, m1, m2,
            SHIFT: tl.constexpr, BS: tl.constexpr, BLOCK: tl.constexpr):
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


@triton.jit
def _upsert_round(tkeys, tdig, tscores, sizes, keys, buckets, digests, desired, out_slots, out_status,
                  out_old_keys, out_old_scores, n, empty, empty_digest, sign, low32, high32,
                  RULE: tl.constexpr, INSERT: tl.constexpr, BS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    k = tl.load(keys + offs, mask=m, other=0)
    b = tl.load(buckets + offs, mask=m, other=0)
    d = tl.load(digests + offs, mask=m, other=0)
    des = tl.load(desired + offs, mask=m, other=0)
    cols = tl.arange(0, BS)
    base = b[:, None] * BS + cols[None, :]
    m2 = m[:, None]
    dg = tl.load(tdig + base, mask=m2, other=0)
    cand = (dg == d[:, None]) & m2
    hit = cand & (tl.load(tkeys + base, mask=cand, other=0) == k[:, None])
    hpos = tl.min(tl.where(hit, cols[None, :], BS), axis=1)
    fcand = (dg == empty_digest) & m2
    free = fcand & (tl.load(tkeys + base, mask=fcand, other=0) == empty)
    fpos = tl.min(tl.where(free, cols[None, :], BS), axis=1)
    sc = tl.load(tscores + base, mask=m2, other=0) ^ sign
    low = tl.min(sc, axis=1)
    lpos = tl.min(tl.where(sc == low[:, None], cols[None, :], BS), axis=1)
    found = hpos < BS
    has_free = fpos < BS
    pos = tl.where(found, hpos, tl.where(has_free, fpos, lpos))
    admit = has_free | ((des ^ sign) >= low)
    if INSERT:
        put = (hpos >= BS) & admit
        status = tl.where(found, _FOUND, tl.where(admit, tl.where(has_free, _INSERTED, _EVICTED), _REFUSED))
    else:
        put = hpos < 0  # never
        status = tl.where(found, _FOUND, _MISSING)
    slot = b * BS + pos
    old_k = tl.load(tkeys + slot, mask=m, other=0)
    old_s = tl.load(tscores + slot, mask=m, other=0)
    if RULE == _SET:
        new = des
    elif RULE == _ADD:
        new = old_s + des
    elif RULE == _EPOCH_ADD:
        new = (des & high32) | tl.minimum((old_s & low32) + (des & low32), low32)
    else:
        new = old_s
    score = tl.where(found, new, des)
    write = (found | put) & m
    tl.store(tkeys + slot, k, mask=write)
    tl.store(tdig + slot, d, mask=write)
    tl.store(tscores + slot, score, mask=write)
    grow = put & has_free & m
    tl.store(sizes + b, tl.load(sizes + b, mask=grow, other=0) + 1, mask=grow)
    tl.store(out_slots + offs, tl.where(write, slot, -1), mask=m)
    tl.store(out_status + offs, status.to(tl.int64), mask=m)
    tl.store(out_old_keys + offs, old_k, mask=m)
    tl.store(out_old_scores + offs, old_s, mask=m)


def lookup_triton(b, keys: torch.Tensor):
    """(slots, scores) of ``keys``, -1 and 0 where missing; see ``lookup_reference``."""
    keys = keys.contiguous()
    n = len(keys)
    nb, bs = b.keys.shape
    slots = torch.empty(n, dtype=torch.int64, device=keys.device)
    scores = torch.empty(n, dtype=torch.int64, device=keys.device)
    if n:
        _lookup[(triton.cdiv(n, BLOCK),)](b.keys, b.digests, b.scores, keys, slots, scores, n, nb - 1, M1, M2,
                                           SHIFT=b.shift, BS=bs, BLOCK=BLOCK)
    return slots, scores


def upsert_round_triton(b, keys, bucket, digest, desired, rule, insert):
    """One round of ``upsert_rounds`` (keys in distinct buckets); see ``upsert_round_reference``."""
    n = len(keys)
    out = [torch.empty(n, dtype=torch.int64, device=keys.device) for _ in range(4)]
    if n:
        _upsert_round[(triton.cdiv(n, BLOCK),)](
            b.keys, b.digests, b.scores, b.sizes, keys.contiguous(), bucket.contiguous(), digest.contiguous(),
            desired.contiguous(), *out, n, b.empty, b.empty_digest, SIGN, LOW32, HIGH32,
            RULE=rule, INSERT=bool(insert), BS=b.keys.shape[1], BLOCK=BLOCK)
    return tuple(out)


__all__ = ["lookup_triton", "upsert_round_triton"]
