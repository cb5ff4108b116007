"""Compiled CPU kernel (numba) of ``hash_ids``: splitmix64 in one pass, no temporaries.

# Inputs:
#   ids    : (n,) uint64  the row ids' bits
#   offset : uint64       (seed + 1) * GOLDEN
# Output:
#   out    : (n,) uint64  splitmix64 of id + offset (wrapping modulo 2**64)
"""

from __future__ import annotations

import numpy as np
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True, boundscheck=False)
def splitmix64(ids, offset, out):  # pragma: no cover - compiled
    for i in range(len(ids)):
        z = ids[i] + offset  # uint64: wraps modulo 2**64, as the reference does
        z = (z ^ (z >> np.uint64(30))) * MIX_1
        z = (z ^ (z >> np.uint64(27))) * MIX_2
        out[i] = z ^ (z >> np.uint64(31))
