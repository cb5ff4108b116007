"""Compiled CPU kernel (numba): the ``n`` smallest keys of every group, in one pass over the rows.

# Inputs:
#   keys     : (m,)  any real dtype (hashes, distances, negated distances)
#   ordinals : (m,)  int64, distinct: break ties between equal keys (the smaller first)
#   groups   : (m,)  int64 in [0, n_groups)
# Output:
#   positions of the selected rows, ordered by group, then (key, ordinal)

Every group keeps a bounded max-heap of its best ``n`` rows so far (in one array, each group's
heap sized to ``min(n, rows of the group)``, so memory stays O(m) whatever the number of groups);
a row enters only if it beats its group's worst kept row. Most rows of a big group are rejected by
one comparison: the selection costs O(m) plus O(kept x log n), where sorting every row by key and
group costs O(m log m) (1M rows: 256 groups of 1024 hashes, 55 ms against 110 ms; 4096 groups of
100 distances, 60 ms against 230 ms). Each heap is then sorted in place (heapsort), so the output
needs no further sort. Exact: the result is the same set and
order as a sort by (group, key, ordinal).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always")
def _before(key_a, ordinal_a, key_b, ordinal_b):  # pragma: no cover - compiled
    """(key_a, ordinal_a) comes before (key_b, ordinal_b)."""
    return key_a < key_b or (key_a == key_b and ordinal_a < ordinal_b)


@njit(inline="always")
def _sift_down(hk, ho, hp, base, size, i, key, ordinal, position):  # pragma: no cover - compiled
    """Put a row at slot ``i`` of the max-heap ``[base, base + size)`` of (key, ordinal, position)
    columns and sift it down."""
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        c = base + child
        if child + 1 < size and _before(hk[c], ho[c], hk[c + 1], ho[c + 1]):
            child += 1
            c += 1
        if _before(key, ordinal, hk[c], ho[c]):
            hk[base + i], ho[base + i], hp[base + i] = hk[c], ho[c], hp[c]
            i = child
        else:
            break
    hk[base + i], ho[base + i], hp[base + i] = key, ordinal, position


@njit(cache=True, nogil=True, boundscheck=False)
def smallest_per_group_numba(keys, ordinals, groups, n, n_groups):  # pragma: no cover - compiled
    counts = np.zeros(n_groups, dtype=np.int64)
    for g in groups:
        counts[g] += 1
    start = np.zeros(n_groups + 1, dtype=np.int64)
    for g in range(n_groups):
        start[g + 1] = start[g] + min(n, counts[g])
    # the heaps' rows as three columns, keys and ordinals copied in: sifting stays in the heap
    total = start[n_groups]
    hk = np.empty(total, dtype=keys.dtype)
    ho, hp = np.empty(total, dtype=np.int64), np.empty(total, dtype=np.int64)
    size = np.zeros(n_groups, dtype=np.int64)
    for row in range(len(keys)):
        g = groups[row]
        key, ordinal = keys[row], ordinals[row]
        base, cap = start[g], start[g + 1] - start[g]
        if size[g] < cap:  # not full: push, sift up
            i = size[g]
            size[g] += 1
            while i > 0:
                parent = (i - 1) // 2
                p = base + parent
                if _before(hk[p], ho[p], key, ordinal):
                    hk[base + i], ho[base + i], hp[base + i] = hk[p], ho[p], hp[p]
                    i = parent
                else:
                    break
            hk[base + i], ho[base + i], hp[base + i] = key, ordinal, row
        elif cap > 0 and _before(key, ordinal, hk[base], ho[base]):  # beats the worst kept: replace it
            _sift_down(hk, ho, hp, base, cap, 0, key, ordinal, row)
    # heapsort every group in place: the largest moves to the end, the rest sifts down
    for g in range(n_groups):
        base = start[g]
        for end in range(start[g + 1] - base - 1, 0, -1):
            top_k, top_o, top_p = hk[base], ho[base], hp[base]
            e = base + end
            _sift_down(hk, ho, hp, base, end, 0, hk[e], ho[e], hp[e])
            hk[e], ho[e], hp[e] = top_k, top_o, top_p
    return hp
