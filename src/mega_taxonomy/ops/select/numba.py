"""Compiled CPU kernels (numba): the ``n`` smallest keys of every group.

# Inputs:
#   keys     : (m,)  any real dtype (hashes, distances, negated distances)
#   ordinals : (m,)  int64, distinct: break ties between equal keys (the smaller first)
#   groups   : (m,)  int64 in [0, n_groups)
# Output:
#   positions of the selected rows, ordered by group, then (key, ordinal)

Two ways, one result (the same set and order as a sort by (group, key, ordinal)):

- Bounded heaps, for small ``n``: every group keeps a max-heap of its best ``n`` rows so far (in
  one array, each group's heap sized to ``min(n, rows of the group)``, so memory stays O(m)
  whatever the number of groups); a row enters only if it beats its group's worst kept row. Most
  rows of a big group are rejected by one comparison: O(m) plus O(kept x log n), where sorting
  every row by key and group costs O(m log m) (1M rows: 256 groups of 1024 hashes, 55 ms against
  110 ms; 4096 groups of 100 distances, 60 ms against 230 ms). Each heap is then sorted in place.
- Selection, when ``n`` is ``SELECT_FROM`` or more, or when there are few rows per kept slot
  (at most ``ROWS_PER_SLOT`` x n x groups rows, so that most would enter a heap): the rows are
  bucketed by group (a counting sort), each group's ``n`` smallest moved to its front by
  quickselect, and only those sorted. Heaps of a thousand rows and more, one per group, are
  scattered over memory, and a row that enters one costs log n misses. On one core of the
  2-core development machine: 8M hashes in 4096 groups of 1024 (a level's node samples) 1.7 s
  with heaps, 0.54 s this way; 1M in 256 groups 70 ms against 38 ms; one group of 16384 among
  65536 rows 4.0 ms against 1.6 ms; 262144 rows in 4096 groups of 32 (a sample partial of a
  level's nodes, merged) 10.9 ms against 7.8 ms. With many rows per slot the heaps stay faster
  (65536 rows, n = 1: 0.3 against 1.0 ms; 262144 rows in 256 groups, n = 16: 1.7 against
  3.4 ms): the bucketing is a fixed cost.
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


@njit(inline="always")
def _push(hk, ho, hp, base, cap, size, key, ordinal, position):  # pragma: no cover - compiled
    """Offer a row to the max-heap ``[base, base + cap)`` holding ``size`` rows: pushed while it
    is not full, else kept in place of the worst row if it comes before it. Whether it entered."""
    if size < cap:  # not full: push, sift up
        i = size
        while i > 0:
            parent = (i - 1) // 2
            p = base + parent
            if _before(hk[p], ho[p], key, ordinal):
                hk[base + i], ho[base + i], hp[base + i] = hk[p], ho[p], hp[p]
                i = parent
            else:
                break
        hk[base + i], ho[base + i], hp[base + i] = key, ordinal, position
        return True
    if cap > 0 and _before(key, ordinal, hk[base], ho[base]):  # beats the worst kept: replace it
        _sift_down(hk, ho, hp, base, cap, 0, key, ordinal, position)
        return True
    return False


@njit(inline="always")
def _heapsort(hk, ho, hp, base, size):  # pragma: no cover - compiled
    """Sort the max-heap ``[base, base + size)`` in place, smallest first: the largest moves to
    the end, the rest sifts down."""
    for end in range(size - 1, 0, -1):
        top_k, top_o, top_p = hk[base], ho[base], hp[base]
        e = base + end
        _sift_down(hk, ho, hp, base, end, 0, hk[e], ho[e], hp[e])
        hk[e], ho[e], hp[e] = top_k, top_o, top_p


@njit(cache=True, nogil=True, boundscheck=False)
def _smallest_by_heaps(keys, ordinals, groups, n, n_groups):  # pragma: no cover - compiled
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
        cap = start[g + 1] - start[g]
        if _push(hk, ho, hp, start[g], cap, size[g], keys[row], ordinals[row], row) and size[g] < cap:
            size[g] += 1
    for g in range(n_groups):
        _heapsort(hk, ho, hp, start[g], start[g + 1] - start[g])
    return hp


@njit(cache=True, nogil=True, boundscheck=False)
def _select_first(k, o, p, lo, hi, n):  # pragma: no cover - compiled
    """Reorder the rows ``lo:hi`` of the (key, ordinal, position) columns so that their ``n``
    smallest come first, in any order (quickselect, median-of-three pivots)."""
    target = lo + n
    while hi - lo > 1:
        a, b, c = lo, (lo + hi) // 2, hi - 1
        if _before(k[b], o[b], k[a], o[a]):
            a, b = b, a
        if _before(k[c], o[c], k[b], o[b]):
            b = c
            if _before(k[b], o[b], k[a], o[a]):
                b = a
        pivot_k, pivot_o = k[b], o[b]
        i, j = lo, hi - 1
        while i <= j:  # Hoare's partition: rows before i come before the pivot or are it, after j after
            while _before(k[i], o[i], pivot_k, pivot_o):
                i += 1
            while _before(pivot_k, pivot_o, k[j], o[j]):
                j -= 1
            if i <= j:
                k[i], k[j] = k[j], k[i]
                o[i], o[j] = o[j], o[i]
                p[i], p[j] = p[j], p[i]
                i += 1
                j -= 1
        if target <= j + 1:
            hi = j + 1
        elif target >= i:
            lo = i
        else:  # the target falls between the two sides: rows j + 1 .. i - 1 are the pivot
            return


@njit(cache=True, nogil=True, boundscheck=False)
def _sort_rows(k, o, p, lo, hi):  # pragma: no cover - compiled
    """Insertion sort of the rows ``lo:hi`` of the (key, ordinal, position) columns, in place."""
    for a in range(lo + 1, hi):
        key, ordinal, position = k[a], o[a], p[a]
        b = a - 1
        while b >= lo and _before(key, ordinal, k[b], o[b]):
            k[b + 1], o[b + 1], p[b + 1] = k[b], o[b], p[b]
            b -= 1
        k[b + 1], o[b + 1], p[b + 1] = key, ordinal, position


# Kept rows of a group up to which they are sorted in place (no allocation per group: with 4096
# groups of 32, two arrays allocated per group took a third of the selection's time).
_SORT_IN_PLACE = 64


@njit(cache=True, nogil=True, boundscheck=False)
def _smallest_by_selection(keys, ordinals, groups, n, n_groups):  # pragma: no cover - compiled
    m = len(keys)
    start = np.zeros(n_groups + 1, dtype=np.int64)
    for g in groups:
        start[g + 1] += 1
    for g in range(n_groups):
        start[g + 1] += start[g]
    fill = start[:-1].copy()
    k, o, p = np.empty(m, dtype=keys.dtype), np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64)
    for row in range(m):  # bucketed by group, each group's rows contiguous
        at = fill[groups[row]]
        fill[groups[row]] += 1
        k[at], o[at], p[at] = keys[row], ordinals[row], row
    out_start = np.zeros(n_groups + 1, dtype=np.int64)
    for g in range(n_groups):
        out_start[g + 1] = out_start[g] + min(n, start[g + 1] - start[g])
    out = np.empty(out_start[n_groups], dtype=np.int64)
    for g in range(n_groups):
        lo, kept = start[g], out_start[g + 1] - out_start[g]
        if start[g + 1] - lo > n:
            _select_first(k, o, p, lo, start[g + 1], n)
        if kept <= _SORT_IN_PLACE:
            _sort_rows(k, o, p, lo, lo + kept)
            for a in range(kept):
                out[out_start[g] + a] = p[lo + a]
            continue
        # the kept rows by key, then each run of equal keys by ordinal (rare among hashes)
        order = np.argsort(k[lo:lo + kept]) + lo
        i = 0
        while i < kept:
            j = i + 1
            while j < kept and k[order[j]] == k[order[i]]:
                j += 1
            for a in range(i + 1, j):  # insertion sort of the run by ordinal
                v, b = order[a], a - 1
                while b >= i and o[order[b]] > o[v]:
                    order[b + 1] = order[b]
                    b -= 1
                order[b + 1] = v
            i = j
        for a in range(kept):
            out[out_start[g] + a] = p[order[a]]
    return out


# Selection rather than heaps: from this many rows kept per group, or when there are at most
# ``ROWS_PER_SLOT`` rows per slot kept (most rows would enter a heap). Timings in the docstring.
SELECT_FROM = 128
ROWS_PER_SLOT = 4


@njit(cache=True, nogil=True)
def smallest_per_group_numba(keys, ordinals, groups, n, n_groups):  # pragma: no cover - compiled
    if n >= SELECT_FROM or len(keys) <= ROWS_PER_SLOT * n * n_groups:
        return _smallest_by_selection(keys, ordinals, groups, n, n_groups)
    return _smallest_by_heaps(keys, ordinals, groups, n, n_groups)


@njit(cache=True, nogil=True, boundscheck=False)
def before_cut_numba(keys, ordinals, groups, first, full, worst_key,
                     worst_ordinal):  # pragma: no cover - compiled
    """Positions of the rows that do not come after their group's worst kept row: the group
    ``g`` of a row is at ``g - first`` in the other arrays; a group that is not ``full`` (or out of
    their range) keeps every row. One pass, where numpy's test of 65536 rows made seven
    temporaries (2 ms a block on an H200's host, the largest host cost of a pass drawing a
    level's node samples)."""
    kept = np.empty(len(keys), dtype=np.int64)
    m = 0
    for i in range(len(keys)):
        g = groups[i] - first
        if 0 <= g < len(full) and full[g] and _before(worst_key[g], worst_ordinal[g], keys[i], ordinals[i]):
            continue
        kept[m] = i
        m += 1
    return kept[:m]


# -- a table of heaps kept across blocks (``partials.best_per_group``) --------------------------
# hk, ho, hp: (span * n,) key, ordinal and position columns; group g - first holds its heap in
# slots [(g - first) * n, (g - first) * n + size[g - first]). worst_k, worst_o: (span,) the top
# of every full heap, its worst kept row, in arrays of their own: most rows are turned away by
# that one comparison, and a group's top among the heaps' megabytes is a cache miss per row
# (0.4 ms a block of 65536 rows in 4096 heaps of 32, against 0.1 ms).


@njit(cache=True, nogil=True, boundscheck=False)
def push_rows_numba(hk, ho, hp, size, worst_k, worst_o, n, first, keys, ordinals, groups,
                    next_position):  # pragma: no cover - compiled
    """Offer every row to its group's heap; the rows that entered, in order: the ``j``-th of
    them is held at position ``next_position + j`` (rows that entered and were pushed out again
    by a later row are among them). Groups must lie in ``[first, first + len(size))``."""
    entered = np.empty(len(keys) if n else 0, dtype=np.int64)
    m = 0
    for row in range(len(entered)):
        g = groups[row] - first
        key, ordinal = keys[row], ordinals[row]
        if size[g] == n and not _before(key, ordinal, worst_k[g], worst_o[g]):
            continue
        base = g * n
        _push(hk, ho, hp, base, n, size[g], key, ordinal, next_position + m)
        if size[g] < n:
            size[g] += 1
        if size[g] == n:
            worst_k[g], worst_o[g] = hk[base], ho[base]
        entered[m] = row
        m += 1
    return entered[:m]


@njit(cache=True, nogil=True, boundscheck=False)
def table_order_numba(hk, ho, hp, size, n):  # pragma: no cover - compiled
    """The positions the heaps hold, by group, then (key, ordinal); the table is left as it is."""
    hk, ho, hp = hk.copy(), ho.copy(), hp.copy()
    out = np.empty(size.sum(), dtype=np.int64)
    m = 0
    for g in range(len(size)):
        _heapsort(hk, ho, hp, g * n, size[g])
        out[m:m + size[g]] = hp[g * n:g * n + size[g]]
        m += size[g]
    return out
