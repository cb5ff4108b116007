"""Groups of rows and of centroids: CSR offsets, the group of every centroid, ranks in a group.

A taxonomy level keeps the children of all its parents side by side: the children of group
``g`` are ``offsets[g]:offsets[g + 1]`` (CSR). The selections of this layer, the passes of
``cluster/`` and the walks of ``taxonomy/`` share these few conversions.
"""

from __future__ import annotations

import numpy as np


def offsets_of(n_children: np.ndarray) -> np.ndarray:
    """CSR offsets (int64, ``len(n_children) + 1``) of groups of ``n_children`` each."""
    return np.concatenate([[0], np.cumsum(n_children)]).astype(np.int64)


def group_of_centroid(offsets: np.ndarray | None, k: int) -> np.ndarray:
    """The group of each of ``k`` centroids laid out by ``offsets`` (all 0 without offsets: one group)."""
    if offsets is None:
        return np.zeros(k, dtype=np.int64)
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def rank_in_group(sorted_groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an already sorted array."""
    n = len(sorted_groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    return np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
