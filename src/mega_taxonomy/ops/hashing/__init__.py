"""Hashes of row ids: the order of every sample drawn by hash (``cluster.sampling``).

``hash_ids`` is a compiled loop (numba): one pass, no temporaries. numpy's version, kept as
``hash_ids_reference``, makes five arrays of the block's size: 0.14 ms a block of 65536 ids on
the development machine against 0.02 ms, paid once per block in every pass that draws a sample.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True, boundscheck=False)
def _splitmix64(ids, offset, out):  # pragma: no cover - compiled
    for i in range(len(ids)):
        z = ids[i] + offset  # uint64: wraps modulo 2**64, as the reference does
        z = (z ^ (z >> np.uint64(30))) * _MIX_1
        z = (z ^ (z >> np.uint64(27))) * _MIX_2
        out[i] = z ^ (z >> np.uint64(31))


def hash_ids(ids: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of ``id + (seed + 1) * golden``: uint64 hashes, well mixed for sequential ids."""
    bits = np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64)
    out = np.empty(len(bits), dtype=np.uint64)
    with np.errstate(over="ignore"):
        offset = np.uint64(seed + 1) * _GOLDEN
    _splitmix64(bits, offset, out)
    return out


def hash_ids_reference(ids: np.ndarray, seed: int) -> np.ndarray:
    """numpy twin of :func:`hash_ids`."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.int64).view(np.uint64) + np.uint64(seed + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX_1
        z = (z ^ (z >> np.uint64(27))) * _MIX_2
        return z ^ (z >> np.uint64(31))
