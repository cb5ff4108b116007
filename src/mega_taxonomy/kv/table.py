"""HashTable: a scored key-value store of fixed-width vectors in GPU memory and host memory, with
HierarchicalKV's API and eviction rules (``../shared/seeds/hierarchical-kv.txt``).

Layout: buckets of ``bucket_size`` slots, each slot a key, an 8-bit digest and a score (structure
of arrays, ``ops.hash_table.Buckets``); values in ``TieredValues`` by slot. A key hashes to one
bucket and may sit in any of its slots. Eviction happens only in a full bucket: the slot of the
lowest score (as uint64) goes to the new key, unless the new key's score is lower still, then the
new key is refused. When the load factor would pass ``max_load_factor`` the capacity doubles
(every entry is placed again), up to ``max_capacity``.

Batches: on the CPU, numba's loops take the keys in order, so a key repeated in a batch is
assigned by its last occurrence, and ``accum_or_assign`` adds every accum-flagged occurrence. On
CUDA the same loop runs bucket by bucket in Triton launches (``ops.hash_table.upsert``; keys of
different buckets never meet): the same outcome, bit for bit. Calls on one table are serialised
by a lock (CPU threads); the GPU path runs in order on the current stream.
"""

from __future__ import annotations

import functools
import threading

import torch

from mega_taxonomy.ops import hash_table as ht

from . import paths
from .eviction import EvictStrategy, Scorer, as_bits, to_int64
from .tiers import TieredValues

__all__ = ["HashTable"]


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _reserved_masks(start_bit: int):
    """(mask, value, empty key): a key is reserved when ``key & mask == value`` (the original's
    ``IS_RESERVED_KEY``; the default reserves 0xFFFFFFFFFFFFFFFC..0xFFFFFFFFFFFFFFFF)."""
    if start_bit == 0:
        mask = 0xFFFFFFFFFFFFFFFC
        return to_int64(mask), to_int64(mask), to_int64(2**64 - 1)
    if not 1 <= start_bit <= 62:
        raise ValueError(f"reserved_key_start_bit must be in [0, 62], got {start_bit}")
    mask = ~(3 << start_bit) & (2**64 - 1)
    value = mask & ~1
    return to_int64(mask), to_int64(value), to_int64(value | (3 << start_bit))


class HashTable:
    """A bucketed, scored hash table from uint64 keys to ``dim``-wide vectors.

    Parameters
    ----------
    dim : int
        Width of every value.
    init_capacity, max_capacity : int
        Slots at first and at most (rounded up to a power of two number of buckets).
    max_hbm_for_vectors : int, default=0
        Bytes of values kept in GPU memory; the rest go to pinned host memory (hybrid mode). As in
        the original, 0 keeps every value in host memory: pass ``capacity * dim * itemsize`` for a
        table all in GPU memory. On a machine without CUDA both tiers are host memory.
    bucket_size : int, default=128
        Slots per bucket (a power of two).
    max_load_factor : float, default=0.5
        Size / capacity beyond which the capacity doubles.
    evict_strategy : EvictStrategy, default=LRU
        How scores are made (``kv.eviction``).
    value_dtype : torch.dtype, default=torch.float32
    device : str, default="auto"
        "cuda" when available, else "cpu".
    reserved_key_start_bit : int, default=0
        Moves the four reserved keys (the original's ``init_reserved_keys``).
    backend : {"auto", "numba", "torch", "triton"}, default="auto"
        "auto": numba on the CPU (torch for dtypes numba lacks), Triton on CUDA.

    Memory per slot: the key, score (8 bytes each), digest (1 byte) and value; on CUDA, where values
    are all in GPU memory, the first :meth:`assign` adds 4 bytes a slot (its claims, which spare it
    a sort of the batch).

    Examples
    --------
    >>> import torch
    >>> from mega_taxonomy.kv import HashTable, EvictStrategy
    >>> t = HashTable(dim=2, init_capacity=256, max_capacity=1024, evict_strategy=EvictStrategy.LFU)
    >>> t.insert_or_assign(torch.tensor([7, 9, 7]), torch.tensor([[1., 1], [2, 2], [3, 3]]))
    >>> values, found, scores = t.find(torch.tensor([7, 8]))
    >>> values.tolist(), found.tolist(), scores.tolist(), t.size()
    ([[3.0, 3.0], [0.0, 0.0]], [True, False], [2, 0], 2)
    """

    def __init__(self, dim, init_capacity, max_capacity, max_hbm_for_vectors=0, bucket_size=128,
                 max_load_factor=0.5, evict_strategy=EvictStrategy.LRU, value_dtype=torch.float32, device="auto",
                 reserved_key_start_bit=0, backend="auto"):
        if dim < 1 or init_capacity < 1 or max_capacity < init_capacity:
            raise ValueError(f"need dim >= 1 and 1 <= init_capacity <= max_capacity, got {dim}, {init_capacity}, "
                             f"{max_capacity}")
        if bucket_size < 1 or bucket_size & (bucket_size - 1):
            raise ValueError(f"bucket_size must be a power of two, got {bucket_size}")
        if not 0 < max_load_factor <= 1:
            raise ValueError(f"max_load_factor must be in (0, 1], got {max_load_factor}")
        if backend not in ("auto", "numba", "torch", "triton"):
            raise ValueError(f"backend must be auto, numba, torch or triton, got {backend!r}")
        self.dim, self.bucket_size, self.max_load_factor = int(dim), int(bucket_size), float(max_load_factor)
        self.max_hbm_for_vectors, self.value_dtype = int(max_hbm_for_vectors), value_dtype
        self.reserved_key_start_bit = int(reserved_key_start_bit)
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.evict_strategy = EvictStrategy(evict_strategy)
        self.backend = backend
        if backend == "numba" and (self.device.type != "cpu" or not paths.numba_dtype(value_dtype)):
            raise ValueError(f"backend='numba' needs device cpu and float32/64 or int32/64 values, not "
                             f"{self.device} {value_dtype}")
        self._mask, self._reserved, self._empty = _reserved_masks(self.reserved_key_start_bit)
        self._max_buckets = _pow2_at_least(-(-int(max_capacity) // self.bucket_size))
        self.scorer = Scorer(self.evict_strategy)
        self._lock = threading.RLock()
        self._allocate(min(_pow2_at_least(-(-int(init_capacity) // self.bucket_size)), self._max_buckets))

    # -- layout -------------------------------------------------------------------------------

    def _allocate(self, n_buckets):
        self._b = ht.Buckets.allocate(n_buckets, self.bucket_size, self._empty, self.device,
                                      (self._mask, self._reserved))
        self._size_bound = 0  # at least the size (``_grow_for``)
        self._v = TieredValues(n_buckets, self.bucket_size, self.dim, self.value_dtype, self.device,
                               self.max_hbm_for_vectors)

    @property
    def _numba(self):
        return self.backend == "numba" or (self.backend == "auto" and self.device.type == "cpu"
                                           and paths.numba_dtype(self.value_dtype))

    @property
    def _tensor_backend(self):
        return "auto" if self.backend in ("auto", "numba") else self.backend

    @property
    def values_storage(self):
        """The values by slot (``find_ptr``'s slots index it): one tensor when a single tier holds
        them all, else a ``TieredValues`` that gathers (``vs[slots]``) and scatters alike."""
        one = self._v.single()
        return self._v if one is None else one

    def capacity(self) -> int:
        return self._b.keys.numel()

    def size(self) -> int:
        return int(self._b.sizes.sum())

    def load_factor(self) -> float:
        return self.size() / self.capacity()

    def set_global_epoch(self, epoch: int) -> None:
        """The epoch of later calls without ``global_epoch=`` (EPOCH_LRU, EPOCH_LFU)."""
        self.scorer.global_epoch = self.scorer.epoch(epoch)

    # -- inputs ---------------------------------------------------------------------------------

    def _bits(self, keys):
        # the slots' device: "cuda" names the current device, which a tensor's device names by index
        device = self._b.keys.device
        return as_bits(keys, len(keys) if hasattr(keys, "__len__") else 1, device, "keys").contiguous()

    def check_keys(self, keys):
        """``keys`` as contiguous int64 bits on the table's device; ValueError naming a reserved key."""
        keys = self._bits(keys)
        self._refuse_reserved(keys)
        return keys

    def reserved(self, keys) -> torch.Tensor:
        """Per key, whether the table reserves it (a bool tensor on the table's device): keys that
        every other call refuses."""
        return self._is_reserved(self._bits(keys))

    def _is_reserved(self, keys):
        """Per key, whether the table reserves it (a bool tensor on the keys' device)."""
        return (keys & self._mask) == self._reserved

    def _refuse_reserved(self, keys):
        """ValueError naming the first reserved key."""
        if bool(self._is_reserved(keys).any()):
            i = int(self._is_reserved(keys).nonzero()[0, 0])
            raise ValueError(f"keys: row {i}: key {int(keys[i]) % 2**64:#x} is reserved by the table "
                             f"(reserved_key_start_bit={self.reserved_key_start_bit}); choose another key or start bit")

    def _values(self, values, n, name="values"):
        if values is None:
            return None
        values = torch.as_tensor(values).to(self.device)
        if values.shape != (n, self.dim):
            raise ValueError(f"{name}: expected shape ({n}, {self.dim}), got {tuple(values.shape)}")
        return values.to(self.value_dtype).contiguous()

    # -- upserts --------------------------------------------------------------------------------

    def _upsert(self, op, keys, values, scores, global_epoch, flags=None):
        inserting = op not in (ht.OP_ASSIGN,)
        with self._lock:
            keys = self._bits(keys)
            flagged = self._kernels_flag(keys)
            if not flagged:
                self._refuse_reserved(keys)
            values = self._values(values, len(keys))
            if op in (ht.OP_ASSIGN, ht.OP_INSERT_OR_ASSIGN, ht.OP_INSERT_AND_EVICT, ht.OP_ACCUM) and values is None:
                raise ValueError("values are required")
            if inserting:
                self._grow_for(len(keys))
            desired, rule = self.scorer.desired(len(keys), scores, self.device, inserting=inserting,
                                                 global_epoch=global_epoch)
            if self._numba:
                return paths.cpu_upsert(self._b, self._v, op, keys, values, desired, rule, flags)
            refuse = functools.partial(self._refuse_flagged, keys) if flagged else None
            return paths.tensor_upsert(self._b, self._v, op, keys, values, desired, rule, flags, self._tensor_backend,
                                       refuse)

    def _kernels_flag(self, keys) -> bool:
        """Whether this table's Triton kernels meet ``keys`` and flag reserved ones themselves
        (``Buckets.flag``), so that they need no check (and wait) before the launch."""
        return not self._numba and ht.uses_triton(keys, self._tensor_backend) and self.bucket_size >= 4

    def _refuse_flagged(self, keys):
        """After the kernels' launches over ``keys``: :meth:`_refuse_reserved`'s error where they
        flagged a reserved key (a wait for the device)."""
        if self._b.take_flag():
            self._refuse_reserved(keys)

    def insert_or_assign(self, keys, values, scores=None, *, global_epoch=None) -> None:
        """Insert missing keys and assign present ones (a full bucket evicts its lowest score)."""
        self._upsert(ht.OP_INSERT_OR_ASSIGN, keys, values, scores, global_epoch)

    def insert_and_evict(self, keys, values, scores=None, *, global_epoch=None):
        """:meth:`insert_or_assign`, returning the evicted ``(keys, values, scores)``: entries pushed out
        of full buckets, then new keys refused for a score below their bucket's lowest."""
        return self._upsert(ht.OP_INSERT_AND_EVICT, keys, values, scores, global_epoch)[2]

    def find_or_insert(self, keys, values=None, scores=None, *, global_epoch=None) -> torch.Tensor:
        """Values of present keys; missing keys are inserted with ``values`` (zeros when None)
        and those are returned."""
        return self._upsert(ht.OP_FIND_OR_INSERT, keys, values, scores, global_epoch)[0]

    def find_or_insert_ptr(self, keys, values=None, scores=None, *, global_epoch=None):
        """(slots into :attr:`values_storage`, founds before the call); missing keys are inserted,
        -1 where a full bucket refused one."""
        with self._lock:
            keys = self._bits(keys)  # once: the calls below take these bits as they are
            # the Triton upsert looks the keys up first: no lookup of its own before it
            before = None if self._kernels_flag(keys) else self.contains(keys)
            _, slots, _, found_before = self._upsert(ht.OP_FIND_OR_INSERT, keys, values, scores, global_epoch)
            return slots, found_before if before is None else before

    def assign(self, keys, values, scores=None, *, global_epoch=None) -> None:
        """Assign values (and scores) of present keys; missing keys are skipped."""
        self._upsert(ht.OP_ASSIGN, keys, values, scores, global_epoch)

    def accum_or_assign(self, keys, values, accum_or_assigns, scores=None, *, global_epoch=None) -> None:
        """Where the flag is True and the key is present, add ``values`` to its value; where False
        and missing, insert it; otherwise nothing (the original's rule)."""
        flags = torch.as_tensor(accum_or_assigns, dtype=torch.bool).reshape(-1)
        if len(flags) != len(keys):
            raise ValueError(f"accum_or_assigns has {len(flags)} entries for {len(keys)} keys")
        self._upsert(ht.OP_ACCUM, keys, values, scores, global_epoch, flags.to(self.device))

    def _grow_for(self, n):
        """Double the capacity until ``n`` more keys keep the load factor, up to ``max_capacity``.
        The size is read from the device only when the host's bound on it (the size last read,
        plus every key offered since) would pass the load factor: a read is a wait on the GPU."""
        target, largest = self.capacity(), self._max_buckets * self.bucket_size
        if target == largest:
            return
        if self._size_bound + n > self.max_load_factor * target:
            self._size_bound = self.size()
        while self._size_bound + n > self.max_load_factor * target and target < largest:
            target *= 2
        if target > self.capacity():
            self._rehash(target // self.bucket_size)
        self._size_bound += n

    def _rehash(self, n_buckets):
        keys, values, scores = self._export_range(0, self.capacity())
        self._allocate(n_buckets)
        self.restore(keys, values, scores)

    def restore(self, keys, values, scores):
        """Put distinct entries back with their scores as they are (rehash, load)."""
        self._size_bound += len(keys)
        if self._numba:
            paths.cpu_upsert(self._b, self._v, ht.OP_RESTORE, keys, values, scores, ht.SCORE_SET)
        else:
            paths.tensor_upsert(self._b, self._v, ht.OP_RESTORE, keys, values, scores, ht.SCORE_SET,
                                backend=self._tensor_backend)

    def reserve(self, capacity: int) -> None:
        """Grow to at least ``capacity`` slots (up to ``max_capacity``), placing every entry again."""
        with self._lock:
            n_buckets = min(_pow2_at_least(-(-int(capacity) // self.bucket_size)), self._max_buckets)
            if n_buckets > len(self._b.sizes):
                self._rehash(n_buckets)

    # -- lookups --------------------------------------------------------------------------------

    def _lookup(self, keys, copy_values, then):
        """``then(values, slots, scores, founds)`` of ``keys`` (values and scores None without
        ``copy_values``)."""
        keys = self._bits(keys)
        if self._numba:
            self._refuse_reserved(keys)
            values, slots, scores = paths.cpu_lookup(self._b, self._v, keys, copy_values)
            return then(values, slots, scores, slots >= 0)
        # The Triton kernels flag reserved keys as they read them (a reserved key is never stored,
        # so it is not found either): the flag is read after ``then``'s launches are queued too.
        flagged = self._kernels_flag(keys)
        if not flagged:
            self._refuse_reserved(keys)
        out = then(*paths.tensor_lookup(self._b, self._v, keys, copy_values, self._tensor_backend))
        if flagged:
            self._refuse_flagged(keys)
        return out

    def find(self, keys):
        """(values, founds, scores): zeros where a key is missing."""
        with self._lock:
            return self._lookup(keys, True, lambda values, slots, scores, founds: (values, founds, scores))

    def find_ptr(self, keys):
        """(slots into :attr:`values_storage`, founds): read and write values in place by slot."""
        with self._lock:
            return self._lookup(keys, False, lambda values, slots, scores, founds: (slots, founds))

    def contains(self, keys) -> torch.Tensor:
        with self._lock:
            return self._lookup(keys, False, lambda values, slots, scores, founds: founds)

    def erase(self, keys) -> int:
        """Remove ``keys``; return how many were present."""
        with self._lock:
            keys = self.check_keys(keys)
            if self._numba:
                return paths.cpu_erase(self._b, keys)
            return paths.tensor_erase(self._b, keys, self._tensor_backend)

    def clear(self) -> None:
        with self._lock:
            self._allocate(len(self._b.sizes))

    # -- scans ----------------------------------------------------------------------------------

    def _export_range(self, start, stop, where=None):
        """(keys, values, scores) of the occupied slots ``start .. stop - 1`` that ``where`` keeps:
        slices of the slot arrays, then one gather of the kept ones."""
        stop = min(stop, self.capacity())
        keys, scores = self._b.keys.view(-1)[start:stop], self._b.scores.view(-1)[start:stop]
        keep = keys != self._empty
        if where is not None:
            keep &= where(keys, scores)
        at = keep.nonzero()[:, 0]
        one = self._v.single()
        values = one[start:stop][at.to(one.device)].to(self.device) if one is not None else self._v[at + start]
        return keys[at], values, scores[at]

    @staticmethod
    def _predicate(pattern, threshold, predicate):
        if predicate is not None:
            return lambda k, s: predicate(k, s, pattern, threshold)
        pattern, threshold = to_int64(int(pattern)), to_int64(int(threshold))
        return lambda k, s: ((k & pattern) == pattern) & ((s ^ ht.SIGN) >= (threshold ^ ht.SIGN))

    def export_batch(self, n: int, offset: int = 0):
        """(keys, values, scores) of the occupied slots among slots ``offset .. offset + n - 1``."""
        with self._lock:
            return self._export_range(offset, offset + n)

    def export_batch_if(self, pattern, threshold, n: int, offset: int = 0, *, predicate=None):
        """:meth:`export_batch` of the entries that match: by default ``key & pattern == pattern`` and
        score >= ``threshold`` (uint64); or ``predicate(keys, scores, pattern, threshold) -> bool mask``."""
        with self._lock:
            return self._export_range(offset, offset + n, self._predicate(pattern, threshold, predicate))

    def erase_if(self, pattern, threshold, *, predicate=None) -> int:
        """Remove the entries that match (see :meth:`export_batch_if`); return how many."""
        with self._lock:
            keys, _, _ = self.export_batch_if(pattern, threshold, self.capacity(), predicate=predicate)
            return self.erase(keys) if len(keys) else 0

    # -- tiers and storage ----------------------------------------------------------------------

    def warmup(self) -> None:
        """Move every bucket's highest scores into the positions whose values are in GPU memory
        (hybrid mode): slots are permuted within their bucket, so lookups are unchanged."""
        from .persist import warmup

        with self._lock:
            warmup(self._b, self._v)

    def save(self, uri, *, storage_options=None) -> dict:
        """Write every entry and the table's parameters to a Store; return the manifest."""
        from .persist import save

        with self._lock:
            return save(self, uri, storage_options)

    def load(self, uri, *, storage_options=None) -> int:
        """Replace the content with a Store written by :meth:`save` (any device); return the size."""
        from .persist import load

        with self._lock:
            return load(self, uri, storage_options)

    def __repr__(self):
        return (f"HashTable(dim={self.dim}, size={self.size()}, capacity={self.capacity()}, "
                f"strategy={self.evict_strategy.name}, device={self.device})")
