"""Compiled CPU kernels (numba) of the bucketed hash table: one call processes a batch in order,
so a batch means exactly what the same calls one key at a time would.

# Table (structure of arrays, shared with the Triton path):
#   tkeys    : (nb, bs) int64   keys' bits (EMPTY: the table's empty key)
#   tdig     : (nb, bs) uint8   8-bit digests: bits 32..39 of murmur3's fmix64 of the key, 0 taken as 1;
#                               0 marks a free slot
#   tscores  : (nb, bs) int64   scores' bits, compared as uint64
#   sizes    : (nb,)    int32   occupied slots per bucket
#   hbm      : (nb * k, dim)        values of slot positions 0..k-1 of every bucket (fast tier)
#   host     : (nb * (bs - k), dim) values of positions k..bs-1 (host tier)
# A key hashes to bucket (h >> log2(bs)) & (nb - 1); it may sit in any slot of that bucket. A
# lookup compares the digest byte of every slot and the key only where digests match (1/255 of
# the occupied slots by chance, never a free one: no key's digest is 0), so the bucket is scanned
# fully and no tombstones are needed. An insert takes the lowest free position (the fast tier
# first) or, in a full bucket, the slot of the lowest score (lowest position on ties) if the new
# score is not below it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

M1 = np.uint64(0xFF51AFD7ED558CCD)
M2 = np.uint64(0xC4CEB9FE1A85EC53)
SIGN = np.int64(-(2**63))
EMPTY_DIGEST = 0  # a free slot's digest; no key's
LOW32 = np.int64(0xFFFFFFFF)
HIGH32 = np.int64(-(2**32))

# Operations of ``upsert``.
OP_INSERT_OR_ASSIGN, OP_INSERT_AND_EVICT, OP_FIND_OR_INSERT, OP_ASSIGN, OP_ACCUM, OP_RESTORE = range(6)
# Score rules on a hit: set the new score, add it (Lfu), add its low 32 bits saturating and take
# its epoch (EpochLfu), keep the stored one.
SCORE_SET, SCORE_ADD, SCORE_EPOCH_ADD, SCORE_KEEP = range(4)


@njit(cache=True, nogil=True, inline="always")
def fmix64(key):  # pragma: no cover - compiled
    k = np.uint64(key)
    k ^= k >> np.uint64(33)
    k *= M1
    k ^= k >> np.uint64(33)
    k *= M2
    k ^= k >> np.uint64(33)
    return k


@njit(cache=True, nogil=True, inline="always")
def locate(key, shift, nb):  # pragma: no cover - compiled
    h = fmix64(key)
    bucket = np.int64(h >> np.uint64(shift)) & (nb - 1)
    digest = np.uint8(max(np.uint64(1), (h >> np.uint64(32)) & np.uint64(0xFF)))
    return bucket, digest


@njit(cache=True, nogil=True, inline="always")
def probe(tkeys, tdig, b, key, digest):  # pragma: no cover - compiled
    for p in range(tkeys.shape[1]):
        if tdig[b, p] == digest and tkeys[b, p] == key:
            return p
    return -1


@njit(cache=True, nogil=True, inline="always")
def new_score(old, desired, rule):  # pragma: no cover - compiled
    if rule == SCORE_SET:
        return desired
    if rule == SCORE_ADD:
        return old + desired  # wraps modulo 2**64 as uint64 arithmetic does
    if rule == SCORE_EPOCH_ADD:
        low = (old & LOW32) + (desired & LOW32)
        return (desired & HIGH32) | (min(LOW32, low))
    return old


@njit(cache=True, nogil=True, inline="always")
def value_row(hbm, host, nb_k, bs, b, p):  # pragma: no cover - compiled
    k = nb_k
    if p < k:
        return hbm[b * k + p]
    return host[b * (bs - k) + p - k]


@njit(cache=True, nogil=True, boundscheck=False)
def lookup(tkeys, tdig, tscores, hbm, host, k_hbm, shift, keys, out_values, out_scores, out_slots,
           copy_values):  # pragma: no cover - compiled
    """Slots (-1 when missing), scores and, with ``copy_values``, values of ``keys``."""
    nb, bs = tkeys.shape
    for i in range(len(keys)):
        b, d = locate(keys[i], shift, nb)
        p = probe(tkeys, tdig, b, keys[i], d)
        if p < 0:
            out_slots[i] = -1
            out_scores[i] = 0
            if copy_values:
                out_values[i, :] = 0
            continue
        out_slots[i] = b * bs + p
        out_scores[i] = tscores[b, p]
        if copy_values:
            out_values[i, :] = value_row(hbm, host, k_hbm, bs, b, p)


@njit(cache=True, nogil=True, inline="always")
def claim(tkeys, tscores, sizes, b, desired, empty):  # pragma: no cover - compiled
    """Position for a new key in bucket b: a free one, else the lowest score's if ``desired`` is not
    below it (then ``evicted`` is True), else -1 (refused)."""
    bs = tkeys.shape[1]
    if sizes[b] < bs:
        for p in range(bs):
            if tkeys[b, p] == empty:  # (its digest is EMPTY_DIGEST)
                sizes[b] += 1
                return p, False
    low, at = tscores[b, 0] ^ SIGN, 0
    for p in range(1, bs):
        s = tscores[b, p] ^ SIGN
        if s < low:
            low, at = s, p
    if (desired ^ SIGN) < low:
        return -1, False
    return at, True


@njit(cache=True, nogil=True, boundscheck=False)
def upsert(tkeys, tdig, tscores, sizes, hbm, host, k_hbm, shift, empty, keys, values, desired, rule, flags, op,
           out_values, out_slots, ev_keys, ev_values, ev_scores):  # pragma: no cover - compiled
    """Apply ``op`` to each key in order; return the number of evicted (or refused) entries.

    values: (n, dim) inputs (n = 0 rows: write nothing, e.g. find_or_insert without values);
    desired: scores of new keys and the operand of ``rule`` on hits; flags: accum_or_assign's;
    out_values: find_or_insert's results; out_slots: final slot per key (-1: absent/refused).
    """
    nb, bs = tkeys.shape
    has_values = values.shape[0] > 0
    n_ev = 0
    for i in range(len(keys)):
        key = keys[i]
        b, d = locate(key, shift, nb)
        p = probe(tkeys, tdig, b, key, d)
        if p >= 0:
            out_slots[i] = b * bs + p
            if op == OP_RESTORE or (op == OP_ACCUM and not flags[i]):
                continue
            tscores[b, p] = new_score(tscores[b, p], desired[i], rule)
            row = value_row(hbm, host, k_hbm, bs, b, p)
            if op == OP_FIND_OR_INSERT:
                out_values[i, :] = row
            elif op == OP_ACCUM:
                row += values[i]
            elif has_values:
                row[:] = values[i]
            continue
        if op == OP_ASSIGN or (op == OP_ACCUM and flags[i]):
            out_slots[i] = -1
            continue
        p, evicted = claim(tkeys, tscores, sizes, b, desired[i], empty)
        if p < 0:
            out_slots[i] = -1
            if op == OP_INSERT_AND_EVICT:
                ev_keys[n_ev], ev_scores[n_ev] = key, desired[i]
                if has_values:
                    ev_values[n_ev] = values[i]
                n_ev += 1
            if op == OP_FIND_OR_INSERT and has_values:
                out_values[i, :] = values[i]
            continue
        row = value_row(hbm, host, k_hbm, bs, b, p)
        if evicted and op == OP_INSERT_AND_EVICT:
            ev_keys[n_ev], ev_scores[n_ev] = tkeys[b, p], tscores[b, p]
            ev_values[n_ev] = row
            n_ev += 1
        tkeys[b, p], tdig[b, p], tscores[b, p] = key, d, desired[i]
        out_slots[i] = b * bs + p
        if has_values:
            row[:] = values[i]
        else:
            row[:] = 0
        if op == OP_FIND_OR_INSERT:
            out_values[i, :] = row
    return n_ev


@njit(cache=True, nogil=True, boundscheck=False)
def erase(tkeys, tdig, tscores, sizes, shift, empty, keys):  # pragma: no cover - compiled
    """Remove ``keys`` (missing ones are ignored); return how many were removed."""
    nb = tkeys.shape[0]
    removed = 0
    for i in range(len(keys)):
        b, d = locate(keys[i], shift, nb)
        p = probe(tkeys, tdig, b, keys[i], d)
        if p >= 0:
            tkeys[b, p], tdig[b, p], tscores[b, p] = empty, EMPTY_DIGEST, 0
            sizes[b] -= 1
            removed += 1
    return removed
