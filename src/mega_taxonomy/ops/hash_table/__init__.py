"""The bucketed hash table's index structure: keys, digests and scores of every slot, and the
batched lookups and upserts over it (HierarchicalKV's layout; values live with the caller,
``kv/tiers.py``).

Two ways to run a batch:

- ``numba.py``: compiled CPU loops that take the keys one at a time, in order, and move the
  values too (``kv/`` calls them directly on the CPU).
- Rounds (this module): the distinct keys of a batch, in the order of their first occurrence,
  are ranked within their bucket; round r handles every bucket's r-th key at once, so no two
  keys of a round touch the same bucket and a round needs no locks or atomics. The torch twin
  runs the rounds one after the other (``upsert_round_reference``); on CUDA one Triton launch
  runs them all (``triton.py``: a program owns whole buckets and takes their keys in round order).
  The result equals the in-order loop's whenever no key of the batch is refused (then every
  distinct key goes in at its first occurrence with its combined score, as the loop would put it).

Examples
--------
>>> import torch
>>> b = Buckets.allocate(n_buckets=2, bucket_size=4, empty=-1)
>>> r = upsert_rounds(b, torch.tensor([5, 9, 5]), torch.tensor([1, 2, 3]), SCORE_ADD, insert=True,
...                   backend="torch")
>>> r.keys.tolist(), r.status.tolist(), lookup(b, torch.tensor([9, 5, 7]), backend="torch")[1].tolist()
([5, 9], [1, 1], [2, 4, 0])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common import shift_right_logical
from .numba import (
    HIGH32,
    LOW32,
    OP_ACCUM,
    OP_ASSIGN,
    OP_FIND_OR_INSERT,
    OP_INSERT_AND_EVICT,
    OP_INSERT_OR_ASSIGN,
    OP_RESTORE,
    SCORE_ADD,
    SCORE_EPOCH_ADD,
    SCORE_KEEP,
    SCORE_SET,
)

__all__ = [
    "EVICTED",
    "FOUND",
    "HIGH32",
    "INSERTED",
    "LOW32",
    "MISSING",
    "OP_ACCUM",
    "OP_ASSIGN",
    "OP_FIND_OR_INSERT",
    "OP_INSERT_AND_EVICT",
    "OP_INSERT_OR_ASSIGN",
    "OP_RESTORE",
    "REFUSED",
    "SCORE_ADD",
    "SCORE_EPOCH_ADD",
    "SCORE_KEEP",
    "SCORE_SET",
    "SIGN",
    "Buckets",
    "Rounds",
    "fmix64",
    "locate",
    "lookup",
    "lookup_reference",
    "lookup_values",
    "unsigned_key",
    "upsert_round_reference",
    "upsert_rounds",
]

SIGN = -(2**63)
M1 = 0xFF51AFD7ED558CCD - 2**64  # murmur3 fmix64 constants as int64 bits
M2 = 0xC4CEB9FE1A85EC53 - 2**64
# What happened to each distinct key of a round.
FOUND, INSERTED, EVICTED, REFUSED, MISSING = range(5)


@dataclass
class Buckets:
    """The slots of a table: keys, digests, scores (nb, bs) and occupied slots per bucket (nb,)."""

    keys: torch.Tensor
    digests: torch.Tensor
    scores: torch.Tensor
    sizes: torch.Tensor
    empty: int  # the empty key's int64 bits

    @classmethod
    def allocate(cls, n_buckets, bucket_size, empty, device="cpu"):
        if n_buckets & (n_buckets - 1) or bucket_size & (bucket_size - 1):
            raise ValueError(f"buckets ({n_buckets}) and bucket_size ({bucket_size}) must be powers of two")
        shape = (n_buckets, bucket_size)
        digest = int(locate(torch.tensor([empty]), 1, 1)[1])
        return cls(torch.full(shape, empty, dtype=torch.int64, device=device),
                   torch.full(shape, digest, dtype=torch.uint8, device=device),
                   torch.zeros(shape, dtype=torch.int64, device=device),
                   torch.zeros(n_buckets, dtype=torch.int32, device=device), empty)

    @property
    def shift(self):
        return self.keys.shape[1].bit_length() - 1

    @property
    def empty_digest(self):
        return int(locate(torch.tensor([self.empty]), 1, 1)[1])


def unsigned_key(x: torch.Tensor) -> torch.Tensor:
    """int64 bits whose signed order is the uint64 order of ``x`` (for min, max, sort)."""
    return x ^ SIGN


def fmix64(keys: torch.Tensor) -> torch.Tensor:
    """murmur3's 64-bit finalizer on int64 bits (multiplication wraps as uint64's does)."""
    k = keys ^ shift_right_logical(keys, 33)
    k = k * M1
    k = k ^ shift_right_logical(k, 33)
    k = k * M2
    return k ^ shift_right_logical(k, 33)


def locate(keys: torch.Tensor, n_buckets: int, bucket_size: int):
    """(bucket, digest) of every key: bucket from the hash's bits above log2(bucket_size), digest its
    bits 32..39."""
    h = fmix64(keys)
    shift = bucket_size.bit_length() - 1
    return shift_right_logical(h, shift) & (n_buckets - 1), (shift_right_logical(h, 32) & 0xFF).to(torch.uint8)


def lookup_reference(b: Buckets, keys: torch.Tensor):
    """Torch twin of the lookup: (slots, scores), -1 and 0 where a key is missing."""
    nb, bs = b.keys.shape
    bucket, digest = locate(keys, nb, bs)
    hit = (b.digests[bucket] == digest[:, None]) & (b.keys[bucket] == keys[:, None])
    found = hit.any(1)
    pos = hit.to(torch.int8).argmax(1)
    slots = torch.where(found, bucket * bs + pos, -1)
    scores = torch.where(found, b.scores.view(-1)[slots.clamp_min(0)], 0)
    return slots, scores


def lookup(b: Buckets, keys: torch.Tensor, backend: str = "auto"):
    """(slots, scores) of ``keys``: Triton on CUDA (or ``backend="triton"``), else the torch twin."""
    if _triton(keys, backend):
        from .triton import lookup_triton

        return lookup_triton(b, keys)
    return lookup_reference(b, keys)


def lookup_values(b: Buckets, keys: torch.Tensor, values: torch.Tensor, backend: str = "auto"):
    """(slots, scores, rows): :func:`lookup`, and the keys' rows of ``values`` (slots, dim) on the
    keys' device, zeros where a key is missing; in the lookup's launch on CUDA."""
    if _triton(keys, backend):
        from .triton import lookup_triton

        return lookup_triton(b, keys, values)
    slots, scores = lookup_reference(b, keys)
    return slots, scores, values[slots.clamp_min(0)].masked_fill_((slots < 0)[:, None], 0)


def _triton(keys, backend) -> bool:
    return backend == "triton" or (backend == "auto" and keys.is_cuda)


def new_score(old, desired, rule):
    if rule == SCORE_SET:
        return desired
    if rule == SCORE_ADD:
        return old + desired
    if rule == SCORE_EPOCH_ADD:
        return (desired & HIGH32) | ((old & LOW32) + (desired & LOW32)).clamp_max(int(LOW32))
    return old


def upsert_round_reference(b: Buckets, keys, bucket, digest, desired, rule, insert):
    """Torch twin of one round: ``keys`` lie in distinct buckets. Returns (slots, status, old_keys,
    old_scores): the slot each key ends in (-1: refused or missing) and what it evicted."""
    bs = b.keys.shape[1]
    rows_k, rows_s = b.keys[bucket], b.scores[bucket]
    hit = (b.digests[bucket] == digest[:, None]) & (rows_k == keys[:, None])
    found = hit.any(1)
    free = rows_k == b.empty
    has_free = free.any(1)
    low, low_at = unsigned_key(rows_s).min(1)  # the first position of the lowest score
    pos = torch.where(found, hit.to(torch.int8).argmax(1), torch.where(has_free, free.to(torch.int8).argmax(1), low_at))
    admit = has_free | (unsigned_key(desired) >= low)
    put = ~found & admit & insert
    if insert:
        status = torch.where(found, FOUND, torch.where(admit, torch.where(has_free, INSERTED, EVICTED), REFUSED))
    else:
        status = torch.where(found, FOUND, MISSING)
    old_keys, old_scores = rows_k.gather(1, pos[:, None])[:, 0], rows_s.gather(1, pos[:, None])[:, 0]
    score = torch.where(found, new_score(old_scores, desired, rule), desired)
    write = found | put
    bw, pw = bucket[write], pos[write]
    b.keys[bw, pw], b.digests[bw, pw], b.scores[bw, pw] = keys[write], digest[write], score[write]
    b.sizes.index_add_(0, bucket[put & has_free], torch.ones_like(bucket[put & has_free], dtype=torch.int32))
    slots = torch.where(write, bucket * bs + pos, -1)
    return slots, status, old_keys, old_scores


@dataclass
class Rounds:
    """The outcome of a batch, per distinct key (in the order of first occurrence)."""

    keys: torch.Tensor    # (u,) distinct keys
    first: torch.Tensor   # (u,) index of each one's first occurrence in the batch
    last: torch.Tensor    # (u,) index of its last occurrence
    desired: torch.Tensor  # (u,) combined score operand
    slots: torch.Tensor   # (u,) final slot, -1 when refused, missing, or evicted later in the batch
    status: torch.Tensor  # (u,) FOUND / INSERTED / EVICTED / REFUSED / MISSING
    rank: torch.Tensor    # (u,) the round of each key
    evicted_keys: torch.Tensor  # (e,) keys pushed out (those inserted earlier in the batch too)
    evicted_scores: torch.Tensor
    evicted_slots: torch.Tensor
    evicted_rounds: torch.Tensor

    def evicted_after_own_round(self):
        """(e,) whether an evicted key was written by this batch before it was pushed out (its
        value is the batch's), and (e,) its index in ``keys`` (-1: not in the batch)."""
        order = torch.argsort(self.keys)
        at = torch.searchsorted(self.keys[order], self.evicted_keys).clamp_max(max(len(order) - 1, 0))
        index = order[at] if len(order) else at
        inner = (self.keys[index] == self.evicted_keys) if len(order) else torch.zeros_like(at, dtype=torch.bool)
        index = torch.where(inner, index, -1)
        return inner & (self.evicted_rounds > self.rank[index.clamp_min(0)]), index


def _distinct(keys, desired, rule):
    uniq, inverse = torch.unique(keys, return_inverse=True)
    idx = torch.arange(len(keys), device=keys.device)
    first = torch.full_like(uniq, len(keys)).scatter_reduce_(0, inverse, idx, "amin")
    last = torch.full_like(uniq, -1).scatter_reduce_(0, inverse, idx, "amax")
    if rule == SCORE_ADD:
        combined = torch.zeros_like(uniq).index_add_(0, inverse, desired)
    elif rule == SCORE_EPOCH_ADD:
        low = torch.zeros_like(uniq).index_add_(0, inverse, desired & LOW32).clamp_max(int(LOW32))
        combined = (desired[last] & HIGH32) | low
    else:
        combined = desired[last]
    order = torch.argsort(first)
    return uniq[order], first[order], last[order], combined[order]


def upsert_rounds(b: Buckets, keys, desired, rule, *, insert, backend="auto") -> Rounds:
    """Apply a batch in rounds (module docstring): find or insert each distinct key, scores by ``rule``."""
    keys, first, last, desired = _distinct(keys, desired, rule)
    nb, bs = b.keys.shape
    bucket, digest = locate(keys, nb, bs)
    by_bucket = torch.argsort(bucket, stable=True)  # stable: first-occurrence order within a bucket
    counts = torch.bincount(bucket, minlength=nb)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(bucket)
    rank[by_bucket] = torch.arange(len(keys), device=keys.device) - starts[bucket[by_bucket]]
    if backend == "triton" or (backend == "auto" and keys.is_cuda):
        from .triton import upsert_buckets_triton

        slots, status, old_keys, old_scores = upsert_buckets_triton(b, keys, digest, desired, by_bucket, starts,
                                                                    counts, rule, insert)
        at = torch.nonzero(status == EVICTED)[:, 0]
        at = at[torch.argsort(rank[at] * len(keys) + at)]  # round by round, as the rounds list them
        evicted = (old_keys[at], old_scores[at], slots[at], rank[at])
    else:
        slots, status, evicted = _rounds_reference(b, keys, bucket, digest, desired, rank, rule, insert)
    out = Rounds(keys, first, last, desired, slots, status, rank, *evicted)
    if len(out.evicted_keys):  # a key written by this batch and pushed out in a later round holds no slot
        later, index = out.evicted_after_own_round()
        out.slots[index[later]] = -1
    return out


def _rounds_reference(b, keys, bucket, digest, desired, rank, rule, insert):
    """The rounds one after the other through ``upsert_round_reference``: (slots, status, evicted
    (keys, scores, slots, rounds))."""
    by_rank = torch.argsort(rank, stable=True)
    per_round = torch.bincount(rank, minlength=1).tolist() if len(keys) else []
    slots = torch.full_like(keys, -1)
    status = torch.full_like(keys, MISSING)
    ev_k, ev_s, ev_p, ev_r = [keys[:0]], [keys[:0]], [keys[:0]], [keys[:0]]
    start = 0
    for r, count in enumerate(per_round):
        i = by_rank[start:start + count]
        start += count
        s, st, ok, os = upsert_round_reference(b, keys[i], bucket[i], digest[i], desired[i], rule, insert)
        slots[i], status[i] = s, st
        e = st == EVICTED
        ev_k.append(ok[e]), ev_s.append(os[e]), ev_p.append(s[e]), ev_r.append(torch.full_like(s[e], r))
    return slots, status, tuple(torch.cat(parts) for parts in (ev_k, ev_s, ev_p, ev_r))
