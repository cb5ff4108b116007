"""Prototype search at inference time: the ``k`` nearest prototypes of every row.

A searcher is anything with ``search(x, k) -> (distances, indices)`` (n, k), nearest first, over
the prototypes it was built on (already scaled by the feature weights). Two live here:

- :class:`ExactSearcher`: every prototype, through the fused top-k op (``ops.topk``: tiled, never
  the n x P matrix) for euclidean and cosine, and the plain formula for l1.
- :class:`CoarseSearcher`: an inverted file over the prototypes for the many-prototype case
  (tens of thousands of classes): the prototypes are clustered by our KMeans into ``sqrt(P)``
  lists, a row is compared with the ``n_probe`` nearest list centroids, then exactly with the
  prototypes of those lists only. It is the interface the project's IVF index (``index/ivf.py``)
  will stand behind when it lands; :func:`make_searcher` is the one place to switch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..cluster import KMeans
from ..ops import topk
from .distance import pairwise

__all__ = ["INDEX_MIN_PROTOTYPES", "CoarseSearcher", "ExactSearcher", "LazySearcher", "make_searcher"]

INDEX_MIN_PROTOTYPES = 20_000  # use_index="auto" searches through the index from this many prototypes


class ExactSearcher:
    """Exact top-k over all prototypes."""

    def __init__(self, vectors: torch.Tensor, metric: str):
        self.vectors = vectors
        self.metric = metric

    def search(self, x: torch.Tensor, k: int):
        k = min(k, self.vectors.shape[0])
        if self.metric == "l1":
            return pairwise(x, self.vectors, "l1").topk(k, dim=1, largest=False, sorted=True)
        return topk(x, self.vectors, k, metric=self.metric)


class CoarseSearcher:
    """Inverted-file search over the prototypes (approximate: a prototype outside the probed lists
    is missed)."""

    def __init__(self, vectors: torch.Tensor, metric: str, *, n_lists=None, n_probe=16, random_state=0):
        self.vectors, self.metric, self.n_probe = vectors, metric, n_probe
        p = vectors.shape[0]
        n_lists = n_lists or max(1, int(math.sqrt(p)))
        km_metric = "cosine" if metric == "cosine" else "euclidean"
        host = vectors.detach().float().cpu().numpy()
        km = KMeans(n_clusters=n_lists, max_iter=10, random_state=random_state, metric=km_metric,
                    device=str(vectors.device)).fit(host)
        self.centroids = torch.as_tensor(km.cluster_centers_, device=vectors.device, dtype=vectors.dtype)
        order = np.argsort(km.labels_, kind="stable")
        counts = np.bincount(km.labels_, minlength=n_lists)
        width = int(counts.max())
        # (n_lists, width) prototype index per slot, -1 where a list is shorter.
        members = np.full((n_lists, width), -1, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(p) - np.repeat(starts, counts)
        members[np.repeat(np.arange(n_lists), counts), slot] = order
        self.members = torch.as_tensor(members, device=vectors.device)
        self.km_metric = km_metric

    def search(self, x: torch.Tensor, k: int):
        probe = min(self.n_probe, self.centroids.shape[0])
        _, lists = topk(x, self.centroids, probe, metric=self.km_metric)  # (n, probe)
        n, width = x.shape[0], self.members.shape[1]
        dist = torch.full((n, probe, width), math.inf, dtype=x.dtype, device=x.device)
        # List by list: the rows that probe a list against its prototypes in one product.
        flat = lists.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.centroids.shape[0]).tolist()
        start = 0
        for lst, count in enumerate(counts):
            if not count:
                continue
            pairs = order[start:start + count]
            start += count
            members = self.members[lst]
            members = members[members >= 0]
            d = pairwise(x[pairs // probe], self.vectors[members], self.metric)
            dist[pairs // probe, pairs % probe, : len(members)] = d.to(dist.dtype)
        cand = self.members[lists].reshape(n, -1)
        dist = dist.reshape(n, -1)
        k = min(k, dist.shape[1])
        d, pos = dist.topk(k, dim=1, largest=False, sorted=True)
        return d, cand.gather(1, pos)


def make_searcher(vectors: torch.Tensor, metric: str, use_index, random_state=0):
    """The searcher for ``use_index`` (False, True or "auto": from ``INDEX_MIN_PROTOTYPES``)."""
    many = vectors.shape[0] >= INDEX_MIN_PROTOTYPES
    if (use_index is True or (use_index == "auto" and many)) and vectors.shape[0] > 1:
        return CoarseSearcher(vectors, metric, random_state=random_state)
    return ExactSearcher(vectors, metric)


class LazySearcher:
    """The searcher of a fitted model, built at its first search (an index costs a k-means over
    the prototypes: a stream of ``partial_fit`` calls must not pay it per call)."""

    def __init__(self, vectors, metric, use_index, random_state):
        self._args = (vectors, metric, use_index, random_state)
        self._searcher = None

    def get(self):
        if self._searcher is None:
            self._searcher = make_searcher(*self._args)
        return self._searcher
