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

import math

import numpy as np
import torch
from numba import njit

from ...threads import parallel_map
from ..common import add_row, add_tiles, check, compute_dtype, normalize_rows, tile_partials, tile_starts

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
def _nearest_child_rows(x, groups, c, offsets, cosine, r0, r1, best, label,
                        prev, lower, drift, prev_best, frozen, bound, sums, counts,
                        value_sums):  # pragma: no cover - compiled
    """Rows r0:r1. With bounds (``prev`` not empty, euclidean only): a row whose distance to its
    previous child is below its lower bound on the others, ``lower[r] - drift[g]``, keeps that
    child without the others being computed (Hamerly's test); ``bound`` gets every row's new
    lower bound (the second-nearest distance where all children were computed). A row of a
    ``frozen`` group (whose children are the bits of the previous pass's) gets the previous
    pass's label, distance ``prev_best`` and bound without its vector being read, and is not
    summed. With ``sums`` (not empty), every other row is then added to its child's sums as
    ``cluster_stats`` would (the fused Lloyd step: the rows are read once)."""
    bounded, track, stats = prev.shape[0] > 0, bound.shape[0] > 0, sums.shape[0] > 0
    freezing = frozen.shape[0] > 0
    for r in range(r0, r1):
        g = groups[r] if groups.shape[0] else 0
        if freezing and frozen[g]:
            best[r], label[r] = prev_best[r], prev[r]
            if track:
                bound[r] = lower[r]
            continue
        lo, hi = offsets[g], offsets[g + 1]
        if bounded and prev[r] >= 0:
            # the four of the full loop that holds child a: the same compiled sums, the same bits
            a = prev[r]
            j = lo + (a - lo) // 4 * 4
            s = _four_distances(x, r, c, j, min(j + 1, hi - 1), min(j + 2, hi - 1), min(j + 3, hi - 1), cosine)[a - j]
            room = lower[r] - drift[g]
            if room > 0 and math.sqrt(s) * _BOUND_SLACK < room:
                best[r], label[r] = s, a
                if track:
                    bound[r] = room
                if stats:
                    add_row(x, r, a, s, sums, counts, value_sums)
                continue
        bd, sd, bi = np.inf, np.inf, -1
        # Children four at a time; a last, partial four repeats the last child (a repeat ties, and
        # ties keep the first), so that every child's distance comes from the same compiled loop.
        for j in range(lo, hi, 4):
            j1, j2, j3 = min(j + 1, hi - 1), min(j + 2, hi - 1), min(j + 3, hi - 1)
            four = _four_distances(x, r, c, j, j1, j2, j3, cosine)
            for t in range(min(4, hi - j)):  # the repeats are left out: they are not second
                s = four[t]
                if (j == lo and t == 0) or s < bd:
                    sd, bd, bi = bd, s, j + t
                elif s < sd:
                    sd = s
        best[r], label[r] = bd, bi
        if track:
            bound[r] = math.sqrt(sd)
        if stats and bi >= 0:
            add_row(x, r, bi, bd, sums, counts, value_sums)


# A kept child's distance must be below the bound by this factor: float32 distances carry a
# relative error of about d * 2**-24 (4e-6 at d = 64, 6e-5 at 1024), far below it.
_BOUND_SLACK = 1.001


# Rows per unit of work in the CPU threads (8 units for a block of 65536 rows). Rows are computed
# independently of each other, so the bits never depend on this.
_ROW_TILE = 8192

# Groups of at most this many children take this kernel; wider ones go through matrix products
# (grouped_assign/__init__.py). One core, 65536 x 64 rows, one child at a time (four at a time is 25%
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
    best, label, _ = _run(x, groups, centroids, offsets, metric)
    return best, label


def grouped_nearest_bounded(x: torch.Tensor, groups, centroids: torch.Tensor, offsets, bounds=None, track=True,
                            stats=False, frozen=None):
    """``grouped_nearest_numba`` (euclidean) that also returns every row's lower bound on its
    distance to the other children of its group, and skips rows by the bounds of the previous
    pass: ``bounds = (labels, lower, drift)`` with ``drift`` per group the largest distance any
    child moved since. Returns (distances, labels, lower): the distances and labels of a full
    computation (the test keeps a margin over float rounding, see ``_BOUND_SLACK``); ``lower`` is
    None unless ``track``. With ``stats``, a fourth item: ``cluster_stats`` of the rows (sums,
    counts, distance sums per child), the same bits, from the same read of the rows.

    ``frozen = (distances, groups)``, with ``bounds``: the previous pass's distance of every row,
    and per group whether none of its children moved since (``drift`` 0, the same bits). Those
    groups' rows then keep the previous pass's labels, distances and bounds without being read:
    the centroids they were computed from are the same, so a computation would give the same
    bits. They are left out of the stats (their clusters' sums are the previous pass's)."""
    return _run(x, groups, centroids, offsets, "euclidean", bounds, track, stats, frozen)


def _run(x, groups, centroids, offsets, metric, bounds=None, track=False, stats=False, frozen=None):
    check(x, centroids, metric)
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
    none_i, none_f = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    prev, lower, drift = none_i, none_f, none_f
    if bounds is not None:
        prev, lower, drift = (np.ascontiguousarray(a, dtype=t) for a, t in zip(bounds, (np.int64, np.float64, np.float64)))
        if len(prev) != n or len(lower) != n or len(drift) != len(off) - 1 or prev.max(initial=-1) >= len(cn):
            raise ValueError("bounds must hold a label (below the number of centroids) and a bound per row, "
                             "and a drift per group")
    prev_best, frozen_groups = np.zeros(0, dtype=xn.dtype), np.zeros(0, dtype=np.bool_)
    if frozen is not None:
        prev_best = np.ascontiguousarray(frozen[0], dtype=xn.dtype)
        frozen_groups = np.ascontiguousarray(frozen[1], dtype=np.bool_)
        if bounds is None or len(prev_best) != n or len(frozen_groups) != len(off) - 1:
            raise ValueError("frozen groups need bounds, a distance per row and a flag per group")
    best, label = np.empty(n, dtype=xn.dtype), np.empty(n, dtype=np.int64)
    bound = np.empty(n, dtype=np.float64) if track else none_f
    cosine = metric == "cosine"
    k = len(cn)
    starts = tile_starts(n, k) if stats else range(0, n, _ROW_TILE)  # the tiles of cluster_stats
    sums, counts, value_sums = tile_partials(len(starts), k if stats else 0, xn.shape[1])

    def tile(t):
        _nearest_child_rows(xn, g, cn, off, cosine, starts[t], min(starts[t] + starts.step, n), best, label,
                            prev, lower, drift, prev_best, frozen_groups, bound, sums[t], counts[t], value_sums[t])

    parallel_map(tile, range(len(starts)))
    out = torch.from_numpy(best), torch.from_numpy(label), (bound if track else None)
    return (*out, tuple(torch.from_numpy(a) for a in add_tiles(sums, counts, value_sums))) if stats else out
