"""The bucketed hash table's index structure: keys, digests and scores of every slot, and the
batched lookups and upserts over it (HierarchicalKV's layout; values live with the caller,
``kv/tiers.py``).

Two ways to run a batch, both meaning what the same calls one key at a time would:

- ``numba.py``: compiled CPU loops that take the keys one at a time, in order, and move the
  values too (``kv/`` calls them directly on the CPU).
- :func:`upsert` (this module): keys of different buckets never meet, so only the order within
  each bucket matters. The occurrences are sorted by bucket, in the batch's order within each; on
  CUDA Triton launches run numba's loop bucket by bucket (``triton.py``: a lane owns a bucket's
  run of occurrences; a run of keys all present, a lane each), with the values when they are in
  GPU memory. assign with its values in GPU memory skips the sort: the slots of found keys are
  claimed for their last occurrences (``Buckets.claims``). The torch twin runs rounds:
  round r applies every bucket's r-th occurrence at once (no two of them share a bucket).

Examples
--------
>>> import torch
>>> b = Buckets.allocate(n_buckets=2, bucket_size=4, empty=-1)
>>> u = upsert(b, torch.tensor([5, 9, 5]), torch.tensor([1, 2, 3]), SCORE_ADD, OP_INSERT_OR_ASSIGN,
...            backend="torch")
>>> u.status.tolist(), lookup(b, torch.tensor([9, 5, 7]), backend="torch")[1].tolist()
([1, 1, 0], [2, 4, 0])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..common import shift_right_logical
from .numba import (
    EMPTY_DIGEST,
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
    "EMPTY_DIGEST",
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
    "Upserted",
    "fmix64",
    "intents",
    "locate",
    "lookup",
    "lookup_reference",
    "lookup_slots",
    "lookup_values",
    "rounds",
    "unsigned_key",
    "upsert",
    "upsert_round_reference",
    "uses_triton",
]

SIGN = -(2**63)
M1 = 0xFF51AFD7ED558CCD - 2**64  # murmur3 fmix64 constants as int64 bits
M2 = 0xC4CEB9FE1A85EC53 - 2**64
# What happened to each distinct key of a round.
FOUND, INSERTED, EVICTED, REFUSED, MISSING = range(5)


@dataclass
class Buckets:
    """The slots of a table: keys, digests, scores (nb, bs) and occupied slots per bucket (nb,).

    ``reserved`` (mask, value): keys with ``key & mask == value`` are the table's reserved ones;
    the Triton kernels set ``flag`` (one int32 on the device) when they meet one, for the caller
    to read after the launch instead of checking the keys before it: lookups, and the upsert's
    bucket pass, after which the upsert changes nothing."""

    keys: torch.Tensor
    digests: torch.Tensor
    scores: torch.Tensor
    sizes: torch.Tensor
    empty: int  # the empty key's int64 bits
    reserved: tuple[int, int] = (0, 1)  # none
    flag: torch.Tensor | None = None
    _words: tuple | None = field(default=None, repr=False, compare=False)
    _claims: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.flag is None:
            self.flag = torch.zeros(1, dtype=torch.int32, device=self.keys.device)

    @classmethod
    def allocate(cls, n_buckets, bucket_size, empty, device="cpu", reserved=(0, 1)):
        """Every slot free: the empty key, digest ``EMPTY_DIGEST``, score 0."""
        if n_buckets & (n_buckets - 1) or bucket_size & (bucket_size - 1):
            raise ValueError(f"buckets ({n_buckets}) and bucket_size ({bucket_size}) must be powers of two")
        if n_buckets > 2**31:  # bucket ids are sorted as int32 (``upsert``)
            raise ValueError(f"at most 2**31 buckets, not {n_buckets}")
        shape = (n_buckets, bucket_size)
        return cls(torch.full(shape, empty, dtype=torch.int64, device=device),
                   torch.full(shape, EMPTY_DIGEST, dtype=torch.uint8, device=device),
                   torch.zeros(shape, dtype=torch.int64, device=device),
                   torch.zeros(n_buckets, dtype=torch.int32, device=device), empty, reserved)

    def take_flag(self) -> bool:
        """Whether a kernel since the last call met a reserved key (a wait for the device); cleared."""
        if not int(self.flag):
            return False
        self.flag.zero_()
        return True

    @property
    def digest_words(self) -> torch.Tensor:
        """The digests as int32 words, 4 a word (bucket_size >= 4): one view per digests tensor,
        not one per call (a call's host time counts)."""
        if self._words is None or self._words[0] is not self.digests:
            self._words = (self.digests, self.digests.view(torch.int32))
        return self._words[1]

    @property
    def claims(self) -> torch.Tensor:
        """(nb * bs,) int32 zeros, made at the first use, 4 bytes a slot: the Triton assign marks in
        a found key's slot the position of its last occurrence in the batch, and clears it again."""
        if self._claims is None:
            self._claims = torch.zeros(self.keys.numel(), dtype=torch.int32, device=self.keys.device)
        return self._claims

    @property
    def shift(self):
        return self.keys.shape[1].bit_length() - 1


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
    bits 32..39, 0 taken as 1 (``EMPTY_DIGEST`` marks free slots alone)."""
    h = fmix64(keys)
    shift = bucket_size.bit_length() - 1
    digest = (shift_right_logical(h, 32) & 0xFF).clamp_min_(1).to(torch.uint8)
    return shift_right_logical(h, shift) & (n_buckets - 1), digest


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


def lookup(b: Buckets, keys: torch.Tensor, backend: str = "auto", founds: torch.Tensor | None = None):
    """(slots, scores) of ``keys``: Triton on CUDA (or ``backend="triton"``), else the torch twin.
    ``founds`` (n,) bool: filled with whether each key was found (in the lookup's launch on CUDA)."""
    if uses_triton(keys, backend):
        from .triton import lookup_triton

        return lookup_triton(b, keys, founds=founds)
    return _found(lookup_reference(b, keys), founds)


def lookup_slots(b: Buckets, keys: torch.Tensor, backend: str = "auto", founds: torch.Tensor | None = None):
    """The slots of ``keys`` alone (-1 where missing): :func:`lookup` without reading the scores."""
    if uses_triton(keys, backend):
        from .triton import lookup_triton

        return lookup_triton(b, keys, scores=False, founds=founds)[0]
    return _found(lookup_reference(b, keys), founds)[0]


def lookup_values(b: Buckets, keys: torch.Tensor, values: torch.Tensor, backend: str = "auto",
                  founds: torch.Tensor | None = None):
    """(slots, scores, rows): :func:`lookup`, and the keys' rows of ``values`` (slots, dim) on the
    keys' device, zeros where a key is missing; in the lookup's launch on CUDA."""
    if uses_triton(keys, backend):
        from .triton import lookup_triton

        return lookup_triton(b, keys, values, founds=founds)
    slots, scores = _found(lookup_reference(b, keys), founds)
    return slots, scores, values[slots.clamp_min(0)].masked_fill_((slots < 0)[:, None], 0)


def _found(slots_and_scores, founds):
    """The twin's (slots, scores), ``founds`` filled from the slots where given."""
    if founds is not None:
        torch.ge(slots_and_scores[0], 0, out=founds)
    return slots_and_scores


def uses_triton(keys, backend) -> bool:
    """Whether ``backend`` runs the Triton kernels for ``keys``: "triton", or "auto" on CUDA."""
    return backend == "triton" or (backend == "auto" and keys.is_cuda)


def new_score(old, desired, rule):
    if rule == SCORE_SET:
        return desired
    if rule == SCORE_ADD:
        return old + desired
    if rule == SCORE_EPOCH_ADD:
        return (desired & HIGH32) | ((old & LOW32) + (desired & LOW32)).clamp_max(int(LOW32))
    return old


def upsert_round_reference(b: Buckets, keys, bucket, digest, desired, rule, update, may_insert):
    """Torch twin of one round: ``keys`` lie in distinct buckets; a found key's score follows
    ``rule`` where ``update``, a missing key is inserted where ``may_insert`` (a full bucket evicts
    its lowest score, or refuses a key scored below it). Returns (slots, status, old_keys,
    old_scores): the slot each key was found in or written to (-1: missing or refused), and the
    entry at that position before the round (the evicted one for EVICTED)."""
    bs = b.keys.shape[1]
    rows_k, rows_s = b.keys[bucket], b.scores[bucket]
    hit = (b.digests[bucket] == digest[:, None]) & (rows_k == keys[:, None])
    found = hit.any(1)
    free = rows_k == b.empty
    has_free = free.any(1)
    low, low_at = unsigned_key(rows_s).min(1)  # the first position of the lowest score
    pos = torch.where(found, hit.to(torch.int8).argmax(1), torch.where(has_free, free.to(torch.int8).argmax(1), low_at))
    inserting = ~found & may_insert
    put = inserting & (has_free | (unsigned_key(desired) >= low))
    status = torch.where(found, FOUND, torch.where(put, torch.where(has_free, INSERTED, EVICTED),
                                                   torch.where(inserting, REFUSED, MISSING)))
    old_keys, old_scores = rows_k.gather(1, pos[:, None])[:, 0], rows_s.gather(1, pos[:, None])[:, 0]
    score = torch.where(found, new_score(old_scores, desired, rule), desired)
    write = (found & update) | put
    bw, pw = bucket[write], pos[write]
    b.keys[bw, pw], b.digests[bw, pw], b.scores[bw, pw] = keys[write], digest[write], score[write]
    b.sizes.index_add_(0, bucket[put & has_free], torch.ones_like(bucket[put & has_free], dtype=torch.int32))
    return torch.where(found | put, bucket * bs + pos, -1), status, old_keys, old_scores


@dataclass
class Upserted:
    """What a batch did, per occurrence, in the batch's order."""

    slots: torch.Tensor      # (n,) the slot the key was found in or written to; -1: missing or refused
    status: torch.Tensor     # (n,) FOUND / INSERTED / EVICTED / REFUSED / MISSING
    ev_keys: torch.Tensor    # (n,) EVICTED: the entry pushed out; REFUSED: the key itself; else 0
    ev_scores: torch.Tensor  # (n,) their scores
    rank: torch.Tensor | None  # (n,) the occurrence's place among its bucket's (values not moved)
    ev_values: torch.Tensor | None = None  # values moved: insert_and_evict's rows of ev_keys (n, dim)
    out_values: torch.Tensor | None = None  # values moved: find_or_insert's results (n, dim)
    found_before: torch.Tensor | None = None  # (n,) bool on CUDA: whether each key was present before the batch


def intents(op: int, flags, n: int, device):
    """(update, may_insert) per occurrence: whether a found key takes ``op``'s score and value,
    and whether a missing one is inserted (numba's ``upsert``)."""
    yes = torch.ones(n, dtype=torch.bool, device=device)
    if op == OP_ACCUM:
        flags = flags.to(device=device, dtype=torch.bool)
        return flags, ~flags
    if op == OP_RESTORE:
        return ~yes, yes
    if op == OP_ASSIGN:
        return yes, ~yes
    return yes, yes


def upsert(b: Buckets, keys, desired, rule, op, flags=None, values=None, storage=None, backend="auto") -> Upserted:
    """Apply ``op`` (``OP_*``) to every occurrence of ``keys`` as numba's loop does (module
    docstring), scores by ``rule`` from ``desired``. ``storage``: the value rows by slot, on the
    keys' device; given on the Triton path, the values (``values`` (n, dim), or None) move in its
    launch, else the caller moves them (``Upserted.rank`` gives the rounds)."""
    n = len(keys)
    nb, bs = b.keys.shape
    triton_path = uses_triton(keys, backend) and bs >= 4  # the kernels read digests as 4-byte words
    if triton_path and op == OP_ASSIGN and storage is not None and rule != SCORE_EPOCH_ADD and n < 2**31:
        # no sort: the found keys' slots are claimed for their last occurrences (int32 positions);
        # EPOCH_ADD's saturating sums are the sort's (no atomic adds them)
        from .triton import assign_triton

        slots, status, found_before = assign_triton(b, keys, desired, rule, values, storage)
        none = torch.zeros_like(keys)
        return Upserted(slots, status, none, none, None, None, None, found_before)
    if triton_path:  # the keys looked up first, their sort keys beside: the kernels make the digests again
        from .triton import locate_triton, upsert_triton

        skeys, slots, status, found_before = locate_triton(b, keys, inserting=op != OP_ASSIGN)
        sorted_keys, order = torch.sort(skeys, stable=True)  # stable: the batch's order within a run
        flags = None if flags is None else flags.to(torch.int8)
        slots, status, ev_k, ev_s, ev_v, out_v = upsert_triton(b, keys, desired, rule, op, flags, order,
                                                               sorted_keys, slots, status, values, storage)
        rank = None if storage is not None else _ranks(sorted_keys // (2 * bs), order)
        return Upserted(slots, status, ev_k, ev_s, rank, ev_v, out_v, found_before)
    bucket, digest = locate(keys, nb, bs)
    # stable: the batch's order within a bucket; int32 bucket ids sort in half the radix passes
    sorted_buckets, order = torch.sort(bucket.to(torch.int32), stable=True)
    rank = _ranks(sorted_buckets, order)
    update, may_insert = intents(op, flags, n, keys.device)
    slots = torch.full_like(keys, -1)
    status = torch.full_like(keys, MISSING)
    ev_k, ev_s = torch.zeros_like(keys), torch.zeros_like(keys)
    for i in rounds(rank):
        s, st, ok, os = upsert_round_reference(b, keys[i], bucket[i], digest[i], desired[i], rule, update[i],
                                               may_insert[i])
        slots[i], status[i] = s, st
        ev_k[i] = torch.where(st == EVICTED, ok, torch.where(st == REFUSED, keys[i], 0))
        ev_s[i] = torch.where(st == EVICTED, os, torch.where(st == REFUSED, desired[i], 0))
    return Upserted(slots, status, ev_k, ev_s, rank)


def _ranks(sorted_buckets, order):
    """Each occurrence's place among its bucket's: its sorted position less its run's first."""
    at = torch.arange(len(order), device=order.device)
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = sorted_buckets[1:] != sorted_buckets[:-1]
    rank = torch.empty_like(order)
    rank[order] = at - torch.cummax(torch.where(first, at, 0), 0).values
    return rank


def rounds(rank: torch.Tensor):
    """The occurrences of each round, round after round: round r holds every bucket's r-th."""
    by_rank = torch.argsort(rank, stable=True)
    start = 0
    for count in torch.bincount(rank).tolist() if len(rank) else []:
        yield by_rank[start:start + count]
        start += count
