"""Compiled CPU kd-tree construction (numba): splits, subtrees and bounding boxes.

# Inputs:
#   pts   : (d, n) float64, C order (structure of arrays: one row per dimension), permuted in place
#   perm  : (n,) int64, the original row of each column, permuted with pts
# Tree (arrays indexed by node id; children always have larger ids than their parent):
#   start, end : (m,) int64, the node's columns [start, end)
#   left, right: (m,) int64, child ids, -1 at a leaf
#   lo, hi     : (m, d) float64, the tight bounding box of the node's points

A node is split on the dimension of highest variance (estimated from a strided sample of at
most ``SAMPLE`` points) at the median of a strided sample of at most ``SAMPLE`` values of that
dimension, by one partition pass (PANDA's sampled median). A sample's median lands within a few
percent of the true one, which is all a search tree needs; when it does not (heavy duplicates,
adversarial order) and one side would hold under a quarter of the points, the node falls back to
an exact quickselect. Leaves hold at most ``leafsize`` points, contiguous in ``pts``, so a leaf
scan reads ``d`` short runs of memory and vectorises.

The query side never reads split values: it orders and prunes children by the distance to their
bounding box, which bounds every point below them (tight boxes prune more than split planes).
"""

from __future__ import annotations

import numpy as np
from numba import njit

SAMPLE = 256


@njit(nogil=True, cache=True)
def _swap(pts, perm, i, j):  # pragma: no cover - compiled
    for a in range(pts.shape[0]):
        t = pts[a, i]
        pts[a, i] = pts[a, j]
        pts[a, j] = t
    t2 = perm[i]
    perm[i] = perm[j]
    perm[j] = t2


@njit(nogil=True, cache=True)
def _widest(pts, start, end):  # pragma: no cover - compiled
    """The dimension of highest variance among a strided sample of the node's points."""
    n = end - start
    step = max(1, n // SAMPLE)
    best, best_var = 0, -1.0
    for a in range(pts.shape[0]):
        s = 0.0
        s2 = 0.0
        c = 0
        for i in range(start, end, step):
            v = pts[a, i]
            s += v
            s2 += v * v
            c += 1
        mean = s / c
        var = s2 / c - mean * mean
        if var > best_var:
            best, best_var = a, var
    return best


@njit(nogil=True, cache=True)
def _partition(pts, perm, dim, start, end, pivot):  # pragma: no cover - compiled
    """Move the columns whose value on ``dim`` is below ``pivot`` to the front; their count.
    (Hoare's scheme: 1M x 3 columns in 9 ms; a branch-free Lomuto, swapping every column, 22 ms.)"""
    i, j = start, end - 1
    while True:
        while i <= j and pts[dim, i] < pivot:
            i += 1
        while i <= j and pts[dim, j] >= pivot:
            j -= 1
        if i >= j:
            return i
        _swap(pts, perm, i, j)


@njit(nogil=True, cache=True)
def _select(pts, perm, dim, start, end, nth):  # pragma: no cover - compiled
    """Exact quickselect: the column of rank ``nth`` on ``dim`` at ``nth``, smaller values before it,
    larger or equal after (three-way partitions, so duplicates cannot make it quadratic)."""
    lo, hi = start, end
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        a, b, c = pts[dim, lo], pts[dim, mid], pts[dim, hi - 1]
        pivot = max(min(a, b), min(max(a, b), c))  # median of three
        lt, i, gt = lo, lo, hi
        while i < gt:
            v = pts[dim, i]
            if v < pivot:
                _swap(pts, perm, lt, i)
                lt += 1
                i += 1
            elif v > pivot:
                gt -= 1
                _swap(pts, perm, i, gt)
            else:
                i += 1
        if nth < lt:
            hi = lt
        elif nth >= gt:
            lo = gt
        else:
            return


@njit(nogil=True, cache=True)
def split_node(pts, perm, start, end):  # pragma: no cover - compiled
    """Split the columns [start, end) in place: (the first column of the upper half, the split
    dimension, the split value: no lower column is above it, no upper column below it)."""
    n = end - start
    dim = _widest(pts, start, end)
    # small nodes take a smaller sample: sorting 256 values at each of the ~n / 16 small nodes
    # cost more than all the partitions (1M points: 0.2 of a 0.35 s build)
    step = max(1, n // (SAMPLE if n > 16 * SAMPLE else SAMPLE // 8))
    sample = np.sort(pts[dim, start:end:step])
    value = sample[len(sample) // 2]
    mid = _partition(pts, perm, dim, start, end, value)
    if 4 * (mid - start) < n or 4 * (end - mid) < n:
        mid = start + n // 2
        _select(pts, perm, dim, start, end, mid)
        value = pts[dim, mid]
    return mid, dim, value


@njit(nogil=True, cache=True)
def build_subtree(pts, perm, start, end, leafsize):  # pragma: no cover - compiled
    """The tree over columns [start, end), depth first, its root node 0:
    (starts, ends, lefts, rights, split dimensions, split values)."""
    cap = 2 * ((end - start) // max(1, leafsize // 4) + 1) + 1
    starts = np.empty(cap, np.int64)
    ends = np.empty(cap, np.int64)
    lefts = np.full(cap, -1, np.int64)
    rights = np.full(cap, -1, np.int64)
    dims = np.zeros(cap, np.int64)
    splits = np.zeros(cap)
    stack = np.empty(256, np.int64)
    starts[0], ends[0] = start, end
    count, sp = 1, 1
    stack[0] = 0
    while sp > 0:
        sp -= 1
        node = stack[sp]
        s, e = starts[node], ends[node]
        if e - s <= leafsize:
            continue
        mid, dims[node], splits[node] = split_node(pts, perm, s, e)
        for child_start, child_end in ((s, mid), (mid, e)):
            starts[count], ends[count] = child_start, child_end
            count += 1
        lefts[node], rights[node] = count - 2, count - 1
        stack[sp] = count - 1  # the left child on top: leaves come out in column order
        stack[sp + 1] = count - 2
        sp += 2
    return starts[:count], ends[:count], lefts[:count], rights[:count], dims[:count], splits[:count]


@njit(nogil=True, cache=True)
def bounding_boxes(pts, starts, ends, lefts, rights):  # pragma: no cover - compiled
    """Tight boxes of every node: leaves from their points, inner nodes from their children
    (children have larger ids, so one pass in reverse id order)."""
    d, m = pts.shape[0], len(starts)
    lo = np.empty((m, d))
    hi = np.empty((m, d))
    for node in range(m - 1, -1, -1):
        left, right = lefts[node], rights[node]
        for a in range(d):
            if left >= 0:
                lo[node, a] = min(lo[left, a], lo[right, a])
                hi[node, a] = max(hi[left, a], hi[right, a])
            else:
                low, high = np.inf, -np.inf
                for i in range(starts[node], ends[node]):
                    v = pts[a, i]
                    low = min(low, v)
                    high = max(high, v)
                lo[node, a], hi[node, a] = low, high
    return lo, hi
