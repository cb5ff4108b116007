"""The two ways a batch runs over a table's buckets and values.

- ``cpu_*``: numba's in-order loops (``ops/hash_table/numba.py``) over host memory: keys, scores
  and values are updated in one pass, duplicates of a key take effect one after the other.
- ``tensor_*``: ``ops.hash_table.upsert`` and ``lookup`` (Triton on CUDA, the torch twin
  elsewhere), the same loop bucket by bucket: values in GPU memory move in the kernels' launches,
  others (pinned host memory, the twin's) by slot through ``TieredValues``, round by round.

Both return per input key the slot it was found in or written to (-1: absent or refused), and
for ``insert_and_evict`` the evicted (keys, values, scores): entries pushed out and new keys
refused by a full bucket, in the batch's order; on CUDA also whether each key was present
before the batch (the upsert's first lookup).
"""

from __future__ import annotations

import numpy as np
import torch

from mega_taxonomy.ops import hash_table as ht
from mega_taxonomy.ops.hash_table import numba as nk

__all__ = ["cpu_erase", "cpu_lookup", "cpu_upsert", "numba_dtype", "tensor_erase", "tensor_lookup", "tensor_upsert"]


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
    return out_values, slots, settle_evicted(b, (ev_k[:n_ev], ev_v[:n_ev], ev_s[:n_ev]), "numba"), None


def cpu_erase(b, keys):
    return int(nk.erase(_np(b.keys), _np(b.digests), _np(b.scores), _np(b.sizes), b.shift, b.empty, _np(keys)))


def tensor_lookup(b, tiers, keys, copy_values, backend):
    """(values, slots, scores, founds) of ``keys``; with ``copy_values`` False the slots and founds
    alone (values and scores None), with no read of the scores."""
    founds = torch.empty(len(keys), dtype=torch.bool, device=keys.device)
    if not copy_values:
        return None, ht.lookup_slots(b, keys, backend, founds), None, founds
    one = tiers.single_on(keys.device)
    if one is not None:  # the values read with the slots
        slots, scores, values = ht.lookup_values(b, keys, one, backend, founds)
        return values, slots, scores, founds
    slots, scores = ht.lookup(b, keys, backend, founds)
    # zeros where missing, without a boolean index (a sync on the GPU)
    values = tiers[slots.clamp_min(0)].masked_fill_(~founds[:, None], 0)
    return values, slots, scores, founds


def tensor_erase(b, keys, backend):
    slots = ht.lookup_slots(b, torch.unique(keys), backend=backend)
    slots = slots[slots >= 0]
    bs = b.keys.shape[1]
    b.keys.view(-1)[slots], b.digests.view(-1)[slots], b.scores.view(-1)[slots] = b.empty, ht.EMPTY_DIGEST, 0
    b.sizes.sub_(torch.bincount(slots // bs, minlength=len(b.sizes)).to(torch.int32))
    return len(slots)


def settle_evicted(b, evicted, backend):
    """The evicted entries as the caller sees them after the batch: a key pushed out and put back
    later in the same batch is not evicted (it was assigned), and a key pushed out twice is
    reported once, with its last value."""
    keys, values, scores = evicted
    if not len(keys):
        return evicted
    keep = ht.lookup_slots(b, keys, backend=backend) < 0 if backend != "numba" else None
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


def tensor_upsert(b, tiers, op, keys, values, desired, rule, flags=None, backend="auto", refuse=None):
    """``op`` on the batch through ``ht.upsert``: (find_or_insert's rows or None, slots, evicted,
    founds before the batch or None).
    ``refuse``: called once the launches are queued, before their outcome is read (it raises for
    a batch whose reserved keys the kernels flagged, which then changed nothing)."""
    dim, dtype = tiers.shape[1], tiers.fast.dtype
    if values is not None:
        values = values.to(device=keys.device, dtype=dtype).contiguous()
    u = ht.upsert(b, keys, desired, rule, op, flags, values, tiers.single_on(keys.device), backend)
    if refuse is not None:
        refuse()
    if u.rank is None:  # the values moved in the launch
        ev_values, out_values = u.ev_values, u.out_values
    else:
        ev_values, out_values = _move_values(tiers, op, u, values, flags, dim, dtype)
    evicted = (keys[:0], torch.empty(0, dim, dtype=dtype, device=keys.device), keys[:0])
    if op == ht.OP_INSERT_AND_EVICT:
        at = ((u.status == ht.EVICTED) | (u.status == ht.REFUSED)).nonzero()[:, 0]  # one wait, not three
        evicted = settle_evicted(b, (u.ev_keys[at], ev_values[at], u.ev_scores[at]), backend)
    return out_values, u.slots, evicted, u.found_before


def _move_values(tiers, op, u, values, flags, dim, dtype):
    """The value rows of ``ht.upsert``'s outcome ``u``, round by round as the keys went (no two
    occurrences of a round share a slot, and a later round sees an earlier one's writes):
    (insert_and_evict's evicted rows by occurrence, no rows for other ops; find_or_insert's
    results, None for other ops)."""
    n, device = len(u.slots), u.slots.device
    ev_values = torch.zeros(n if op == ht.OP_INSERT_AND_EVICT else 0, dim, dtype=dtype, device=device)
    out_values = torch.zeros(n, dim, dtype=dtype, device=device) if op == ht.OP_FIND_OR_INSERT else None
    update, _ = ht.intents(op, flags, n, device)
    found = u.status == ht.FOUND
    put = (u.status == ht.INSERTED) | (u.status == ht.EVICTED)
    for i in ht.rounds(u.rank):
        s, f, p = u.slots[i], found[i, None], put[i, None]
        old = tiers[s.clamp_min(0)]
        given = values[i] if values is not None else torch.zeros_like(old)
        if op == ht.OP_INSERT_AND_EVICT:
            ev_values[i] = torch.where((u.status[i] == ht.EVICTED)[:, None], old, given)
        if op == ht.OP_FIND_OR_INSERT:  # a hit's row is read, not written
            new, write = torch.where(f, old, given), p
            out_values[i] = new
        else:
            upd = f & update[i, None]
            new = torch.where(upd, old + given, given) if op == ht.OP_ACCUM else given
            write = p | upd
        write = write[:, 0]
        tiers[s[write]] = new[write]
    return ev_values, out_values
