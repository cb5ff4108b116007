"""Cluster size balance: how uneven a partition is, and two ways to even it out (splitting and
merging nodes, or size penalties on the assignment)."""

from __future__ import annotations

import numpy as np
import torch

from ..ops import normalize_rows
from ..sizes import imbalance  # re-exported: how uneven a partition is

__all__ = ["imbalance", "size_penalty", "split_and_merge", "with_penalty"]


def split_and_merge(centroids: np.ndarray, counts: np.ndarray, inertia: np.ndarray, offsets: np.ndarray | None,
                    *, factor: float, merge: float, rng: np.random.Generator):
    """One balancing step of a level (or a flat k-means, ``offsets=None``).

    Nodes with more than ``factor`` times the mean size of the level are split into
    ``ceil(size / mean)`` nodes: copies of the centroid moved by half the node's spread in random
    directions, which the next Lloyd passes pull apart. Nodes with less than ``merge`` times the
    mean are removed (their rows go to the nearest sibling in the next pass), unless that would
    leave their parent without children.

    Returns
    -------
    (centroids, offsets, changed) : the new centroids grouped by parent, their CSR offsets
    (None when ``offsets`` was None) and whether anything changed.
    """
    k = len(centroids)
    offsets = np.array([0, k]) if offsets is None else np.asarray(offsets)
    counts = np.asarray(counts, dtype=np.float64)
    mean = counts.sum() / max(k, 1)
    out, sizes, changed = [], [], False
    for g in range(len(offsets) - 1):
        lo, hi = int(offsets[g]), int(offsets[g + 1])
        keep = [j for j in range(lo, hi) if counts[j] >= merge * mean]
        if not keep and hi > lo:
            keep = [lo + int(np.argmax(counts[lo:hi]))]
        changed |= len(keep) != hi - lo
        group = []
        for j in keep:
            pieces = int(np.ceil(counts[j] / mean)) if counts[j] > factor * mean else 1
            group.append(centroids[j])
            if pieces > 1:
                changed = True
                spread = np.sqrt(inertia[j] / max(counts[j], 1) / centroids.shape[1])
                direction = rng.normal(size=(pieces - 1, centroids.shape[1]))
                group.extend(centroids[j] + 0.5 * spread * direction)
        out.extend(group)
        sizes.append(len(group))
    new_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    new = np.asarray(out, dtype=centroids.dtype).reshape(-1, centroids.shape[1])
    return new, new_offsets, changed


def size_penalty(counts: np.ndarray, inertia: np.ndarray, offsets: np.ndarray | None,
                 previous: np.ndarray | None = None, strength: float = 0.5) -> np.ndarray:
    """The next pass's per-centroid assignment costs (float64), for ``balance="penalty"``.

    Lloyd's passes then minimize ``sum of distances + strength * s * sum_j n_j log n_j`` within
    each group of siblings (``s``: the group's mean row distance, ``n_j``: cluster sizes): the
    assignment's cost of cluster j is the marginal ``strength * s * log(n_j)``, from the last
    pass's sizes, centred per group (only siblings trade rows), averaged with the previous cost
    to damp oscillations. A cluster twice the mean size costs each row ``0.35 s`` more at the
    default strength; strengths of 1 and more made clusters capture their neighbours (measured on
    Zipf mixtures), so keep it below 1.

    Examples
    --------
    >>> p = size_penalty(np.array([300, 100, 100]), np.array([300.0, 100.0, 100.0]), None)
    >>> bool(p[0] > 0 > p[1])
    True
    """
    counts = np.asarray(counts, dtype=np.float64)
    k = len(counts)
    offsets = np.array([0, k]) if offsets is None else np.asarray(offsets)
    target = np.zeros(k)
    for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        rows = counts[lo:hi].sum()
        if hi - lo < 2 or rows == 0:
            continue
        step = float(np.sum(inertia[lo:hi])) / rows * np.log(counts[lo:hi] + 1)
        target[lo:hi] = strength * (step - step.mean())
    previous = np.zeros(k) if previous is None else np.asarray(previous, dtype=np.float64)
    return 0.5 * (previous + target)


def with_penalty(assign, x: torch.Tensor, c: torch.Tensor, penalty: np.ndarray | None, metric: str):
    """``assign(x, c, metric) -> (distances, indices)`` choosing the centroid of least ``distance +
    penalty[centroid]`` (the plain assignment when ``penalty`` is None); distances stay the true ones.

    The penalty rides on one more coordinate, 0 for rows and ``sqrt(penalty)`` for centroids
    (penalties shifted to be >= 0, which changes no argmin), so every assignment op serves as it
    is (squared L2 of normalized rows is twice the cosine distance).
    """
    if penalty is None:
        return assign(x, c, metric)
    p = torch.as_tensor(penalty - penalty.min(initial=0.0), dtype=torch.float64, device=c.device)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa, ca, scale = x.to(dtype), c.to(dtype), 1.0
    if metric == "cosine":
        xa, ca, scale = normalize_rows(xa), normalize_rows(ca), 2.0
    xa = torch.cat([xa, xa.new_zeros(xa.shape[0], 1)], 1)
    ca = torch.cat([ca, (scale * p).sqrt().to(dtype)[:, None]], 1)
    dist, index = assign(xa, ca, "euclidean")
    dist = dist / scale - p.to(dist.dtype)[index.clamp_min(0)]
    return dist.clamp_min_(0.0), index
