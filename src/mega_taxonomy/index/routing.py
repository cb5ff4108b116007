"""PANDA's global kd-tree: which worker owns which region of space, and which workers a query
must visit.

The tree has one leaf per worker (log2(P) levels when P is a power of two). A node holding ``w``
workers is split on the dimension of highest variance of its sample at the quantile
``floor(w / 2) / w``, so that each side gets points in proportion to its workers. The split value
is first taken from a sample (PANDA: 256 points per worker) and accepted when the node's points
fall within ``tolerance`` (1%) of that proportion; otherwise it is refined to the exact quantile
of the node's points.
"""

from __future__ import annotations

import numpy as np

SAMPLE_PER_WORKER = 256
TOLERANCE = 0.01


class GlobalTree:
    """The split planes over ``n_workers`` regions (arrays indexed by node; leaves carry a worker).

    Examples
    --------
    >>> import numpy as np
    >>> points = np.random.default_rng(0).random((10_000, 2))
    >>> tree = GlobalTree.fit(points, n_workers=4)
    >>> counts = np.bincount(tree.owner(points), minlength=4)
    >>> counts.sum(), bool(counts.max() < 1.03 * counts.mean())  # each split within 1% of its share
    (np.int64(10000), True)
    """

    def __init__(self, dims, splits, lefts, rights, workers, n_workers, refined=0):
        self.dims, self.splits = np.asarray(dims, np.int64), np.asarray(splits, np.float64)
        self.lefts, self.rights = np.asarray(lefts, np.int64), np.asarray(rights, np.int64)
        self.workers, self.n_workers = np.asarray(workers, np.int64), n_workers
        self.refined = refined  # splits whose sampled candidate was refined

    @classmethod
    def fit(cls, points, n_workers, sample_per_worker=SAMPLE_PER_WORKER, tolerance=TOLERANCE):
        """Split ``points`` ((n, d)) into ``n_workers`` regions of about equal counts."""
        points = np.asarray(points, np.float64)
        n = len(points)
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, not {n_workers}")
        # a strided sample: fixed by the row ordinals, not by how the data was cut or read
        sample = np.arange(0, n, max(1, n // (sample_per_worker * n_workers)))
        nodes = {"dims": [], "splits": [], "lefts": [], "rights": [], "workers": []}
        refined = 0

        def grow(rows, sampled, first_worker, w):
            nonlocal refined
            node = len(nodes["dims"])
            for key, value in (("dims", 0), ("splits", 0.0), ("lefts", -1), ("rights", -1), ("workers", -1)):
                nodes[key].append(value)
            if w == 1:
                nodes["workers"][node] = first_worker
                return node
            w_left = w // 2
            target = w_left / w
            source = points[sampled] if len(sampled) else points[rows]
            dim = int(np.argmax(source.var(axis=0))) if len(source) else 0
            value = float(np.quantile(source[:, dim], target)) if len(source) else 0.0
            below = points[rows, dim] < value
            if len(rows) and abs(below.mean() - target) > tolerance:
                refined += 1
                values = np.sort(points[rows, dim])
                value = float(values[round(target * len(rows))]) if len(rows) else value
                below = points[rows, dim] < value
            sample_below = points[sampled, dim] < value
            nodes["dims"][node], nodes["splits"][node] = dim, value
            nodes["lefts"][node] = grow(rows[below], sampled[sample_below], first_worker, w_left)
            nodes["rights"][node] = grow(rows[~below], sampled[~sample_below], first_worker + w_left, w - w_left)
            return node

        grow(np.arange(n), sample, 0, n_workers)
        return cls(nodes["dims"], nodes["splits"], nodes["lefts"], nodes["rights"], nodes["workers"], n_workers,
                   refined)

    def owner(self, points) -> np.ndarray:
        """The worker whose region holds each point (the side of every split plane it lies on)."""
        points = np.asarray(points, np.float64)
        node = np.zeros(len(points), np.int64)
        rows = np.arange(len(points))
        while True:
            inner = self.lefts[node] >= 0
            if not inner.any():
                return self.workers[node]
            n = node[inner]
            below = points[rows[inner], self.dims[n]] < self.splits[n]
            node[inner] = np.where(below, self.lefts[n], self.rights[n])


def box_distances(queries, lo, hi, p_code=2) -> np.ndarray:
    """(q, P) lower bounds of the distance (squared for p=2) from every query to every worker's
    box of points; inf for a worker that holds none (its box is empty: lo > hi)."""
    delta = np.maximum(np.maximum(lo[None, :, :] - queries[:, None, :], queries[:, None, :] - hi[None, :, :]), 0.0)
    if p_code == 2:
        d = (delta * delta).sum(2)
    elif p_code == 1:
        d = delta.sum(2)
    else:
        d = delta.max(2) if delta.shape[2] else delta.sum(2)
    empty = (lo > hi).any(1)
    d[:, empty] = np.inf
    return d


def merge(d_a, i_a, d_b, i_b, k):
    """The ``k`` best of two sorted candidate lists per query, by (distance, id)."""
    d = np.concatenate([d_a, d_b], axis=1)
    i = np.concatenate([i_a, i_b], axis=1)
    order = np.lexsort((i, d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
