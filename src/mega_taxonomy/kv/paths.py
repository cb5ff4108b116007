"""The two ways a batch runs over a table's buckets and values.

- ``cpu_*``: numba's in-order loops (``ops/hash_table/numba.py``) over host memory: keys, scores
  and values are updated in one pass, duplicates of a key take effect one after the other.
- ``round_*``: the round scheme of ``ops.hash_table.upsert_rounds`` (Triton on CUDA, the torch twin
  elsewhere): slots first, then values moved by slot through ``TieredValues``.

Both return per input key the final slot (-1: absent; the round scheme only for
``find_or_insert``, whose callers use them, and None otherwise: a lookup of the whole batch
saved), and for ``insert_and_evict`` the evicted (keys, values, scores): entries pushed out, then
new keys refused by a full bucket.
"""

from __future__ import annotations

import numpy as np
import torch

from mega_taxonomy.ops import hash_table as ht
from mega_taxonomy.ops.hash_table import numba as nk

__all__ = ["cpu_erase", "cpu_lookup", "cpu_upsert", "numba_dtype", "round_erase", "round_lookup", "round_upsert"]


def numba_dtype(dtype) -> bool:
    """Whether numba's loops can hold values of this dtype."""
    return dtype in (torch.float32, torch.float64, torch.int32, torch.int64)


def _np(t):
    return t.numpy()


def cpu_lookup(b, tiers, keys, copy_values):
    n, dim = len(keys), tiers.shape[1]
    values = torch.empty((n if copy_values else 0), dim, dtype=tiers.fast.dtype)
    slots, scores = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    nk.lookup(_np(b.keys), _np(b.digests), _np(b.scores), _np(tiers.fast), _np(tiers.host), tiers.k, b.shift,
              _np(keys), _np(values), _np(scores), _np(slots), copy_values)
    return values, slots, scores


def cpu_upsert(b, tiers, op, keys, values, desired, rule, flags=None):
    n, dim = len(keys), tiers.shape[1]
    dtype = tiers.fast.dtype
    values = torch.empty(0, dim, dtype=dtype) if values is None else values.to(dtype).contiguous()
    out_values = torch.empty(n if op == ht.OP_FIND_OR_INSERT else 0, dim, dtype=dtype)
    slots = torch.empty(n, dtype=torch.int64)
    evict = op == ht.OP_INSERT_AND_EVICT
    ev_k, ev_s = torch.empty(n if evict else 0, dtype=torch.int64), torch.empty(n if evict else 0, dtype=torch.int64)
    ev_v = torch.zeros(n if evict else 0, dim, dtype=dtype)
    flags = np.zeros(n, dtype=np.bool_) if flags is None else _np(flags.to(torch.bool).contiguous())
    n_ev = nk.upsert(_np(b.keys), _np(b.digests), _np(b.scores), _np(b.sizes), _np(tiers.fast), _np(tiers.host),
                     tiers.k, b.shift, b.empty, _np(keys), _np(values), _np(desired), rule, flags, op,
                     _np(out_values), _np(slots), _np(ev_k), _np(ev_v), _np(ev_s))
    return out_values, slots, settle_evicted(b, (ev_k[:n_ev], ev_v[:n_ev], ev_s[:n_ev]), "numba")


def cpu_erase(b, keys):
    return int(nk.erase(_np(b.keys), _np(b.digests), _np(b.scores), _np(b.sizes), b.shift, b.empty, b.empty_digest,
                        _np(keys)))


def round_lookup(b, tiers, keys, copy_values, backend):
    one = tiers.single() if copy_values else None
    if one is not None and one.device == keys.device:  # the values read with the slots
        slots, scores, values = ht.lookup_values(b, keys, one, backend=backend)
        return values, slots, scores
    slots, scores = ht.lookup(b, keys, backend=backend)
    values = None
    if copy_values:  # zeros where missing, without a boolean index (a sync on the GPU)
        values = tiers[slots.clamp_min(0)].masked_fill_((slots < 0)[:, None], 0)
    return values, slots, scores


def round_erase(b, keys, backend):
    slots, _ = ht.lookup(b, torch.unique(keys), backend=backend)
    slots = slots[slots >= 0]
    bs = b.keys.shape[1]
    b.keys.view(-1)[slots], b.digests.view(-1)[slots], b.scores.view(-1)[slots] = b.empty, b.empty_digest, 0
    b.sizes.sub_(torch.bincount(slots // bs, minlength=len(b.sizes)).to(torch.int32))
    return len(slots)


def settle_evicted(b, evicted, backend):
    """The evicted entries as the caller sees them after the batch: a key pushed out and put back
    later in the same batch is not evicted (it was assigned), and a key pushed out twice is
    reported once, with its last value."""
    keys, values, scores = evicted
    if not len(keys):
        return evicted
    keep = ht.lookup(b, keys, backend=backend)[0] < 0 if backend != "numba" else None
    if keep is None:
        keep = torch.from_numpy(cpu_lookup_slots(b, keys) < 0)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    last = torch.full_like(uniq, -1).scatter_reduce_(0, inverse, torch.arange(len(keys), device=keys.device), "amax")
    keep &= torch.zeros_like(keep).index_fill_(0, last, True)
    return keys[keep], values[keep], scores[keep]


def cpu_lookup_slots(b, keys):
    slots, scores = np.empty(len(keys), dtype=np.int64), np.empty(len(keys), dtype=np.int64)
    empty = np.empty((0, 1), dtype=np.float32)
    nk.lookup(_np(b.keys), _np(b.digests), _np(b.scores), empty, empty, 0, b.shift, _np(keys), empty, scores, slots,
              False)
    return slots


def round_upsert(b, tiers, op, keys, values, desired, rule, flags=None, backend="auto"):
    _n, dim = len(keys), tiers.shape[1]
    if values is not None:
        values = values.to(device=keys.device, dtype=tiers.fast.dtype)
    if op == ht.OP_ACCUM:
        return _round_accum(b, tiers, keys, values, desired, rule, flags, backend)
    insert = op != ht.OP_ASSIGN
    r = ht.upsert_rounds(b, keys, desired, rule, insert=insert, backend=backend)
    rows = r.first if op == ht.OP_FIND_OR_INSERT else r.last  # the occurrence whose value is written
    evicted = (keys[:0], torch.empty(0, dim, dtype=tiers.fast.dtype, device=keys.device), keys[:0])
    if op == ht.OP_INSERT_AND_EVICT:
        inner, index = r.evicted_after_own_round()  # written by this batch, then pushed out
        ev_v = torch.empty(len(r.evicted_keys), dim, dtype=tiers.fast.dtype, device=keys.device)
        ev_v[~inner] = tiers[r.evicted_slots[~inner]]  # read before any write below
        if values is not None:
            ev_v[inner] = values[rows[index[inner]]]
        refused = r.status == ht.REFUSED
        ref_v = values[rows[refused]] if values is not None else torch.zeros(int(refused.sum()), dim, device=keys.device)
        evicted = (torch.cat([r.evicted_keys, r.keys[refused]]), torch.cat([ev_v, ref_v.to(ev_v.dtype)]),
                   torch.cat([r.evicted_scores, r.desired[refused]]))
    keep = r.slots >= 0
    write = keep & (r.status != ht.FOUND) if op == ht.OP_FIND_OR_INSERT else keep
    if values is not None:
        tiers[r.slots[write]] = values[rows[write]]
    elif op != ht.OP_ASSIGN:
        new = keep & (r.status != ht.FOUND)
        tiers[r.slots[new]] = torch.zeros(int(new.sum()), dim, dtype=tiers.fast.dtype, device=keys.device)
    if op == ht.OP_INSERT_AND_EVICT:
        evicted = settle_evicted(b, evicted, backend)
    out_values = slots = None
    if op == ht.OP_FIND_OR_INSERT:
        slots = ht.lookup(b, keys, backend=backend)[0]
        missing = (slots < 0)[:, None]
        out_values = tiers[slots.clamp_min(0)]
        out_values = out_values.masked_fill_(missing, 0) if values is None else torch.where(missing, values, out_values)
    return out_values, slots, evicted


def _round_accum(b, tiers, keys, values, desired, rule, flags, backend):
    """accum_or_assign in rounds, as the in-order loop means it: an assign-flagged occurrence inserts
    a missing key (the first one does), an accum-flagged one adds to a key present by then."""
    flags = flags.to(device=keys.device, dtype=torch.bool)
    idx = torch.arange(len(keys), device=keys.device)
    present = ht.lookup(b, keys, backend=backend)[0] >= 0
    assign = ~flags & ~present
    first_assign = torch.full_like(keys, len(keys))
    if bool(assign.any()):
        r = ht.upsert_rounds(b, keys[assign], desired[assign], rule, insert=True, backend=backend)
        put = r.slots >= 0
        tiers[r.slots[put]] = values[assign][r.first[put]]
        uniq, inverse = torch.unique(keys, return_inverse=True)
        firsts = torch.full_like(uniq, len(keys)).scatter_reduce_(0, inverse[assign], idx[assign], "amin")
        first_assign = firsts[inverse]
    accum = flags & (present | (idx > first_assign))
    if bool(accum.any()):
        ht.upsert_rounds(b, keys[accum], desired[accum], rule, insert=False, backend=backend)
        slots = ht.lookup(b, keys[accum], backend=backend)[0]
        ok = slots >= 0
        tiers.index_add_(slots[ok], values[accum][ok])
    return None, None, None
