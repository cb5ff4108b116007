"""Grouped k-means: the centroids of many groups side by side, as CSR offsets."""

from __future__ import annotations

import numpy as np


def group_of_centroid(offsets: np.ndarray | None, k: int) -> np.ndarray:
    """The group of each of ``k`` centroids (``offsets``: CSR children per group; None: one group)."""
    if offsets is None:
        return np.zeros(k, dtype=np.int64)
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
