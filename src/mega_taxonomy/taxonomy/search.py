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

from ..ops import topk
from .router import Router, route_beam
from .tree import Tree

FILES = ("ids", "vectors", "offsets")


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
        vectors = source.take(ordinals[order])
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.cpu().numpy()
        return cls(ids[order], np.ascontiguousarray(vectors), np.concatenate([[0], np.cumsum(counts)]))

    def save(self, store) -> None:
        for name in FILES:
            store.put_array(f"search/{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, store) -> SearchIndex:
        return cls(*(store.get_array(f"search/{name}.npy", mmap=True) for name in FILES))

    def search(self, q: torch.Tensor, tree: Tree, router: Router, k: int, beam: int):
        """(distances (n, k), ids (n, k), rows compared (n,)), nearest first, inf / -1 padding."""
        paths, _ = route_beam(q, tree, beam, n_best=beam, router=router)
        leaves = leaf_of_paths(tree, paths.cpu().numpy())
        n = q.shape[0]
        out_d = np.full((n, k), np.inf, dtype=np.float32)
        out_i = np.full((n, k), -1, dtype=np.int64)
        compared = np.zeros(n, dtype=np.int64)
        lo, hi = self.offsets[:-1], self.offsets[1:]
        for row in range(n):
            reached = leaves[row][leaves[row] >= 0]
            members = np.concatenate([np.arange(lo[j], hi[j]) for j in reached]) if len(reached) else []
            compared[row] = len(members)
            if not len(members):
                continue
            d, i = topk(q[row : row + 1], torch.as_tensor(self.vectors[members]), min(k, len(members)),
                        metric=tree.metric)
            m = d.shape[1]
            out_d[row, :m] = d[0].cpu().numpy()
            out_i[row, :m] = self.ids[members[i[0].cpu().numpy()]]
        return out_d, out_i, compared
