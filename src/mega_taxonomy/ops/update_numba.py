"""Compiled CPU kernel (numba) of ``cluster_stats``: per-cluster float64 sums of rows, counts and
sums of one value per row.

# Inputs:
#   x        : (n, d)   float32 / float64, C-contiguous
#   labels   : (n,)     int64 cluster of every row in [0, k); below 0: no part
#   values   : (n,)     float32 / float64, one number per row (its distance)
# Outputs (added to, for the clusters ``j`` with ``j * n_parts // k == part``):
#   sums     : (k, d)   float64
#   counts   : (k,)     int64
#   value_sums : (k,)   float64

Every cluster's rows are added one by one in row order, in float64, by exactly one thread: the
threads share the clusters out in contiguous ranges (interleaved clusters would put neighbouring
counts of two threads in one cache line: twice slower than one thread), each reads every label
and adds only the rows of its own clusters. A cluster's sum is then the same sequential float64 sum
whatever the number of threads, with no partial per thread to allocate and add up (a level of
4096 children has 2 MiB of sums per block).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False)
def _stats_part(x, labels, values, part, n_parts, sums, counts, value_sums):  # pragma: no cover - compiled
    n_clusters = sums.shape[0]
    for r in range(x.shape[0]):
        j = labels[r]
        if j < 0 or j * n_parts // n_clusters != part:
            continue
        counts[j] += 1
        value_sums[j] += np.float64(values[r])
        for col in range(x.shape[1]):
            sums[j, col] += np.float64(x[r, col])


def cluster_stats_numba(x: np.ndarray, labels: np.ndarray, values: np.ndarray, k: int):
    """``(sums, counts, value_sums)`` as numpy arrays, in this process's CPU threads."""
    from .assign import cpu_thread_count, parallel_map

    x, values = np.ascontiguousarray(x), np.ascontiguousarray(values)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    value_sums = np.zeros(k, dtype=np.float64)
    n_parts = min(cpu_thread_count(), k)
    parallel_map(lambda part: _stats_part(x, labels, values, part, n_parts, sums, counts, value_sums),
                 range(n_parts))
    return sums, counts, value_sums
