"""A HashTable's entries through a Store (``kv/keys.npy``, ``kv/values.npy``, ``kv/scores.npy``,
names in ``storage/schema.py``), and the warm-up of hot entries into the fast tier.

Saved on one device, loaded on any: the arrays are host numpy arrays (bfloat16 values are
written as float32, which holds them exactly). Nothing is pickled.
"""

from __future__ import annotations

import numpy as np
import torch

from mega_taxonomy.errors import StorageError
from mega_taxonomy.ops.hash_table import unsigned_key
from mega_taxonomy.storage import Store
from mega_taxonomy.storage.schema import kv_file

__all__ = ["load", "save", "warmup"]

KIND = "hash_table"


def save(table, uri, storage_options=None) -> dict:
    keys, values, scores = table.export_batch(table.capacity())
    if values.dtype == torch.bfloat16:
        values = values.float()
    store = Store(uri, storage_options=storage_options)
    store.put_array(kv_file("keys"), keys.cpu().numpy())
    store.put_array(kv_file("values"), values.cpu().numpy())
    store.put_array(kv_file("scores"), scores.cpu().numpy())
    params = {"dim": table.dim, "capacity": table.capacity(), "bucket_size": table.bucket_size,
              "max_load_factor": table.max_load_factor, "evict_strategy": table.evict_strategy.value,
              "value_dtype": str(table.value_dtype).removeprefix("torch."),
              "reserved_key_start_bit": table.reserved_key_start_bit}
    return store.commit(kind=KIND, params=params, status="saved", size=len(keys), **table.scorer.state())


def load(table, uri, storage_options=None) -> int:
    store = Store(uri, storage_options=storage_options)
    manifest = store.manifest_of(KIND, "hash table")
    params = manifest["params"]
    for name in ("dim", "reserved_key_start_bit"):
        if params[name] != getattr(table, name):
            raise StorageError(f"{store!r}: saved {name}={params[name]}, this table has {getattr(table, name)}")
    keys = torch.from_numpy(np.asarray(store.get_array(kv_file("keys")), dtype=np.int64)).to(table.device)
    values = torch.from_numpy(np.asarray(store.get_array(kv_file("values")))).to(table.device)
    scores = torch.from_numpy(np.asarray(store.get_array(kv_file("scores")), dtype=np.int64)).to(table.device)
    if not len(keys) == len(values) == len(scores) or values.shape[1:] != (table.dim,):
        raise StorageError(f"{store!r}: keys, values and scores disagree in shape")
    table.clear()
    table.reserve(int(len(keys) / table.max_load_factor) + 1)
    table.check_keys(keys)  # the saved keys must not be reserved here either
    table.restore(keys, values.to(table.value_dtype).contiguous(), scores)
    meta = manifest.get("meta", {})
    table.scorer.clock = max(table.scorer.clock, int(meta.get("clock", 0)))
    table.scorer.global_epoch = int(meta.get("global_epoch", 0))
    return table.size()


def warmup(b, tiers) -> None:
    """Sort every bucket's slots by score, highest first (empty slots last), values with them."""
    if not 0 < tiers.k < tiers.bs:
        return
    occupied = b.keys != b.empty
    order = torch.argsort(torch.where(occupied, unsigned_key(b.scores), -(2**63)), dim=1, descending=True,
                          stable=True)
    bs = b.keys.shape[1]
    slots = (torch.arange(len(b.keys), device=b.keys.device)[:, None] * bs + order).reshape(-1)
    values = tiers[slots]
    for name in ("keys", "digests", "scores"):
        setattr(b, name, getattr(b, name).gather(1, order).contiguous())
    tiers[torch.arange(b.keys.numel(), device=b.keys.device)] = values
