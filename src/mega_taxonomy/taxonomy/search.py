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

from ..ops import normalize_rows
from ..io.device import host_arrays
from ..storage.schema import SEARCH_ARRAYS, search_file
from ..threads import parallel_map
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

    def norms(self) -> np.ndarray:
        """Squared norms of the vectors (computed once)."""
        if getattr(self, "_norms", None) is None:
            v = np.asarray(self.vectors)
            self._norms = np.einsum("nd,nd->n", v, v, dtype=np.float64 if v.dtype == np.float64 else np.float32)
        return self._norms

    def save(self, store) -> None:
        for name in SEARCH_ARRAYS:
            store.put_array(search_file(name), getattr(self, name))

    @classmethod
    def load(cls, store) -> SearchIndex:
        return cls(*(store.get_array(search_file(name), mmap=True) for name in SEARCH_ARRAYS))

    def search(self, q: torch.Tensor, tree: Tree, router: Router, k: int, beam: int):
        """(distances (n, k), ids (n, k), rows compared (n,)), nearest first, inf / -1 padding.

        Queries are ranked in batches: every query's members are gathered into one padded
        (queries, members, d) tile, so the re-rank is a few batched products, not a loop over
        queries (10k GloVe queries at beam 8: 8 s with a per-query loop); batches run in
        parallel threads.
        """
        paths, _ = route_beam(q, tree, beam, n_best=beam, router=router)
        leaves = leaf_of_paths(tree, paths.cpu().numpy())
        lengths = np.where(leaves >= 0, np.diff(self.offsets)[np.maximum(leaves, 0)], 0)  # (n, beam)
        starts = self.offsets[:-1][np.maximum(leaves, 0)]
        compared = lengths.sum(1)
        n = q.shape[0]
        out_d = np.full((n, k), np.inf, dtype=np.float32)
        out_i = np.full((n, k), -1, dtype=np.int64)
        vectors = np.asarray(self.vectors)  # a plain view of a memory map: cheaper to index
        qs = q.detach().cpu().to(torch.float64 if vectors.dtype == np.float64 else torch.float32)
        cosine = tree.metric == "cosine"
        qs = (normalize_rows(qs) if cosine else qs).numpy()
        q_norms = np.einsum("qd,qd->q", qs, qs)
        m_norms = self.norms()

        def rank(rows):
            width = max(int(compared[rows].max()), 1)
            positions, valid = _padded_members(starts[rows], lengths[rows], width)
            members = vectors[positions].astype(qs.dtype, copy=False)  # (queries, width, d)
            dots = np.matmul(members, qs[rows, :, None])[..., 0]
            if cosine:
                d = 1.0 - dots / np.maximum(np.sqrt(m_norms[positions]), np.finfo(qs.dtype).tiny)
            else:
                d = np.maximum(q_norms[rows, None] - 2.0 * dots + m_norms[positions], 0.0)
            d[~valid] = np.inf
            top = np.argsort(d, axis=1, kind="stable")[:, :k]
            top_d = np.take_along_axis(d, top, 1)
            found = np.isfinite(top_d)
            out_d[rows, :top.shape[1]] = np.where(found, top_d, np.inf)
            out_i[rows, :top.shape[1]] = np.where(found, self.ids[np.take_along_axis(positions, top, 1)], -1)

        parallel_map(rank, _batches(compared, q.shape[1]))
        return out_d, out_i, compared


def _batches(compared: np.ndarray, dim: int, budget: int = 1 << 22) -> list[slice]:
    """Consecutive queries whose padded (queries, most compared, dim) tile stays under ``budget``
    values."""
    out, first, n = [], 0, len(compared)
    while first < n:
        width, last = max(int(compared[first]), 1), first + 1
        while last < n and (last + 1 - first) * max(width, int(compared[last])) * dim <= budget:
            width = max(width, int(compared[last]))
            last += 1
        out.append(slice(first, last))
        first = last
    return out


def _padded_members(starts: np.ndarray, lengths: np.ndarray, width: int):
    """(positions, valid), both (queries, width): the rows of each query's leaves side by side,
    padded (position 0, invalid) to ``width``."""
    per_query = lengths.sum(1)
    flat_len = lengths.ravel()
    # positions of every member, leaf after leaf: start of its leaf + its rank in the leaf
    rank = np.arange(flat_len.sum()) - np.repeat(np.cumsum(flat_len) - flat_len, flat_len)
    flat = np.repeat(starts.ravel(), flat_len) + rank
    query = np.repeat(np.arange(len(per_query)), per_query)
    slot = np.arange(len(flat)) - np.repeat(np.cumsum(per_query) - per_query, per_query)
    positions = np.zeros((len(per_query), width), dtype=np.int64)
    valid = np.zeros((len(per_query), width), dtype=bool)
    positions[query, slot] = flat
    valid[query, slot] = True
    return positions, valid
