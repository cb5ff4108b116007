"""Triton kernels of the bucketed hash table (the layout of ``hash_table/numba.py``).

Kernel contract
  tkeys   : (nb, bs) int64  keys' bits; the empty key marks a free slot
  tdig    : (nb, bs) uint8  digests (bits 32..39 of fmix64(key))
  tscores : (nb, bs) int64  scores' bits, compared as uint64 through ``x ^ SIGN``
  sizes   : (nb,) int32     occupied slots per bucket
  keys    : (n,) int64      the batch (reserved keys were refused by the caller)
A lookup program takes BLOCK keys and loads, for each, its bucket's bs digest bytes as one row of
a (BLOCK, bs) tile: one 128-byte line per key at bs = 128, as the original reads. Keys are loaded
only where digests match. ``_upsert_in_order`` runs numba's in-order loop bucket by bucket in one
launch: a program owns whole buckets and applies each one's occurrences in the batch's order, so
no two programs touch a bucket and it needs no atomics; a batch means what it means on the CPU.
n, nb are runtime values; bs is a constexpr (a power of two); program ids are 64-bit.
Values in GPU memory move in the same launches (``vals`` / ``storage``, by slot); values in
pinned host memory are moved by the caller afterwards, by slot (``kv/paths.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import (
    EVICTED,
    FOUND,
    INSERTED,
    MISSING,
    OP_ACCUM,
    OP_ASSIGN,
    OP_FIND_OR_INSERT,
    OP_INSERT_AND_EVICT,
    OP_RESTORE,
    REFUSED,
    SCORE_ADD,
    SCORE_EPOCH_ADD,
    SCORE_KEEP,
    SCORE_SET,
    SIGN,
)

# Triton reads module globals inside kernels only as constexprs.
_FOUND, _INSERTED, _EVICTED = tl.constexpr(FOUND), tl.constexpr(INSERTED), tl.constexpr(EVICTED)
_REFUSED, _MISSING = tl.constexpr(REFUSED), tl.constexpr(MISSING)
_SET, _ADD, _EPOCH_ADD = tl.constexpr(SCORE_SET), tl.constexpr(SCORE_ADD), tl.constexpr(SCORE_EPOCH_ADD)
_KEEP = tl.constexpr(SCORE_KEEP)
_ACCUM, _ASSIGN, _RESTORE = tl.constexpr(OP_ACCUM), tl.constexpr(OP_ASSIGN), tl.constexpr(OP_RESTORE)
_FIND_OR_INSERT, _INSERT_AND_EVICT = tl.constexpr(OP_FIND_OR_INSERT), tl.constexpr(OP_INSERT_AND_EVICT)

M1 = 0xFF51AFD7ED558CCD  # passed as arguments: Triton types ints >= 2**63 as uint64
M2 = 0xC4CEB9FE1A85EC53
LOW32 = 0xFFFFFFFF
HIGH32 = -(2**32)
# The lookup's kernel ("bytes": ``_lookup``, "words": ``_lookup_words``), keys per program and
# warps per program: the fastest of find* on an H100 (2^20 keys of 2^27 at load factor 0.5, dim 8;
# ``params.tuning`` of benchmarks/results/hashtable_gpu.json, commit 0829ff8): 2.39 B-KV/s, the
# slowest configuration 1.65.
LOOKUP = "words"
BLOCK = 16
LOOKUP_WARPS = 4
# Buckets per program of the upsert: their keys and digests (and scores where read) are held in
# registers; a program loops as often as its busiest bucket has occurrences. The fastest of the
# same tuning (insert_or_assign 0.43 B-KV/s, the slowest 0.21), for the kernel of six reductions
# an occurrence that has one since.
BUCKETS = 4
UPSERT_WARPS = 2


@triton.jit
def _fmix64(k, m1, m2):
    """murmur3's 64-bit finalizer of int64 keys, as uint64 (``ops.hash_table.fmix64``)."""
    h = k.to(tl.uint64, bitcast=True)
    h = h ^ (h >> 33)
    h = h * m1
    h = h ^ (h >> 33)
    h = h * m2
    return h ^ (h >> 33)


@triton.jit
def _program_keys(keys, n, nb_mask, m1, m2, SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    """A program's BLOCK keys: (offsets, in range, keys, buckets, digests as int64)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    k = tl.load(keys + offs, mask=m, other=0)
    h = _fmix64(k, m1, m2)
    return offs, m, k, (h >> SHIFT).to(tl.int64) & nb_mask, ((h >> 32) & 0xFF).to(tl.int64)


@triton.jit
def _buckets(keys, out, n, nb_mask, m1, m2, SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    """int32 bucket of every key (``ops.hash_table.locate``'s first half)."""
    offs, m, _, bucket, _ = _program_keys(keys, n, nb_mask, m1, m2, SHIFT, BLOCK)
    tl.store(out + offs, bucket.to(tl.int32), mask=m)


@triton.jit
def _store_found(offs, m, slot, found, tscores, out_slots, out_scores, vals, out_vals, dim, DIM: tl.constexpr,
                 COPY: tl.constexpr, SCORES: tl.constexpr):
    """A lookup's outputs: slots (-1 where missing), with SCORES the scores and, with COPY, the
    found keys' value rows (dim of them a row), zeros for the missing."""
    found = found & m
    tl.store(out_slots + offs, tl.where(found, slot, -1), mask=m)
    if SCORES:  # a dependent read of a line per hit, for callers that want them only
        tl.store(out_scores + offs, tl.load(tscores + slot, mask=found, other=0), mask=m)
    if COPY:
        d = tl.arange(0, DIM)
        row_ok = (d < dim)[None, :]
        v = tl.load(vals + slot[:, None] * dim + d[None, :], mask=found[:, None] & row_ok, other=0)
        tl.store(out_vals + offs[:, None] * dim + d[None, :], v, mask=m[:, None] & row_ok)


@triton.jit
def _lookup(tkeys, tdig, tscores, keys, out_slots, out_scores, vals, out_vals, dim, n, nb_mask, m1, m2,
            SHIFT: tl.constexpr, BS: tl.constexpr, BLOCK: tl.constexpr, DIM: tl.constexpr, COPY: tl.constexpr,
            SCORES: tl.constexpr):
    offs, m, k, bucket, digest = _program_keys(keys, n, nb_mask, m1, m2, SHIFT, BLOCK)
    digest = digest.to(tl.uint8)
    cols = tl.arange(0, BS)
    base = bucket[:, None] * BS + cols[None, :]
    cand = (tl.load(tdig + base, mask=m[:, None], other=0) == digest[:, None]) & m[:, None]
    hit = cand & (tl.load(tkeys + base, mask=cand, other=0) == k[:, None])
    pos = tl.min(tl.where(hit, cols[None, :], BS), axis=1)
    _store_found(offs, m, bucket * BS + pos, pos < BS, tscores, out_slots, out_scores, vals, out_vals, dim, DIM, COPY,
                 SCORES)


@triton.jit
def _lookup_words(tkeys, twords, tscores, keys, out_slots, out_scores, vals, out_vals, dim, n, nb_mask, m1, m2,
                  SHIFT: tl.constexpr, BS: tl.constexpr, BLOCK: tl.constexpr, DIM: tl.constexpr,
                  COPY: tl.constexpr, SCORES: tl.constexpr):
    """``_lookup`` reading a bucket's digests as BS / 4 words of 4 bytes: the bytes equal to the
    key's digest marked in place (the exact zero-byte test, on the word XOR the digest repeated),
    then the keys read at the marked bytes, first to last, only until the key is found."""
    offs, m, k, bucket, digest = _program_keys(keys, n, nb_mask, m1, m2, SHIFT, BLOCK)
    W: tl.constexpr = BS // 4
    cols = tl.arange(0, W)
    # int32 words whose sums wrap: the test's bits are those of its usual uint32 form
    words = tl.load(twords + bucket[:, None] * W + cols[None, :], mask=m[:, None], other=0)
    x = words ^ (digest * 0x01010101).to(tl.int32)[:, None]
    marks = (((x & 0x7F7F7F7F) + 0x7F7F7F7F) | x | 0x7F7F7F7F) ^ -1  # bit 7 of every zero byte
    pos = tl.full((BLOCK,), BS, tl.int64)
    todo = m
    while tl.max(todo.to(tl.int32), axis=0) > 0:
        w = tl.min(tl.where(marks != 0, cols[None, :], W), axis=1)
        todo = todo & (w < W)
        word = tl.sum(tl.where(cols[None, :] == w[:, None], marks, 0), axis=1)
        low = word & (0 - word)  # the first marked byte's bit
        byte = tl.where(low == 0x80, 0, tl.where(low == 0x8000, 1, tl.where(low == 0x800000, 2, 3)))
        at = w.to(tl.int64) * 4 + byte
        hit = todo & (tl.load(tkeys + bucket * BS + at, mask=todo, other=0) == k)
        pos = tl.where(hit, at, pos)
        todo = todo & ~hit
        marks = tl.where(cols[None, :] == w[:, None], marks ^ low[:, None], marks)
    _store_found(offs, m, bucket * BS + pos, pos < BS, tscores, out_slots, out_scores, vals, out_vals, dim, DIM, COPY,
                 SCORES)


@triton.jit
def _entry_at(at, tk, ts, sign):
    """(key, score) of each bucket's entry at the positions ``at`` (one per row of the tile)."""
    return tl.sum(tl.where(at, tk, 0), axis=1), tl.sum(tl.where(at, ts, 0), axis=1) ^ sign


@triton.jit
def _upsert_in_order(tkeys, tdig, tscores, sizes, keys, desired, flags, order, starts, counts, values, storage,
                     out_slots, out_status, ev_keys, ev_scores, ev_values, out_values, nb, dim, empty, m1, m2,
                     sign, low32, high32, OP: tl.constexpr, RULE: tl.constexpr, SHIFT: tl.constexpr,
                     BS: tl.constexpr, BLOCK: tl.constexpr, DIM: tl.constexpr, HAS_VALUES: tl.constexpr,
                     MOVE_VALUES: tl.constexpr):
    """numba's ``upsert`` loop, bucket by bucket: a program owns BLOCK buckets and takes each one's
    occurrences in the batch's order (``order[starts[j]:starts[j] + counts[j]]`` are bucket j's),
    so no two programs touch a bucket and no atomics are needed. A bucket's keys and digests are
    loaded once and kept current in registers; its scores only where they are read (a bucket that
    may fill up in this batch, or a rule that adds to the old score). An occurrence takes one
    reduction over its bucket (its key's position, else the first free one); the lowest score and
    the entry replaced only where a bucket of the program is full (on an H100 at commit 0829ff8,
    six reductions every occurrence held insert_or_assign to 0.43 B-KV/s). With MOVE_VALUES the value
    rows (``storage``, by slot) move in the same launch, each bucket's by one lane of the tile in
    order: a later occurrence's write lands after an earlier one's."""
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    count = tl.load(counts + b, mask=b < nb, other=0)
    first = tl.load(starts + b, mask=count > 0, other=0)
    size = tl.load(sizes + b, mask=count > 0, other=0)
    cols = tl.arange(0, BS)
    base = b[:, None] * BS + cols[None, :]
    act = (count > 0)[:, None]
    tk = tl.load(tkeys + base, mask=act, other=0)
    td = tl.load(tdig + base, mask=act, other=0)
    if RULE == _ADD or RULE == _EPOCH_ADD:
        read_scores = count > 0
    else:
        read_scores = (count > 0) & (size + count > BS)
    ts = tl.load(tscores + base, mask=read_scores[:, None], other=0) ^ sign  # unsigned order
    d_cols = tl.arange(0, DIM)
    d_ok = (d_cols < dim)[None, :]
    grown = tl.zeros((BLOCK,), tl.int32)
    for r in range(tl.max(count, axis=0)):
        live = r < count
        i = tl.load(order + first + r, mask=live, other=0)
        k = tl.load(keys + i, mask=live, other=0)
        des = tl.load(desired + i, mask=live, other=0)
        h = _fmix64(k, m1, m2)
        d = ((h >> 32) & 0xFF).to(tl.uint8)
        # One reduction finds both: the key's position (below BS), else the first free one (BS + p)
        code = tl.min(tl.where((td == d[:, None]) & (tk == k[:, None]), cols[None, :],
                               tl.where(tk == empty, BS + cols[None, :], 2 * BS)), axis=1)
        found = (code < BS) & live
        if OP == _ACCUM:
            flag = tl.load(flags + i, mask=live, other=0) != 0
            update = found & flag
            may_insert = live & ~found & ~flag
        elif OP == _RESTORE:
            update = tl.zeros((BLOCK,), tl.int1)
            may_insert = live & ~found
        elif OP == _ASSIGN:
            update = found
            may_insert = tl.zeros((BLOCK,), tl.int1)
        else:
            update = found
            may_insert = live & ~found
        has_free = size + grown < BS
        # A full bucket's lowest score, and the entry at a position, only where a bucket of this
        # program is full for an insert or a hit's score depends on its old one: rare at the load
        # factors a table grows at, and each is a reduction over the bucket
        full = may_insert & ~has_free
        if tl.max(full.to(tl.int32), axis=0) > 0:
            low = tl.min(ts, axis=1)
            lpos = tl.min(tl.where(ts == low[:, None], cols[None, :], BS), axis=1)
        else:
            low = tl.zeros((BLOCK,), tl.int64)
            lpos = tl.zeros((BLOCK,), tl.int32)
        admit = has_free | ((des ^ sign) >= low)
        put = may_insert & admit
        evict = put & ~has_free
        refused = may_insert & ~admit
        pos = tl.where(found, code, tl.where(has_free, code - BS, lpos))
        at = cols[None, :] == pos[:, None]
        # (two branches: Triton takes no `or` of a constexpr and a tensor)
        if RULE == _ADD or RULE == _EPOCH_ADD:  # noqa: SIM114
            old_k, old_s = _entry_at(at, tk, ts, sign)
        elif tl.max(evict.to(tl.int32), axis=0) > 0:  # the evicted entries
            old_k, old_s = _entry_at(at, tk, ts, sign)
        else:
            old_k = tl.zeros((BLOCK,), tl.int64)
            old_s = tl.zeros((BLOCK,), tl.int64)
        if RULE == _SET:
            new = des
        elif RULE == _ADD:
            new = old_s + des
        elif RULE == _EPOCH_ADD:
            new = (des & high32) | tl.minimum((old_s & low32) + (des & low32), low32)
        else:
            new = old_s
        score = tl.where(found, new, des)
        write = update | put
        if RULE == _KEEP:  # a hit's score stays as it is (its old score was not read)
            rescore = put
        else:
            rescore = write
        at = at & write[:, None]
        tk = tl.where(at, k[:, None], tk)
        td = tl.where(at, d[:, None], td)
        ts = tl.where(at & rescore[:, None], (score ^ sign)[:, None], ts)
        slot = b * BS + pos
        tl.store(tkeys + slot, k, mask=put)
        tl.store(tdig + slot, d, mask=put)
        tl.store(tscores + slot, score, mask=rescore)
        grown += (put & has_free).to(tl.int32)
        status = tl.where(found, _FOUND, tl.where(put, tl.where(evict, _EVICTED, _INSERTED),
                                                  tl.where(refused, _REFUSED, _MISSING)))
        tl.store(out_slots + i, tl.where(found | put, slot, -1), mask=live)
        tl.store(out_status + i, status.to(tl.int64), mask=live)
        tl.store(ev_keys + i, tl.where(evict, old_k, k), mask=evict | refused)
        tl.store(ev_scores + i, tl.where(evict, old_s, des), mask=evict | refused)
        if MOVE_VALUES:
            row = storage + slot[:, None] * dim + d_cols[None, :]
            at_i = i[:, None] * dim + d_cols[None, :]
            old = tl.load(row, mask=(found | evict)[:, None] & d_ok, other=0)
            if HAS_VALUES:
                given = tl.load(values + at_i, mask=live[:, None] & d_ok, other=0)
            else:
                given = tl.zeros_like(old)
            if OP == _INSERT_AND_EVICT:
                tl.store(ev_values + at_i, tl.where(evict[:, None], old, given), mask=(evict | refused)[:, None] & d_ok)
            if OP == _FIND_OR_INSERT:  # a hit's row is read, not written
                new_row = tl.where(found[:, None], old, given)
                tl.store(out_values + at_i, new_row, mask=live[:, None] & d_ok)
                tl.store(row, new_row, mask=put[:, None] & d_ok)
            else:
                if OP == _ACCUM:
                    new_row = tl.where(update[:, None], old + given, given)
                else:
                    new_row = given
                tl.store(row, new_row, mask=(put | update)[:, None] & d_ok)
    tl.store(sizes + b, size + grown, mask=grown > 0)


def lookup_triton(b, keys: torch.Tensor, values: torch.Tensor | None = None, scores: bool = True):
    """(slots, scores) of ``keys``, -1 and 0 where missing (scores None unless asked for); see
    ``lookup_reference``. With ``values`` (slots, dim) on the keys' device, also the keys' rows of
    it (zeros where missing), read in the same launch: a gather after the lookup read the slots
    back and took twice the lookup's time (2^20 keys of dim 8, an H100)."""
    keys = keys.contiguous()
    n = len(keys)
    nb, bs = b.keys.shape
    slots = torch.empty(n, dtype=torch.int64, device=keys.device)
    out_scores = torch.empty(n, dtype=torch.int64, device=keys.device) if scores else None
    copy = values is not None
    dim = values.shape[1] if copy else 1
    found = torch.empty(n if copy else 0, dim, dtype=values.dtype if copy else torch.float32, device=keys.device)
    if n:
        words = LOOKUP == "words" and bs >= 4  # whole 4-byte words of digests
        kernel, digests = (_lookup_words, b.digests.view(torch.int32)) if words else (_lookup, b.digests)
        kernel[(triton.cdiv(n, BLOCK),)](b.keys, digests, b.scores, keys, slots, out_scores if scores else slots,
                                         values.contiguous() if copy else slots, found if copy else slots, dim, n,
                                         nb - 1, M1, M2, SHIFT=b.shift, BS=bs, BLOCK=BLOCK,
                                         DIM=triton.next_power_of_2(dim), COPY=copy, SCORES=scores,
                                         num_warps=LOOKUP_WARPS)
    return (slots, out_scores, found) if copy else (slots, out_scores)


def buckets_triton(keys: torch.Tensor, n_buckets: int, shift: int) -> torch.Tensor:
    """The keys' buckets as int32, in one launch where torch's elementwise hash took 15."""
    out = torch.empty(len(keys), dtype=torch.int32, device=keys.device)
    if len(keys):
        _buckets[(triton.cdiv(len(keys), 1024),)](keys.contiguous(), out, len(keys), n_buckets - 1, M1, M2,
                                                  SHIFT=shift, BLOCK=1024)
    return out


def upsert_triton(b, keys, desired, rule, op, flags, order, starts, counts, values=None, storage=None):
    """numba's ``upsert`` loop on the GPU, bucket by bucket (``_upsert_in_order``): ``order``,
    ``starts``, ``counts`` group the occurrences by bucket in the batch's order. Returns per
    occurrence (slots, status, ev_keys, ev_scores) and, when ``storage`` (slots, dim) on the keys'
    device is given (values then move in the launch), (ev_values, out_values): insert_and_evict's
    evicted rows and find_or_insert's results, empty for other ops."""
    n, (nb, bs) = len(keys), b.keys.shape
    dev = keys.device
    out = [torch.empty(n, dtype=torch.int64, device=dev) for _ in range(2)]
    ev = [torch.zeros(n, dtype=torch.int64, device=dev) for _ in range(2)]
    move = storage is not None
    dim = storage.shape[1] if move else 1
    dtype = storage.dtype if move else torch.float32
    ev_values = torch.zeros(n if move and op == OP_INSERT_AND_EVICT else 0, dim, dtype=dtype, device=dev)
    out_values = torch.zeros(n if move and op == OP_FIND_OR_INSERT else 0, dim, dtype=dtype, device=dev)
    if n:
        _upsert_in_order[(triton.cdiv(nb, BUCKETS),)](
            b.keys, b.digests, b.scores, b.sizes, keys, desired, keys if flags is None else flags, order, starts,
            counts, keys if values is None else values, storage if move else keys, *out, *ev,
            ev_values if len(ev_values) else keys, out_values if len(out_values) else keys, nb, dim, b.empty, M1,
            M2, SIGN, LOW32, HIGH32, OP=op, RULE=rule, SHIFT=b.shift, BS=bs, BLOCK=BUCKETS,
            DIM=triton.next_power_of_2(dim), HAS_VALUES=values is not None, MOVE_VALUES=move, num_warps=UPSERT_WARPS)
    return (*out, *ev, ev_values, out_values)


__all__ = ["lookup_triton", "upsert_triton"]
