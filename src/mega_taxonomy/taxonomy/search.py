"""Search: beam down to the nearest leaves, then rank their members exactly.

The index keeps every fitted row's id and vector grouped by leaf (an inverted file whose lists
are the taxonomy's leaves), in the Store next to the tree, so a query reads only the rows of
the leaves its beam reaches. The vectors are held as one array: building the index needs them
in memory once (an IVF index over data beyond memory belongs to ``index/``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..io.device import host_arrays
from ..ops.probe import merge_sorted, probe_rerank, row_terms
from ..storage.schema import SEARCH_ARRAYS, search_file
from .router import Router, route_beam
from .tree import Tree


def leaf_numbers(tree: Tree) -> list[np.ndarray]:
    """Per level, each node's leaf number (leaves numbered level by level), -1 for inner nodes."""
    numbers, start = [], 0
    for level in tree.levels:
        is_leaf = level.n_children == 0
        number = np.full(level.n_nodes, -1, dtype=np.int64)
        number[is_leaf] = start + np.arange(is_leaf.sum())
        start += int(is_leaf.sum())
        numbers.append(number)
    return numbers


def leaf_of_paths(tree: Tree, paths: np.ndarray) -> np.ndarray:
    """Leaf number of every path (its deepest node); -1 for an empty path."""
    numbers = leaf_numbers(tree)
    depth = (paths >= 0).sum(-1) - 1
    out = np.full(depth.shape, -1, dtype=np.int64)
    for level, number in enumerate(numbers):
        at = depth == level
        out[at] = number[paths[..., level][at]]
    return out


def beam_leaves(q: torch.Tensor, tree: Tree, beam: int) -> np.ndarray:
    """(n, beam) leaf numbers reached by the beam, nearest first (-1 where fewer), as
    ``route_beam(q, tree, beam, n_best=beam)`` finds them, with each level's step on the
    probe-and-rerank op: a level's centroids are CSR lists (the children of each node), the
    beam's nodes are the probes, and the ``beam`` nearest children come out of the same compiled
    kernel as the search's re-rank (queries grouped by parent node), not of a per-row loop."""
    x = q.detach().cpu().numpy()
    n, numbers = len(x), leaf_numbers(tree)
    best_d = np.full((n, beam), np.inf, dtype=tree.levels[0].centroids.dtype)
    best_leaf = np.full((n, beam), -1, dtype=np.int64)
    nodes = np.zeros((n, 1), dtype=np.int64)  # the root's children are all of level 0
    for level_no, level in enumerate(tree.levels):
        offsets = np.array([0, level.n_nodes]) if level_no == 0 else tree.levels[level_no - 1].child_offsets
        d, nodes = probe_rerank(x, nodes, offsets, level.centroids, np.arange(level.n_nodes), min(beam, level.n_nodes),
                                metric=tree.metric, terms=_level_terms(tree, level_no))
        safe = np.maximum(nodes, 0)
        is_leaf = (nodes >= 0) & ((level.n_children[safe] == 0) | (level_no == tree.n_levels - 1))
        if is_leaf.any():  # the level's leaves join the pool (its other nodes go on down)
            best_d, best_leaf = merge_sorted(best_d, best_leaf, d, np.where(is_leaf, numbers[level_no][safe], -1), beam)
        if not (nodes >= 0).any() or is_leaf[nodes >= 0].all():
            break
    return np.where(np.isfinite(best_d), best_leaf, -1)


def _level_terms(tree: Tree, level_no: int):
    """The per-centroid terms of ``ops.probe`` of a level, kept on the tree (computed once)."""
    cache = tree.__dict__.setdefault("_probe_terms", {})
    if level_no not in cache:
        cache[level_no] = row_terms(tree.levels[level_no].centroids, tree.metric)
    return cache[level_no]


@dataclass
class SearchIndex:
    ids: np.ndarray  # (N,) int64, grouped by leaf
    vectors: np.ndarray  # (N, d), same order
    offsets: np.ndarray  # (n_leaves + 1,) CSR: rows of leaf j are offsets[j]:offsets[j + 1]

    @classmethod
    def build(cls, tree: Tree, ordinals: np.ndarray, ids: np.ndarray, leaves: np.ndarray, source) -> SearchIndex:
        """From every fitted row's ordinal, id and leaf number; reads the vectors from ``source``."""
        order = np.lexsort((ordinals, leaves))
        n_leaves = sum(int((level.n_children == 0).sum()) for level in tree.levels)
        counts = np.bincount(leaves, minlength=n_leaves)
        (vectors,) = host_arrays(source.take(ordinals[order]))
        return cls(ids[order], np.ascontiguousarray(vectors), np.concatenate([[0], np.cumsum(counts)]))

    def save(self, store) -> None:
        for name in SEARCH_ARRAYS:
            store.put_array(search_file(name), getattr(self, name))

    @classmethod
    def load(cls, store) -> SearchIndex:
        return cls(*(store.get_array(search_file(name), mmap=True) for name in SEARCH_ARRAYS))

    def terms(self, metric: str):
        """The per-row distance terms of ``ops.probe`` (computed once)."""
        if getattr(self, "_terms", None) is None or self._terms[0] != metric:
            self._terms = (metric, row_terms(np.asarray(self.vectors), metric))
        return self._terms[1]

    def search(self, q: torch.Tensor, tree: Tree, router: Router, k: int, beam: int):
        """(distances (n, k), ids (n, k), rows compared (n,)), nearest first, inf / -1 padding.

        The leaves reached by each query's beam are its probes: the re-rank is the IVF index's
        (``ops.probe``: queries grouped by leaf, each reached leaf scanned once per batch by one
        product, a running top-k), so no per-query work is left in Python.
        """
        if router.kind == "exact" and all(level.penalty is None for level in tree.levels):
            leaves = beam_leaves(q, tree, beam)
        else:  # penalties and HNSW graphs: the router's own walk
            paths, _ = route_beam(q, tree, beam, n_best=beam, router=router)
            leaves = leaf_of_paths(tree, paths.cpu().numpy())  # (n, beam), -1 where fewer were reached
        sizes = np.diff(self.offsets)
        compared = np.where(leaves >= 0, sizes[np.maximum(leaves, 0)], 0).sum(1)
        vectors = np.asarray(self.vectors)  # a plain view of a memory map
        qs = q.detach().cpu().to(torch.float64 if vectors.dtype == np.float64 else torch.float32).numpy()
        d, ids = probe_rerank(qs, leaves, self.offsets, vectors, np.asarray(self.ids), k, metric=tree.metric,
                              terms=self.terms(tree.metric))
        return np.asarray(d, np.float32), ids, compared
