"""Compiled CPU kernel (numba) of probe-and-rerank: the k nearest stored rows of every query among
the rows of the lists it probes.

# Inputs (one chunk of queries q0:q1 per call; chunks run in parallel threads):
#   q        : (n, d)        float32 / float64, C-contiguous (cosine: rows already normalized)
#   q_base   : (n,)          same dtype: |q|^2 (euclidean), 1 (cosine), 0 (inner product)
#   probes   : (n, p) int64  lists probed by every query, -1 for none
#   offsets  : (L + 1,) int64 CSR: the rows of list l are offsets[l]:offsets[l + 1]
#   vectors  : (N, d)        same dtype as q, C-contiguous, grouped by list
#   x_add    : (N,)          same dtype: |x|^2 (euclidean), 0 otherwise
#   x_scale  : (N,)          same dtype: -2 (euclidean), -1 (inner product), -1/|x| (cosine; 0 for x = 0)
#   ids      : (N,) int64    the user id of every stored row
#   floor    : scalar        0 for euclidean (distances through norms can round below 0), -inf else
#   dedup    : bool          skip a row whose id is already among the query's best (multi-assignment)
# Outputs (rows q0:q1):
#   out_d    : (n, k)        q_base + x_add + x_scale * q.x, ascending, inf padding
#   out_i    : (n, k) int64  ids, -1 padding; equal distances in ascending id
#
# The queries of a chunk are grouped by list (a counting sort of their probes), so that each
# probed list is read from memory once per chunk: every row of the list is multiplied with the
# group's queries four at a time (the row stays in registers), and each distance goes to its
# query's bounded max-heap of k (a push only when it beats the k-th best so far). No distance
# array is written. Products accumulate in the input dtype with reassociation allowed, so the sum
# over d vectorizes; a row's distance to a query does not depend on the chunk or thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FASTMATH = {"reassoc", "contract"}


@njit(inline="always")
def _sift_down(heap_d, heap_i, size, d, i):  # pragma: no cover - compiled
    """Put (d, i) at the root of the max-heap ``heap_d[:size]`` (ordered by (distance, id): the
    root is the worst kept) and sift it down to its place."""
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        other = child + 1
        if other < size and (heap_d[other] > heap_d[child]
                             or (heap_d[other] == heap_d[child] and heap_i[other] > heap_i[child])):
            child = other
        if heap_d[child] < d or (heap_d[child] == d and heap_i[child] < i):
            break
        heap_d[pos], heap_i[pos] = heap_d[child], heap_i[child]
        pos = child
    heap_d[pos], heap_i[pos] = d, i


@njit(inline="always")
def _push(heap_d, heap_i, r, k, dist, ident, dedup):  # pragma: no cover - compiled
    """Offer (dist, ident) to row ``r``'s max-heap of k (root: the worst kept). Ties in distance
    order by id, so that the result does not depend on the order lists are scanned in."""
    top_d, top_i = heap_d[r, 0], heap_i[r, 0]
    if dist > top_d or (dist == top_d and ident >= top_i):
        return
    if dedup:
        for s in range(k):
            if heap_i[r, s] == ident:
                return
    _sift_down(heap_d[r], heap_i[r], k, dist, ident)  # replaces the root


@njit(cache=True, nogil=True, boundscheck=False)
def _group_by_list(probes, offsets, first, q0, q1):  # pragma: no cover - compiled
    """Counting sort of the probes of queries q0:q1 by (pass, list): ``members[start[g]:start[g +
    1]]`` are the queries (less q0) of group g = list + pass * n_lists, where pass 0 holds each
    query's ``first`` leading probes and pass 1 the rest. Also the widest group and the longest
    probed list (the sizes of the scan's buffers)."""
    n_lists, nprobe = offsets.shape[0] - 1, probes.shape[1]
    start = np.zeros(2 * n_lists + 1, dtype=np.int64)
    for r in range(q0, q1):
        for s in range(nprobe):
            lst = probes[r, s]
            if lst >= 0:
                start[lst + (s >= first) * n_lists + 1] += 1
    for g in range(2 * n_lists):
        start[g + 1] += start[g]
    fill = start[:-1].copy()
    members = np.empty(start[2 * n_lists], dtype=np.int64)
    for r in range(q0, q1):
        for s in range(nprobe):
            lst = probes[r, s]
            if lst >= 0:
                g = lst + (s >= first) * n_lists
                members[fill[g]] = r - q0
                fill[g] += 1
    widest, longest = 1, 1
    for g in range(2 * n_lists):
        if start[g + 1] > start[g]:
            lst = g % n_lists
            widest = max(widest, start[g + 1] - start[g])
            longest = max(longest, offsets[lst + 1] - offsets[lst])
    return start, members, widest, longest


@njit(cache=True, nogil=True, boundscheck=False, fastmath=_FASTMATH)
def probe_chunk(q, q_base, probes, offsets, vectors, x_add, x_scale, ids, floor, dedup, first, q0, q1, out_d,
                out_i):  # pragma: no cover - compiled
    """Queries q0:q1 (see the module's contract). Each query's ``first`` leading probes (its
    nearest lists) are scanned in a first pass over the lists, the rest in a second: the heaps
    fill with good rows first, so that the second pass rejects most rows by the k-th best."""
    n_lists, d, k = offsets.shape[0] - 1, q.shape[1], out_d.shape[1]
    start, members, widest, longest = _group_by_list(probes, offsets, first, q0, q1)
    heap_d = np.full((q1 - q0, k), np.inf, dtype=out_d.dtype)
    heap_i = np.full((q1 - q0, k), np.iinfo(np.int64).max, dtype=np.int64)
    group = np.empty((widest, d), dtype=q.dtype)  # the list's queries, side by side
    dots = np.empty(longest * widest, dtype=q.dtype)
    for g in range(2 * n_lists):
        m0, m1 = start[g], start[g + 1]
        lo, hi = offsets[g % n_lists], offsets[g % n_lists + 1]
        b = m1 - m0
        if b == 0 or hi == lo:
            continue
        for a in range(b):
            r = q0 + members[m0 + a]
            for t in range(d):
                group[a, t] = q[r, t]
        # one BLAS product per probed list and pass: (its queries, d) x (d, rows)
        prod = dots[:(hi - lo) * b].reshape((b, hi - lo))
        np.dot(group[:b], vectors[lo:hi].T, prod)
        for a in range(b):
            r = members[m0 + a]
            qb = q_base[q0 + r]
            top = heap_d[r, 0]  # the k-th best so far: most rows are rejected by this one test
            for j in range(hi - lo):
                dist = qb + x_add[lo + j] + x_scale[lo + j] * prod[a, j]
                if dist <= top:
                    _push(heap_d, heap_i, r, k, max(dist, floor), ids[lo + j], dedup)
                    top = heap_d[r, 0]
    _sorted_out(heap_d, heap_i, q0, out_d, out_i)


@njit(cache=True, nogil=True, boundscheck=False)
def _sorted_out(heap_d, heap_i, q0, out_d, out_i):  # pragma: no cover - compiled
    """Each query's heap popped in place (the worst first, written from the back): ascending
    (distance, id); unfilled slots as inf / -1. No sort: k log k per query (k = a beam of 128
    in the taxonomy's walk made two argsorts a query cost a fifth of the walk)."""
    nq, k = heap_d.shape
    sentinel = np.iinfo(np.int64).max
    for r in range(nq):
        for s in range(k - 1, -1, -1):
            top_d, top_i = heap_d[r, 0], heap_i[r, 0]
            if top_i == sentinel:
                out_d[q0 + r, s], out_i[q0 + r, s] = np.inf, -1
            else:
                out_d[q0 + r, s], out_i[q0 + r, s] = top_d, top_i
            _sift_down(heap_d[r], heap_i[r], s, heap_d[r, s], heap_i[r, s])


@njit(cache=True, nogil=True, boundscheck=False)
def smallest_rows(scores, m, r0, r1, out_v, out_i):  # pragma: no cover - compiled
    """Rows r0:r1 of ``scores`` (n, L): the ``m`` smallest values, ascending, ties to the lower
    column, into ``out_v`` / ``out_i`` (n, m). One pass per row with a max-heap of m (the coarse
    quantizer's probes: m = nprobe lists out of nlist)."""
    n_cols = scores.shape[1]
    heap_v = np.empty(m, dtype=scores.dtype)
    heap_i = np.empty(m, dtype=np.int64)
    for r in range(r0, r1):
        heap_v[:] = np.inf
        heap_i[:] = np.iinfo(np.int64).max
        top = heap_v[0]
        for c in range(n_cols):
            v = scores[r, c]
            if v < top:  # equal values keep the earlier (lower) column
                _sift_down(heap_v, heap_i, m, v, c)
                top = heap_v[0]
        # pop the heap: largest first, written from the back
        for s in range(m - 1, -1, -1):
            out_v[r, s], out_i[r, s] = heap_v[0], heap_i[0]
            _sift_down(heap_v, heap_i, s, heap_v[s], heap_i[s])


@njit(cache=True, nogil=True, boundscheck=False)
def merge_rows(a_d, a_i, b_d, b_i, out_d, out_i):  # pragma: no cover - compiled
    """Row by row, the first ``out_d.shape[1]`` of the merge of two ascending rows (a's and b's),
    an equal value taking a's entry first; entries labelled -1 are skipped; (inf, -1) padding."""
    n, m = out_d.shape
    wa, wb = a_d.shape[1], b_d.shape[1]
    for r in range(n):
        i = j = 0
        for s in range(m):
            while i < wa and a_i[r, i] < 0:
                i += 1
            while j < wb and b_i[r, j] < 0:
                j += 1
            if i < wa and (j >= wb or a_d[r, i] <= b_d[r, j]):
                out_d[r, s], out_i[r, s] = a_d[r, i], a_i[r, i]
                i += 1
            elif j < wb:
                out_d[r, s], out_i[r, s] = b_d[r, j], b_i[r, j]
                j += 1
            else:
                out_d[r, s], out_i[r, s] = np.inf, -1
