"""The fitted hierarchy: per level, centroids, parents, sizes and CSR child offsets.

Node ids are global per level (0..n_nodes(l)-1), and the children of a node are contiguous in
the next level, so ``child_offsets`` (CSR) is all the structure there is: the children of node
``i`` of level ``l`` are nodes ``child_offsets[i]:child_offsets[i + 1]`` of level ``l + 1``.
A node with no children is a leaf; paths hold -1 below it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..storage.schema import LEVEL_ARRAYS, level_file
from ..storage.schema import LEVEL_OPTIONAL_ARRAYS as OPTIONAL_ARRAYS


@dataclass
class Level:
    centroids: np.ndarray  # (n_nodes, d)
    parent: np.ndarray  # (n_nodes,) int64 node id at the level above (-1 at level 0)
    counts: np.ndarray  # (n_nodes,) int64 rows assigned
    child_offsets: np.ndarray  # (n_nodes + 1,) int64 CSR into the next level (all equal: no children)
    # (n_nodes,) float64 cost added to each node's distance when rows choose among siblings
    # (balance="penalty"); None: plain nearest centroid.
    penalty: np.ndarray | None = None
    # clusterer="gmm": each node's weight within its parent (n_nodes,) and diagonal variances
    # (n_nodes, d), the centroids being the means; rows choose the sibling of highest
    # responsibility. None: k-means.
    weights: np.ndarray | None = None
    covariances: np.ndarray | None = None

    @property
    def n_nodes(self) -> int:
        return len(self.centroids)

    @property
    def n_children(self) -> np.ndarray:
        return np.diff(self.child_offsets)


@dataclass
class Tree:
    levels: list[Level]
    metric: str = "euclidean"

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def dim(self) -> int:
        return self.levels[0].centroids.shape[1]

    def children(self, level: int, node: int) -> range:
        offsets = self.levels[level].child_offsets
        return range(int(offsets[node]), int(offsets[node + 1]))

    def leaves(self) -> list[tuple[int, np.ndarray]]:
        """(level, node ids) of every leaf, level by level."""
        return [(i, np.flatnonzero(level.n_children == 0)) for i, level in enumerate(self.levels)]

    def save(self, store) -> None:
        for i, level in enumerate(self.levels):
            for name in LEVEL_ARRAYS:
                store.put_array(level_file(i, name), getattr(level, name))
            for name in OPTIONAL_ARRAYS:
                if getattr(level, name) is not None:
                    store.put_array(level_file(i, name), getattr(level, name))

    @classmethod
    def load(cls, store, n_levels: int, metric: str) -> Tree:
        levels = []
        for i in range(n_levels):
            level = Level(*(np.asarray(store.get_array(level_file(i, name))) for name in LEVEL_ARRAYS))
            for name in OPTIONAL_ARRAYS:
                setattr(level, name, optional_array(store, level_file(i, name)))
            levels.append(level)
        return cls(levels, metric)


def optional_array(store, name) -> np.ndarray | None:
    """The array ``name`` of ``store``, None when there is none (a level's penalties exist only
    with ``balance="penalty"``, its weights and covariances with ``clusterer="gmm"``)."""
    return np.asarray(store.get_array(name)) if store.listdir(name) else None
