"""Hashes of row ids: the order of every sample drawn by hash (``partials.sampling``).

``hash_ids`` is the dispatcher, a compiled loop on the CPU (numba, ``hashing/numba.py``): one
pass, no temporaries. Its numpy twin, ``hash_ids_reference``, makes five arrays of the block's
size: 0.14 ms a block of 65536 ids on the development machine against 0.02 ms, paid once per
block in every pass that draws a sample. ``hash_ids_torch`` computes the same bits on a tensor's
device: a GPU pass that selects its sample there (``partials.lowest``) hashes there too.
"""

from __future__ import annotations

import numpy as np
import torch

from ..common import int64_bits, shift_right_logical
from .numba import GOLDEN, MIX_1, MIX_2, splitmix64

__all__ = ["hash_ids", "hash_ids_reference", "hash_ids_torch"]


def hash_ids(ids: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of ``id + (seed + 1) * golden``: uint64 hashes, well mixed for sequential ids."""
    bits = np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64)
    out = np.empty(len(bits), dtype=np.uint64)
    with np.errstate(over="ignore"):
        offset = np.uint64(seed + 1) * GOLDEN
    splitmix64(bits, offset, out)
    return out


def hash_ids_reference(ids: np.ndarray, seed: int) -> np.ndarray:
    """numpy twin of :func:`hash_ids`."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.int64).view(np.uint64) + np.uint64(seed + 1) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * MIX_1
        z = (z ^ (z >> np.uint64(27))) * MIX_2
        return z ^ (z >> np.uint64(31))


def hash_ids_torch(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """:func:`hash_ids` on a tensor's device: the int64 bits of the same uint64 hashes (int64
    products wrap as uint64's do)."""
    with np.errstate(over="ignore"):
        offset = int64_bits(np.uint64(seed + 1) * GOLDEN)
    z = ids.to(torch.int64) + offset
    z = (z ^ shift_right_logical(z, 30)) * int64_bits(MIX_1)
    z = (z ^ shift_right_logical(z, 27)) * int64_bits(MIX_2)
    return z ^ shift_right_logical(z, 31)
