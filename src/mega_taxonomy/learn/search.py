"""Prototype search at inference time: the ``k`` nearest prototypes of every row.

A searcher is anything with ``search(x, k) -> (distances, indices)`` (n, k), nearest first, over
the prototypes it was built on (already scaled by the feature weights). Two live here:

- :class:`ExactSearcher`: every prototype, through the fused top-k op (``ops.topk``: tiled, never
  the n x P matrix) for euclidean and cosine, and the plain formula for l1.
- :class:`IndexSearcher`: the project's IVF index (``index/ivf.py``) over the prototypes, for the
  many-prototype case (tens of thousands of classes).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError
from ..index import IVFIndex
from ..ops import topk
from .distance import pairwise

__all__ = ["INDEX_MIN_PROTOTYPES", "ExactSearcher", "IndexSearcher", "LazySearcher", "make_searcher"]

INDEX_MIN_PROTOTYPES = 20_000  # use_index="auto" searches through the index from this many prototypes
RECALL_TARGET = 0.9  # IndexSearcher's calibration: the share of nearest prototypes found
CALIBRATION_ROWS = 1000  # prototypes sampled for it


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


class IndexSearcher:
    """The prototypes in the project's IVF index (``index.IVFIndex``): ``sqrt(P)`` lists of our
    KMeans; a row is compared with the ``n_probe`` nearest lists' centroids, then exactly with the
    prototypes of those lists only (approximate: a prototype outside the probed lists is missed).
    Euclidean and cosine (the index knows no l1).

    ``n_probe=None`` calibrates it at build: the fewest lists with which the nearest *other*
    prototype of a sample of prototypes is found for ``RECALL_TARGET`` of them (a binary search;
    recall grows with ``n_probe``). A query between prototypes is the hard case that this
    imitates: on the benchmark's 20k-class set, held-out rows were found at least as often as
    this proxy says (``docs/benchmarks.md``). Prototypes without cluster structure need most of
    the lists, and the index then saves little against the exact search: say so rather than
    answer fast and wrong."""

    def __init__(self, vectors: torch.Tensor, metric: str, *, n_lists=None, n_probe=None, random_state=0):
        if metric not in ("euclidean", "cosine"):
            raise ConfigError(f"use_index needs metric 'euclidean' or 'cosine', not {metric!r}")
        n_lists = n_lists or max(1, int(math.sqrt(vectors.shape[0])))
        host = vectors.detach().float().cpu().numpy()
        self.index = IVFIndex(n_lists, metric=metric, max_iter=10, random_state=random_state,
                              device=str(vectors.device)).train(host)
        self.index.add(host, ids=np.arange(len(host)))
        self.n_probe = n_probe or self._calibrate(host, metric, random_state)

    def _calibrate(self, host, metric, random_state) -> int:
        rng = np.random.default_rng(random_state)
        sample = np.sort(rng.choice(len(host), min(len(host), CALIBRATION_ROWS), replace=False))
        q = torch.as_tensor(host[sample])
        truth = topk(q, torch.as_tensor(host), 2, metric=metric)[1][:, 1].numpy()
        low, high = 1, self.index.nlist
        while low < high:  # the fewest lists reaching the target
            mid = (low + high) // 2
            found = self.index.search(host[sample], 2, nprobe=mid)[1]
            # The other prototype may come first or second (a tie with the query itself).
            recall = float(((found[:, 0] == truth) | (found[:, 1] == truth)).mean())
            low, high = (mid + 1, high) if recall < RECALL_TARGET else (low, mid)
        return low

    def search(self, x: torch.Tensor, k: int):
        d, i = self.index.search(x.detach().float(), min(k, self.index.ntotal), nprobe=self.n_probe)
        return torch.as_tensor(d, device=x.device), torch.as_tensor(i, device=x.device)


def make_searcher(vectors: torch.Tensor, metric: str, use_index, random_state=0):
    """The searcher for ``use_index`` (False, True or "auto": from ``INDEX_MIN_PROTOTYPES``)."""
    many = vectors.shape[0] >= INDEX_MIN_PROTOTYPES and metric != "l1"  # "auto": where the index can
    if (use_index is True or (use_index == "auto" and many)) and vectors.shape[0] > 1:
        return IndexSearcher(vectors, metric, random_state=random_state)
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
