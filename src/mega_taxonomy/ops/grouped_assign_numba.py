"""Compiled CPU kernel (numba) of grouped nearest assignment for narrow groups.

# Inputs:
#   x        : (n, d)          float32 / float64, C-contiguous (cosine: rows already normalized)
#   groups   : (n,) int64      group of every row; an empty array: every row is in group 0
#   c        : (K, d)          same dtype as x, C-contiguous (cosine: rows already normalized)
#   offsets  : (n_groups + 1,) int64 CSR: the children of group g are c[offsets[g]:offsets[g + 1]]
# Outputs (written for rows r0:r1):
#   best     : (n,)            distance to the nearest child (inf where the group has none)
#   label    : (n,) int64      its global index (-1 where the group has none)

One loop per row over its own group's children, four at a time, with the distance of each
child computed directly (squared differences, or ``1 - x.c`` for cosine) and the argmin carried
along: no distance tile is written, no rows are sorted or gathered by group. Where a group has a
few children (a taxonomy's 16 per node) that is faster than matrix products, whose fixed costs
(tiles, gathers, scans) exceed the arithmetic: 65536 x 64 rows against groups of 16 children,
4.3 ms on one core against 7.5 ms for the numpy product + argmin of the same shape (one group)
and 19 ms for the batched products of 256 groups.

Distances are accumulated in the input's dtype with reassociation allowed (``fastmath`` reassoc
and contract), so that the sum over ``d`` vectorizes: every row runs the same compiled loop, so
a row's bits depend on its values only (not on the tile or thread that computes it), on a given
CPU instruction set. Ties go to the lowest child index (strictly smaller distances win).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

# Reassociation (the vectorized sum over d) and contraction (fused multiply-add); never
# "nnan"/"ninf": the comparisons must stay IEEE.
_FASTMATH = {"reassoc", "contract"}


@njit(inline="always")
def _four_distances(x, r, c, j0, j1, j2, j3, cosine):  # pragma: no cover - compiled
    """Distances of row ``r`` to children j0..j3: one loop over ``d`` reads the row once for four
    children (25% faster than one child at a time at d = 64 and 128)."""
    s0 = s1 = s2 = s3 = x[r, 0] - x[r, 0]  # zeros in the compute dtype
    if cosine:
        for k in range(x.shape[1]):
            xk = x[r, k]
            s0 += xk * c[j0, k]
            s1 += xk * c[j1, k]
            s2 += xk * c[j2, k]
            s3 += xk * c[j3, k]
        return max(1 - s0, 0), max(1 - s1, 0), max(1 - s2, 0), max(1 - s3, 0)
    for k in range(x.shape[1]):
        xk = x[r, k]
        t0, t1, t2, t3 = xk - c[j0, k], xk - c[j1, k], xk - c[j2, k], xk - c[j3, k]
        s0 += t0 * t0
        s1 += t1 * t1
        s2 += t2 * t2
        s3 += t3 * t3
    return s0, s1, s2, s3


@njit(cache=True, nogil=True, boundscheck=False, fastmath=_FASTMATH)
def _nearest_child_rows(x, groups, c, offsets, cosine, r0, r1, best, label):  # pragma: no cover - compiled
    for r in range(r0, r1):
        g = groups[r] if groups.shape[0] else 0
        lo, hi = offsets[g], offsets[g + 1]
        bd, bi = np.inf, -1
        # Children four at a time; a last, partial four repeats the last child (a repeat ties, and
        # ties keep the first), so that every child's distance comes from the same compiled loop.
        for j in range(lo, hi, 4):
            j1, j2, j3 = min(j + 1, hi - 1), min(j + 2, hi - 1), min(j + 3, hi - 1)
            s0, s1, s2, s3 = _four_distances(x, r, c, j, j1, j2, j3, cosine)
            if j == lo or s0 < bd:
                bd, bi = s0, j
            if s1 < bd:
                bd, bi = s1, j1
            if s2 < bd:
                bd, bi = s2, j2
            if s3 < bd:
                bd, bi = s3, j3
        best[r], label[r] = bd, bi


# Rows per unit of work in the CPU threads (8 units for a block of 65536 rows). Rows are computed
# independently of each other, so the bits never depend on this.
_ROW_TILE = 8192

# Groups of at most this many children take this kernel; wider ones go through matrix products
# (grouped_assign.py). One core, 65536 x 64 rows, one child at a time (four at a time is 25%
# faster): 16 children 5.5 ms against 7.5 (flat) and 19 (256 groups) for the products; 32
# children 10 ms against 9 (flat) and 18-40 (groups); at 64 children the products win.
MAX_CHILDREN = 32


def narrow(offsets) -> bool:
    """Whether the groups of ``offsets`` are narrow enough for this kernel."""
    offsets = np.asarray(offsets)
    return len(offsets) > 1 and int(np.diff(offsets).max()) <= MAX_CHILDREN


def grouped_nearest_numba(x: torch.Tensor, groups, centroids: torch.Tensor, offsets, metric: str):
    """``grouped_nearest`` on the CPU through the kernel, in this process's CPU threads (``groups``
    None: every row in group 0, i.e. ``nearest``); numpy ``groups`` / ``offsets``."""
    from .assign import _check, compute_dtype, normalize_rows, parallel_map

    _check(x, centroids, metric)
    dtype = compute_dtype(x.dtype)
    x, c = x.detach().to(dtype), centroids.detach().to(dtype)
    if metric == "cosine":
        x, c = normalize_rows(x), normalize_rows(c)
    xn, cn = np.ascontiguousarray(x.numpy()), np.ascontiguousarray(c.numpy())
    g = np.zeros(0, dtype=np.int64) if groups is None else np.ascontiguousarray(groups, dtype=np.int64)
    off = np.ascontiguousarray(offsets, dtype=np.int64)
    # The kernel does not check its indices (it would not vectorize): check them here, once.
    if len(off) < 2 or off[0] < 0 or off[-1] > len(cn) or (np.diff(off) < 0).any():
        raise ValueError(f"offsets must ascend within [0, {len(cn)}] (the centroids), got {off[0]}..{off[-1]}")
    if len(g) and (g.min() < 0 or g.max() >= len(off) - 1):
        raise IndexError(f"groups must be within [0, {len(off) - 1}), got {g.min()}..{g.max()}")
    n = xn.shape[0]
    best, label = np.empty(n, dtype=xn.dtype), np.empty(n, dtype=np.int64)
    cosine = metric == "cosine"

    def tile(r0):
        _nearest_child_rows(xn, g, cn, off, cosine, r0, min(r0 + _ROW_TILE, n), best, label)

    parallel_map(tile, range(0, n, _ROW_TILE))
    return torch.from_numpy(best), torch.from_numpy(label)
