"""Triton kernels of the bucketed hash table (the layout of ``hash_table/numba.py``).

Kernel contract
  tkeys   : (nb, bs) int64  keys' bits; the empty key marks a free slot
  tdig    : (nb, bs) uint8  digests (bits 32..39 of fmix64(key), 0 taken as 1); 0 marks a free slot
  tscores : (nb, bs) int64  scores' bits, compared as uint64 through ``x ^ SIGN``
  sizes   : (nb,) int32     occupied slots per bucket
  keys    : (n,) int64      the batch; a reserved key sets ``flag`` (lookups, the upsert's first),
                            and an upsert whose batch set it changes nothing
A lookup program takes BLOCK keys and loads, for each, its bucket's bs digest bytes as one row of
a (BLOCK, bs) tile (as bs / 4 words in ``_lookup_words``): one 128-byte line per key at bs = 128,
as the original reads. Keys are loaded only where digests match; a free slot's digest
(``EMPTY_DIGEST``) matches no key's. An upsert first looks every key up as the batch finds the
table (``locate_triton``), which gives each occurrence a sort key: its bucket, then its slot's
position there, or, in a bucket where a key is missing, a position past the bucket's, the same for
all its occurrences. Sorted stably by that key, the occurrences of a bucket where every key is
present stand by slot, a key's together in the batch's order, and ``_apply_found`` takes a lane
per occurrence: no slot moves there, so the sort key gives the slot, and a key's last occurrence
writes for all of them. ``_upsert_runs`` takes the other buckets' runs, in the batch's order:
numba's in-order loop bucket by bucket in one launch, a lane owning a bucket's run and applying it
occurrence by occurrence, so no two lanes touch a bucket and it needs no atomics; a batch means
what it means on the CPU. assign, which inserts nothing, sorts nothing where its values are in GPU
memory: its lookup claims each found key's slot for the key's last occurrence in the batch
(``_claim_slots``, an atomic max in ``claims``), and a lane per occurrence lets the claimant write
and clear the claim (``_assign_claimed``).
n, nb are runtime values; bs is a constexpr (a power of two); program ids are 64-bit.
Values in GPU memory move in the same launches (``vals`` / ``storage``, by slot); values in
pinned host memory are moved by the caller afterwards, by slot (``kv/paths.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import next_pow2
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
# warps per program (also ``_apply_found``'s), and the upsert loop's sorted occurrences per program
# and warps: the fastest of find* and insert_or_assign on an H100 (2^20 keys of 2^27 at load
# factor 0.5, dim 8; ``params.tuning`` of benchmarks/results/hashtable_gpu.json, commit c8e0763):
# find* 5.0 B-KV/s (the slowest configuration 3.0). The runners-up of the lookups were within
# 10%, and took first place in other runs.
LOOKUP = "words"
BLOCK = 64
LOOKUP_WARPS = 2
UPSERT_BLOCK = 32
UPSERT_WARPS = 1
# Programs of the upsert loop's launch at most, each walking the list of pending runs: about two
# waves of an H100's SMs at the loop's registers (255 a thread: 8 one-warp programs an SM).
UPSERT_PROGRAMS = 2048
MARK_BLOCK = 1024  # keys per program of ``_mark_loop_runs``
INT32_SORT_KEYS = 2**31  # sort keys are int32 below this (nb * 2bs), int64 from it


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
    return offs, m, k, (h >> SHIFT).to(tl.int64) & nb_mask, tl.maximum((h >> 32) & 0xFF, 1).to(tl.int64)


@triton.jit
def _flag_reserved(k, m, rmask, rvalue, flag):
    """Set ``*flag`` where a key of the program is reserved (``k & rmask == rvalue``)."""
    tl.atomic_max(flag + tl.zeros_like(k).to(tl.int32), 1, mask=m & ((k & rmask) == rvalue))


@triton.jit
def _store_located(out_keys, out_status, missing_in, offs, m, bucket, pos, found, BS: tl.constexpr,
                   LOCATE: tl.constexpr, MARK: tl.constexpr):
    """With LOCATE (an upsert's first launch), each key's sort key, ``bucket * 2BS + pos`` (its
    slot's position in the bucket, BS where missing), and its status as the batch finds the table
    (FOUND or MISSING: the outcome of a present key that ``_apply_found`` takes; the loop's kernel
    writes the others'). With MARK, a missing key marks its bucket in ``missing_in`` (the byte set
    to 1): the loop's kernel will take that bucket's run (``_mark_loop_runs``)."""
    if LOCATE:
        tl.store(out_keys + offs, bucket * (2 * BS) + tl.where(found, pos, BS), mask=m)
        tl.store(out_status + offs, tl.where(found, _FOUND, _MISSING).to(tl.int64), mask=m)
        if MARK:
            tl.store(missing_in + bucket, tl.full(bucket.shape, 1, tl.int8), mask=m & ~found)


@triton.jit
def _claim_slots(claims, offs, m, slot, found, CLAIM: tl.constexpr):
    """With CLAIM (assign's lookup), each found key's slot keeps the highest 1-based position among
    its key's occurrences in the batch: the last one, which alone writes (``_assign_claimed``)."""
    if CLAIM:
        tl.atomic_max(claims + slot, (offs + 1).to(tl.int32), mask=m & found)


@triton.jit
def _store_found(offs, m, slot, found, tscores, out_slots, out_scores, vals, out_vals, out_founds, dim,
                 DIM: tl.constexpr, COPY: tl.constexpr, SCORES: tl.constexpr, FOUNDS: tl.constexpr):
    """A lookup's outputs: slots (-1 where missing), with SCORES the scores, with COPY the found
    keys' value rows (dim of them a row), zeros for the missing, and with FOUNDS whether each was
    found (bools: no comparison of the slots after the launch)."""
    found = found & m
    tl.store(out_slots + offs, tl.where(found, slot, -1), mask=m)
    if FOUNDS:
        tl.store(out_founds + offs, found, mask=m)
    if SCORES:  # a dependent read of a line per hit, for callers that want them only
        tl.store(out_scores + offs, tl.load(tscores + slot, mask=found, other=0), mask=m)
    if COPY:
        d = tl.arange(0, DIM)
        row_ok = (d < dim)[None, :]
        v = tl.load(vals + slot[:, None] * dim + d[None, :], mask=found[:, None] & row_ok, other=0)
        tl.store(out_vals + offs[:, None] * dim + d[None, :], v, mask=m[:, None] & row_ok)


@triton.jit
def _lookup(tkeys, tdig, tscores, keys, out_slots, out_scores, vals, out_vals, out_founds, out_keys, out_status,
            missing_in, claims, dim, n, nb_mask, m1, m2, rmask, rvalue, flag, SHIFT: tl.constexpr, BS: tl.constexpr,
            BLOCK: tl.constexpr, DIM: tl.constexpr, COPY: tl.constexpr, SCORES: tl.constexpr, FOUNDS: tl.constexpr,
            LOCATE: tl.constexpr, MARK: tl.constexpr, CLAIM: tl.constexpr):
    offs, m, k, bucket, digest = _program_keys(keys, n, nb_mask, m1, m2, SHIFT, BLOCK)
    _flag_reserved(k, m, rmask, rvalue, flag)
    digest = digest.to(tl.uint8)
    cols = tl.arange(0, BS)
    base = bucket[:, None] * BS + cols[None, :]
    cand = (tl.load(tdig + base, mask=m[:, None], other=0) == digest[:, None]) & m[:, None]
    hit = cand & (tl.load(tkeys + base, mask=cand, other=0) == k[:, None])
    pos = tl.min(tl.where(hit, cols[None, :], BS), axis=1)
    _store_found(offs, m, bucket * BS + pos, pos < BS, tscores, out_slots, out_scores, vals, out_vals, out_founds, dim,
                 DIM, COPY, SCORES, FOUNDS)
    _store_located(out_keys, out_status, missing_in, offs, m, bucket, pos, pos < BS, BS, LOCATE, MARK)
    _claim_slots(claims, offs, m, bucket * BS + pos, pos < BS, CLAIM)


@triton.jit
def _zero_bytes(x):
    """Bit 7 of every zero byte of the int32 words ``x`` (the exact test; sums wrap as uint32's)."""
    return (((x & 0x7F7F7F7F) + 0x7F7F7F7F) | x | 0x7F7F7F7F) ^ -1


@triton.jit
def _first_mark(marks, cols, W: tl.constexpr):
    """Per row of ``marks`` (BLOCK, W): (its first marked word, or W; that mark's bit; the byte's
    position in the bucket)."""
    w = tl.min(tl.where(marks != 0, cols[None, :], W), axis=1)
    word = tl.sum(tl.where(cols[None, :] == w[:, None], marks, 0), axis=1)
    low = word & (0 - word)
    byte = tl.where(low == 0x80, 0, tl.where(low == 0x8000, 1, tl.where(low == 0x800000, 2, 3)))
    return w, low, w.to(tl.int64) * 4 + byte


@triton.jit
def _find_in_words(tkeys, bucket, k, words, digest, todo, cols, BS: tl.constexpr, W: tl.constexpr):
    """The key's position in its bucket (BS where absent): the bytes of ``words`` equal to its
    digest marked in place, then the keys read at the marked bytes, first to last, one a lane
    and round, only until the key is found."""
    marks = _zero_bytes(words ^ (digest * 0x01010101).to(tl.int32)[:, None])
    pos = tl.full(k.shape, BS, tl.int64)
    while tl.max(todo.to(tl.int32), axis=0) > 0:
        w, low, at = _first_mark(marks, cols, W)
        todo = todo & (w < W)
        hit = todo & (tl.load(tkeys + bucket * BS + at, mask=todo, other=0) == k)
        pos = tl.where(hit, at, pos)
        todo = todo & ~hit
        marks = tl.where(cols[None, :] == w[:, None], marks ^ low[:, None], marks)
    return pos


@triton.jit
def _lookup_words(tkeys, twords, tscores, keys, out_slots, out_scores, vals, out_vals, out_founds, out_keys,
                  out_status, missing_in, claims, dim, n, nb_mask, m1, m2, rmask, rvalue, flag, SHIFT: tl.constexpr,
                  BS: tl.constexpr, BLOCK: tl.constexpr, DIM: tl.constexpr, COPY: tl.constexpr, SCORES: tl.constexpr,
                  FOUNDS: tl.constexpr, LOCATE: tl.constexpr, MARK: tl.constexpr, CLAIM: tl.constexpr):
    """``_lookup`` reading a bucket's digests as BS / 4 words of 4 bytes (``_find_in_words``)."""
    offs, m, k, bucket, digest = _program_keys(keys, n, nb_mask, m1, m2, SHIFT, BLOCK)
    _flag_reserved(k, m, rmask, rvalue, flag)
    W: tl.constexpr = BS // 4
    cols = tl.arange(0, W)
    words = tl.load(twords + bucket[:, None] * W + cols[None, :], mask=m[:, None], other=0)
    pos = _find_in_words(tkeys, bucket, k, words, digest, m, cols, BS, W)
    _store_found(offs, m, bucket * BS + pos, pos < BS, tscores, out_slots, out_scores, vals, out_vals, out_founds, dim,
                 DIM, COPY, SCORES, FOUNDS)
    _store_located(out_keys, out_status, missing_in, offs, m, bucket, pos, pos < BS, BS, LOCATE, MARK)
    _claim_slots(claims, offs, m, bucket * BS + pos, pos < BS, CLAIM)


@triton.jit
def _lowest_score(tscores, bucket, full, BS: tl.constexpr, CHUNK: tl.constexpr):
    """(lowest score as uint64's order in int64, its first position) of each full lane's bucket,
    CHUNK slots at a time (a whole bucket's scores would not fit in registers)."""
    low = tl.full(bucket.shape, 2**63 - 1, tl.int64)
    lpos = tl.zeros(bucket.shape, tl.int64)
    for c in tl.static_range(0, BS, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        ts = tl.load(tscores + bucket[:, None] * BS + cols[None, :], mask=full[:, None], other=0) ^ -(2**63)
        m = tl.min(ts, axis=1)
        at = tl.min(tl.where(ts == m[:, None], cols[None, :], BS), axis=1).to(tl.int64)
        lpos = tl.where(m < low, at, lpos)
        low = tl.minimum(m, low)
    return low, lpos


@triton.jit
def _add_to_scores(tscores, slot, des, acc, mask, low32, high32, RULE: tl.constexpr):
    """Where ``mask``, a present key's score after occurrences whose operands add to ``acc`` (ADD:
    their sum, wrapping; EPOCH_ADD: their low halves' sum, saturating, which in any order is what
    one after the other gives), the last of them ``des``."""
    old = tl.load(tscores + slot, mask=mask, other=0)
    if RULE == _ADD:
        new = old + acc
    else:
        new = (des & high32) | tl.minimum((old & low32) + acc, low32)
    tl.store(tscores + slot, new, mask=mask)


@triton.jit
def _mark_loop_runs(skeys, missing_in, n, BS: tl.constexpr, BLOCK: tl.constexpr):
    """Every sort key of a bucket that a missing key marked becomes ``bucket * 2BS + BS``: the
    bucket's occurrences then sort together in the batch's order, a run for the loop's kernel."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    key = tl.load(skeys + offs, mask=m, other=0)
    bucket = key // (2 * BS)
    loop = tl.load(missing_in + bucket, mask=m, other=0) != 0
    tl.store(skeys + offs, bucket * (2 * BS) + BS, mask=m & loop)


@triton.jit
def _apply_found(tscores, desired, flags, order, skeys, values, storage, reserved_seen, out_values, pending_heads,
                 pending_count, n, dim, low32, high32, OP: tl.constexpr, RULE: tl.constexpr, BS: tl.constexpr,
                 BLOCK: tl.constexpr, DIM: tl.constexpr, HAS_VALUES: tl.constexpr, MOVE_VALUES: tl.constexpr):
    """A lane per sorted occurrence. The occurrences of a bucket where no key is missing (every
    bucket for assign, which inserts nothing) are sorted by their slot, a key's in the batch's
    order: nothing is inserted there, so no slot moves, and the sort key gives each occurrence's
    slot. The last occurrence of a key (a group of equal sort keys) writes for the group, which it
    walks from its first: the value (ACCUM: the old row plus every flagged row, in order) and the
    score by the rule from the occurrences that update it (SET: the last's; ADD: their wrapping
    sum; EPOCH_ADD: their low halves' sum, saturating, which in any order is what one after the
    other gives; KEEP: none). The first lookup wrote these occurrences' slots and statuses. The
    first occurrences of the other runs (sort key ``bucket * 2BS + BS``) are listed in
    ``pending_heads`` (``*pending_count`` of them, in no fixed order: runs touch disjoint buckets)
    for ``_upsert_runs``."""
    q = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = (q < n) & (tl.load(reserved_seen) == 0)
    key = tl.load(skeys + q, mask=live, other=-1).to(tl.int64)
    pos = key % (2 * BS)
    found = live & (pos < BS)
    prev = tl.load(skeys + q - 1, mask=live & (q > 0), other=-1).to(tl.int64)
    pending = live & (pos == BS) & (prev != key)
    if OP != _ASSIGN:  # assign's missing keys go nowhere
        at = tl.atomic_add(pending_count + tl.zeros_like(q), 1, mask=pending)
        tl.store(pending_heads + at, q.to(tl.int32), mask=pending)
    slot = (key // (2 * BS)) * BS + pos
    nxt = tl.load(skeys + q + 1, mask=found & (q + 1 < n), other=-1).to(tl.int64)
    writer = found & (nxt != key)  # the last occurrence of its key
    start = q  # the group's first occurrence
    back = writer & (prev == key)
    while tl.max(back.to(tl.int32), axis=0) > 0:
        start = tl.where(back, start - 1, start)
        back = back & (start > 0)
        back = back & (tl.load(skeys + start - 1, mask=back, other=-1).to(tl.int64) == key)
    d_cols = tl.arange(0, DIM)
    d_ok = (d_cols < dim)[None, :]
    row = storage + slot[:, None] * dim + d_cols[None, :]
    if OP == _ACCUM and MOVE_VALUES:
        acc_row = tl.load(row, mask=writer[:, None] & d_ok, other=0)
    acc = tl.zeros((BLOCK,), tl.int64)
    des = tl.zeros((BLOCK,), tl.int64)  # the last updating occurrence's
    last_i = tl.zeros((BLOCK,), tl.int64)
    updated = tl.zeros((BLOCK,), tl.int1)
    r = start
    walk = writer
    while tl.max(walk.to(tl.int32), axis=0) > 0:  # the group in the batch's order
        ir = tl.load(order + r, mask=walk, other=0)
        if OP == _ACCUM:
            mine = walk & (tl.load(flags + ir, mask=walk, other=0) != 0)
        elif OP == _RESTORE:
            mine = tl.zeros((BLOCK,), tl.int1)
        else:
            mine = walk
        d = tl.load(desired + ir, mask=mine, other=0)
        des = tl.where(mine, d, des)
        last_i = tl.where(mine, ir, last_i)
        updated = updated | mine
        if RULE == _ADD:
            acc += d
        elif RULE == _EPOCH_ADD:
            acc += d & low32
        if OP == _ACCUM and MOVE_VALUES and HAS_VALUES:  # the given rows in the batch's order
            acc_row += tl.load(values + ir[:, None] * dim + d_cols[None, :], mask=mine[:, None] & d_ok, other=0)
        walk = walk & (r < q)
        r += 1
    if RULE == _SET:
        tl.store(tscores + slot, des, mask=updated)
    elif RULE == _ADD or RULE == _EPOCH_ADD:
        _add_to_scores(tscores, slot, des, acc, updated, low32, high32, RULE)
    if MOVE_VALUES:
        if OP == _FIND_OR_INSERT:  # every occurrence reads its key's row, none writes it
            i = tl.load(order + q, mask=found, other=0)
            tl.store(out_values + i[:, None] * dim + d_cols[None, :],
                     tl.load(row, mask=found[:, None] & d_ok, other=0), mask=found[:, None] & d_ok)
        elif OP == _ACCUM:
            tl.store(row, acc_row, mask=updated[:, None] & d_ok)
        elif OP != _RESTORE:
            if HAS_VALUES:
                given = tl.load(values + last_i[:, None] * dim + d_cols[None, :], mask=updated[:, None] & d_ok,
                                other=0)
            else:
                given = tl.zeros((BLOCK, DIM), storage.dtype.element_ty)
            tl.store(row, given, mask=updated[:, None] & d_ok)


@triton.jit
def _upsert_runs(tkeys, tdig, twords, tscores, sizes, keys, desired, flags, order, skeys, values, storage,
                 reserved_seen, pending_heads, pending_count, out_slots, out_status, ev_keys, ev_scores, ev_values,
                 out_values, n, dim, m1, m2, sign, low32, high32, OP: tl.constexpr, RULE: tl.constexpr,
                 BS: tl.constexpr, BLOCK: tl.constexpr, DIM: tl.constexpr, CHUNK: tl.constexpr,
                 HAS_VALUES: tl.constexpr, MOVE_VALUES: tl.constexpr):
    """numba's ``upsert`` loop, bucket by bucket, over the occurrences sorted by bucket in the
    batch's order (``order``; ``skeys``, a run's sort key ``bucket * 2BS + BS``): a lane takes the
    run of its bucket's occurrences from its first (a position listed in ``pending_heads``), one
    after the other, so no two lanes touch a bucket and no atomics are needed. The programs walk
    the list BLOCK heads at a time, as many programs as the launch has, whatever the list's
    length: a batch that ``_apply_found`` took whole costs a load a program. A bucket's digests
    are held in registers as BS / 4 words (``twords``, the bytes of ``tdig``) and kept current;
    keys are read only where a digest matches (``_find_in_words``; a free slot's digest, 0, matches
    no key), scores only where a bucket is full (CHUNK slots at a time) or a rule adds to a hit's
    score. Every occurrence ends in a barrier: the next one's reads of keys, scores and value rows
    see this one's writes. With MOVE_VALUES the value rows (``storage``, by slot) move in the same
    launch. A batch with a reserved key (``*reserved_seen`` set by the lookup before) changes
    nothing."""
    count = tl.load(pending_count).to(tl.int32)
    for h0 in range(tl.program_id(0) * BLOCK, count, tl.num_programs(0) * BLOCK):
        h = h0 + tl.arange(0, BLOCK)
        head = (h < count) & (tl.load(reserved_seen) == 0)
        j = tl.load(pending_heads + h, mask=head, other=0).to(tl.int64)
        run = tl.load(skeys + j, mask=head, other=-1).to(tl.int64)
        _upsert_run(tkeys, tdig, twords, tscores, sizes, keys, desired, flags, order, skeys, values,
                    storage, out_slots, out_status, ev_keys, ev_scores, ev_values, out_values, j, run, head, n, dim,
                    m1, m2, sign, low32, high32, OP, RULE, BS, BLOCK, DIM, CHUNK, HAS_VALUES, MOVE_VALUES)


@triton.jit
def _upsert_run(tkeys, tdig, twords, tscores, sizes, keys, desired, flags, order, skeys, values, storage,
                out_slots, out_status, ev_keys, ev_scores, ev_values, out_values, j, run, head, n, dim, m1, m2, sign,
                low32, high32, OP: tl.constexpr, RULE: tl.constexpr, BS: tl.constexpr, BLOCK: tl.constexpr,
                DIM: tl.constexpr, CHUNK: tl.constexpr, HAS_VALUES: tl.constexpr, MOVE_VALUES: tl.constexpr):
    """The runs that start at the sorted positions ``j`` (sort key ``run``) where ``head``, one
    occurrence after the other (``_upsert_runs``)."""
    b = run // (2 * BS)
    W: tl.constexpr = BS // 4
    cols = tl.arange(0, W)
    d_cols = tl.arange(0, DIM)
    d_ok = (d_cols < dim)[None, :]
    words = tl.load(twords + b[:, None] * W + cols[None, :], mask=head[:, None], other=0)
    size = tl.load(sizes + b, mask=head, other=0)
    grown = tl.zeros((BLOCK,), tl.int32)
    q = j
    live = head
    while tl.max(live.to(tl.int32), axis=0) > 0:
        i = tl.load(order + q, mask=live, other=0)
        k = tl.load(keys + i, mask=live, other=0)
        des = tl.load(desired + i, mask=live, other=0)
        d = tl.maximum((_fmix64(k, m1, m2) >> 32) & 0xFF, 1).to(tl.int64)
        key_pos = _find_in_words(tkeys, b, k, words, d, live, cols, BS, W)
        found = (key_pos < BS) & live
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
        # the first free slot (a free slot's digest is 0), only where a lane of the program inserts
        if tl.max(may_insert.to(tl.int32), axis=0) > 0:
            free_w, _, free_pos = _first_mark(_zero_bytes(words), cols, W)
        else:
            free_w = tl.zeros((BLOCK,), tl.int32)
            free_pos = tl.zeros((BLOCK,), tl.int64)
        has_free = free_w < W
        # A full bucket's lowest score, only where a bucket of this program is full for an insert:
        # rare at the load factors a table grows at
        full = may_insert & ~has_free
        if tl.max(full.to(tl.int32), axis=0) > 0:
            low, lpos = _lowest_score(tscores, b, full, BS, CHUNK)
        else:
            low = tl.zeros((BLOCK,), tl.int64)
            lpos = tl.zeros((BLOCK,), tl.int64)
        admit = has_free | ((des ^ sign) >= low)
        put = may_insert & admit
        evict = put & ~has_free
        refused = may_insert & ~admit
        pos = tl.where(found, key_pos, tl.where(has_free, free_pos, lpos))
        slot = b * BS + pos
        # the entry there before: a hit's score where the rule adds to it, an evicted entry
        old_k = tl.load(tkeys + slot, mask=evict, other=0)
        if RULE == _ADD or RULE == _EPOCH_ADD:
            old_s = tl.load(tscores + slot, mask=found | evict, other=0)
        else:
            old_s = tl.load(tscores + slot, mask=evict, other=0)
        if RULE == _SET:
            new = des
        elif RULE == _ADD:
            new = old_s + des
        elif RULE == _EPOCH_ADD:
            new = (des & high32) | tl.minimum((old_s & low32) + (des & low32), low32)
        else:
            new = old_s
        score = tl.where(found, new, des)
        if RULE == _KEEP:  # a hit's score stays as it is
            rescore = put
        else:
            rescore = update | put
        # the new digest into its byte of the registers' words
        shift = ((pos % 4) * 8).to(tl.int32)[:, None]
        byte = tl.where((cols[None, :] == (pos // 4)[:, None]) & put[:, None], 0xFF << shift, 0)
        words = (words & ~byte) | ((d.to(tl.int32)[:, None] << shift) & byte)
        tl.store(tkeys + slot, k, mask=put)
        tl.store(tdig + slot, d.to(tl.uint8), mask=put)
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
        tl.debug_barrier()
        q += 1
        live = live & (q < n) & (tl.load(skeys + q, mask=live & (q < n), other=-1).to(tl.int64) == run)
    tl.store(sizes + b, size + grown, mask=head & (grown > 0))


def lookup_triton(b, keys: torch.Tensor, values: torch.Tensor | None = None, scores: bool = True,
                  founds: torch.Tensor | None = None, located: tuple | None = None, missing_in=None,
                  claims=None):
    """(slots, scores) of ``keys``, -1 and 0 where missing (scores None unless asked for); see
    ``lookup_reference``. With ``values`` (slots, dim) on the keys' device, also the keys' rows of
    it (zeros where missing), read in the same launch: a gather after the lookup read the slots
    back and took twice the lookup's time (2^20 keys of dim 8, an H100). ``founds`` (n,) bool:
    whether each key was found, and ``located`` ((n,) int32 or int64, (n,) int64): each key's sort
    key and status (``_store_located``), written in the launch too, a missing key marking its bucket
    in ``missing_in`` ((nb,) int8) where given; with ``claims`` ((nb * bs,) int32), a found key's
    slot there keeps its last occurrence's position (``_claim_slots``). A reserved key
    (``b.reserved``) sets ``b.flag``."""
    keys = keys.contiguous()
    n = len(keys)
    nb, bs = b.keys.shape
    slots = torch.empty(n, dtype=torch.int64, device=keys.device)
    out_scores = torch.empty(n, dtype=torch.int64, device=keys.device) if scores else None
    copy = values is not None
    dim = values.shape[1] if copy else 1
    found = torch.empty(n, dim, dtype=values.dtype, device=keys.device) if copy else None
    if n:
        words = LOOKUP == "words" and bs >= 4  # whole 4-byte words of digests
        kernel, digests = (_lookup_words, b.digest_words) if words else (_lookup, b.digests)
        kernel[(-(-n // BLOCK),)](
            b.keys, digests, b.scores, keys, slots, out_scores if scores else slots,
            values.contiguous() if copy else slots, found if copy else slots, slots if founds is None else founds,
            *((slots, slots) if located is None else located), slots if missing_in is None else missing_in,
            slots if claims is None else claims, dim, n, nb - 1, M1, M2, *b.reserved, b.flag, SHIFT=b.shift, BS=bs,
            BLOCK=BLOCK, DIM=next_pow2(dim), COPY=copy, SCORES=scores, FOUNDS=founds is not None,
            LOCATE=located is not None, MARK=missing_in is not None, CLAIM=claims is not None,
            num_warps=LOOKUP_WARPS)
    return (slots, out_scores, found) if copy else (slots, out_scores)


def locate_triton(b, keys: torch.Tensor, inserting: bool = True):
    """An upsert's first launches, a lookup of ``keys`` as the table holds them: (sort keys, slots
    or -1, statuses FOUND or MISSING, founds); a reserved key sets ``b.flag``. A key's sort key is
    ``bucket * 2bs + pos``, its position in the bucket, or ``bucket * 2bs + bs`` where the key is
    missing, and, when ``inserting``, for every key of a bucket where one is missing (the loop's
    runs, ``_mark_loop_runs``); int32 where the table's buckets allow it (half the radix passes)."""
    n, dev = len(keys), keys.device
    nb, bs = b.keys.shape
    skeys = torch.empty(n, dtype=torch.int32 if nb * 2 * bs <= INT32_SORT_KEYS else torch.int64, device=dev)
    status = torch.empty(n, dtype=torch.int64, device=dev)
    founds = torch.empty(n, dtype=torch.bool, device=dev)
    missing_in = torch.zeros(nb, dtype=torch.int8, device=dev) if inserting else None
    slots = lookup_triton(b, keys, scores=False, founds=founds, located=(skeys, status), missing_in=missing_in)[0]
    if inserting and n:
        _mark_loop_runs[(-(-n // MARK_BLOCK),)](skeys, missing_in, n, BS=bs, BLOCK=MARK_BLOCK)
    return skeys, slots, status, founds


@triton.jit
def _assign_claimed(tscores, claims, slots, desired, values, storage, reserved_seen, out_status, n, dim,
                    RULE: tl.constexpr, BLOCK: tl.constexpr, DIM: tl.constexpr, HAS_VALUES: tl.constexpr):
    """assign after its lookup's claims, a lane per occurrence in the batch's order: the occurrence
    whose position its slot holds, its key's last, writes the value row and (SET) the score, and
    sets the claim back to 0; with ADD every occurrence adds its score, atomically (integer sums
    wrap alike in any order). A lane that reads its claim after the last occurrence cleared it
    reads 0, not its position, and writes nothing, as it should. Each occurrence's status: FOUND
    or MISSING. A batch with a reserved key (``*reserved_seen``) changes nothing but the claims."""
    q = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = q < n
    slot = tl.load(slots + q, mask=m, other=-1)
    found = m & (slot >= 0)
    tl.store(out_status + q, tl.where(found, _FOUND, _MISSING).to(tl.int64), mask=m)
    last = found & (tl.load(claims + slot, mask=found, other=0) == (q + 1).to(tl.int32))
    live = tl.load(reserved_seen) == 0
    write = last & live
    if RULE == _SET:
        tl.store(tscores + slot, tl.load(desired + q, mask=write, other=0), mask=write)
    elif RULE == _ADD:
        tl.atomic_add(tscores + slot, tl.load(desired + q, mask=found & live, other=0), mask=found & live)
    d_cols = tl.arange(0, DIM)
    at = write[:, None] & (d_cols < dim)[None, :]
    if HAS_VALUES:
        given = tl.load(values + q[:, None] * dim + d_cols[None, :], mask=at, other=0)
    else:
        given = tl.zeros((BLOCK, DIM), storage.dtype.element_ty)
    tl.store(storage + slot[:, None] * dim + d_cols[None, :], given, mask=at)
    tl.store(claims + slot, tl.zeros_like(slot).to(tl.int32), mask=last)


def assign_triton(b, keys, desired, rule, values, storage):
    """assign without a sort, values in GPU memory (``storage`` (slots, dim)) and scores by SET,
    ADD or KEEP: a lookup that claims each found key's slot for its last occurrence, then
    ``_assign_claimed``. Returns (slots or -1, statuses FOUND or MISSING, founds)."""
    n = len(keys)
    status = torch.empty(n, dtype=torch.int64, device=keys.device)
    founds = torch.empty(n, dtype=torch.bool, device=keys.device)
    claims = b.claims  # made before the lookup: no allocation stands between the claims and their clearing
    slots = lookup_triton(b, keys, scores=False, founds=founds, claims=claims)[0]
    if n:
        dim = storage.shape[1]
        _assign_claimed[(-(-n // BLOCK),)](
            b.scores, claims, slots, desired.contiguous(), keys if values is None else values.contiguous(), storage,
            b.flag, status, n, dim, RULE=rule, BLOCK=BLOCK, DIM=next_pow2(dim), HAS_VALUES=values is not None,
            num_warps=LOOKUP_WARPS)
    return slots, status, founds


def upsert_triton(b, keys, desired, rule, op, flags, order, sorted_keys, slots, status, values=None, storage=None):
    """numba's ``upsert`` loop on the GPU, bucket by bucket: ``order`` and ``sorted_keys`` sort the
    occurrences by ``locate_triton``'s sort keys, stably; ``slots`` and ``status`` are
    ``locate_triton``'s, and become the outputs. ``_apply_found`` takes the buckets where every
    key is present (assign: every bucket), ``_upsert_runs`` the others. Returns per occurrence (slots,
    status, ev_keys, ev_scores) and, when ``storage`` (slots, dim) on the keys' device is given
    (values then move in the launches), (ev_values, out_values): insert_and_evict's evicted rows
    and find_or_insert's results, None for other ops."""
    n, bs = len(keys), b.keys.shape[1]
    dev = keys.device
    keys, desired = keys.contiguous(), desired.contiguous()  # the kernels read them by offset
    flags = None if flags is None else flags.contiguous()
    values = None if values is None else values.contiguous()
    # one allocation, zeros: the evicted keys and scores, then the count of pending runs
    zeros = torch.zeros(2 * n + 1, dtype=torch.int64, device=dev)
    ev, pending_count = zeros[:2 * n].view(2, n).unbind(), zeros[2 * n:]
    pending_heads = torch.empty(n, dtype=torch.int32, device=dev)
    move = storage is not None
    dim = storage.shape[1] if move else 1
    ev_values = out_values = None
    if move and op == OP_INSERT_AND_EVICT:
        ev_values = torch.zeros(n, dim, dtype=storage.dtype, device=dev)
    if move and op == OP_FIND_OR_INSERT:
        out_values = torch.zeros(n, dim, dtype=storage.dtype, device=dev)
    given = keys if values is None else values
    into = storage if move else keys
    flags = keys if flags is None else flags
    if n:
        _apply_found[(-(-n // BLOCK),)](
            b.scores, desired, flags, order, sorted_keys, given, into, b.flag, keys if out_values is None else out_values,
            pending_heads, pending_count, n, dim, LOW32, HIGH32, OP=op, RULE=rule, BS=bs, BLOCK=BLOCK,
            DIM=next_pow2(dim), HAS_VALUES=values is not None, MOVE_VALUES=move, num_warps=LOOKUP_WARPS)
    if n and op != OP_ASSIGN:
        _upsert_runs[(min(-(-n // UPSERT_BLOCK), UPSERT_PROGRAMS),)](
            b.keys, b.digests, b.digest_words, b.scores, b.sizes, keys, desired, flags, order, sorted_keys, given,
            into, b.flag, pending_heads, pending_count, slots, status, *ev, keys if ev_values is None else ev_values,
            keys if out_values is None else out_values, n, dim, M1, M2, SIGN, LOW32, HIGH32, OP=op, RULE=rule, BS=bs,
            BLOCK=UPSERT_BLOCK, DIM=next_pow2(dim), CHUNK=min(bs, 32), HAS_VALUES=values is not None,
            MOVE_VALUES=move, num_warps=UPSERT_WARPS)
    return (slots, status, *ev, ev_values, out_values)


__all__ = ["assign_triton", "locate_triton", "lookup_triton", "upsert_triton"]
