"""Hamerly's bounds for Lloyd passes on the CPU: rows that provably keep their child are not compared again.

Every row keeps, from one pass to the next, its label and a lower bound on its distance to the
other children of its group. A row whose distance to its child stays below that bound (less the
farthest any child of its group moved) keeps its child without the others being computed, and a
group none of whose children moved is not computed at all (its statistics are the last pass's).
Labels, distances and sums are those of full passes: the bits do not change
(``tests/cluster/test_bounds.py``).
"""

from __future__ import annotations

import numpy as np

from ..ops.grouped_assign import MAX_CHILDREN
from ..partials import group_of_centroid
from ..runtime import passes_here_on_cpu

# Per-row bounds cost 20 bytes a row (a label, a float64 bound and a float32 distance): kept up
# to this many bytes.
_BOUNDS_BYTES = 1 << 30


def use_bounds(runtime, n_rows: int, k: int, offsets, metric: str, penalized: bool) -> bool:
    """Whether passes keep Hamerly's bounds: every row's label and a lower bound on its distance
    to the other children of its group, from one pass to the next. A row whose distance to its
    child stays below that bound (less the farthest any child of its group moved) keeps its
    child without the others being computed; labels and distances are those of full passes, so
    the bits do not change. For the compiled CPU kernel (euclidean, groups of at most
    ``MAX_CHILDREN``, no size penalties) in this process, within ``_BOUNDS_BYTES``."""
    if not passes_here_on_cpu(runtime) or metric != "euclidean" or penalized:
        return False
    widest = k if offsets is None else int(np.diff(offsets).max(initial=0))
    return widest <= MAX_CHILDREN and 20 * n_rows <= _BOUNDS_BYTES


def group_drift(new: np.ndarray, old: np.ndarray, offsets) -> np.ndarray:
    """Per group, the farthest (L2) any of its centroids moved from ``old`` to ``new``."""
    shift = np.sqrt(((np.asarray(new, dtype=np.float64) - old) ** 2).sum(1))
    group_of = group_of_centroid(offsets, len(shift))
    drift = np.zeros(1 if offsets is None else len(offsets) - 1)
    np.maximum.at(drift, group_of, shift)
    return drift


def reuse_frozen(partial, before, frozen: np.ndarray, offsets) -> None:
    """Fill in the statistics that a pass left out: the clusters of its ``frozen`` groups, taken
    from the pass ``before``. No child of those groups moved between the two passes, so their
    rows have the same labels and distances, and a cluster's sums hold only its own group's rows,
    added in the same order: these are the bits the pass would have computed. A group stays
    frozen until the level ends (its centroids come out of these same sums), so that, with
    ``tol=0``, a level's passes compute only the rows of the nodes still moving."""
    clusters = frozen[group_of_centroid(offsets, len(partial.counts))]
    partial.counts[clusters] = before.counts[clusters]
    partial.inertia[clusters] = before.inertia[clusters]
    if partial.sums is not None:
        partial.sums[clusters] = before.sums[clusters]


def rows_per_group(source, groups, n_groups: int) -> np.ndarray:
    """Rows of every group (``groups``: block index -> group of each row; None: one group)."""
    if groups is None:
        return np.array([len(source)])
    return sum(np.bincount(np.asarray(g), minlength=n_groups) for g in groups.values())


def rows_computed(group_rows: np.ndarray | None, frozen: np.ndarray | None) -> int:
    """Rows that a pass read (those outside frozen groups), for the logs; -1 when not counted."""
    if group_rows is None:
        return -1
    return int(group_rows.sum() if frozen is None else group_rows[~frozen].sum())
