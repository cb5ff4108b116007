"""Routing: walk vectors down the tree, searching at each level only the children of the nodes
kept so far (one with ``beam=1``, several with a beam).

The exact path of a vector is the path of its nearest leaf centroid over all leaves of any
depth; a wider beam gets closer to it. Fitting assigns greedily (beam 1): a row's node at
level l is the nearest child of its node at level l-1.

Children are found exactly (grouped assignment, plus each child's penalty on a level balanced
by size-penalised assignment; on a level of Gaussian mixtures, the children of highest
responsibility, their "distance" being -log(w N(x | child))) or, for nodes whose fan-out reaches
``hnsw_threshold`` (the seed's roadmap: "HNSW-based centroid search for even faster level
transitions"), through an hnswlib graph over that node's children.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cluster.balance import with_penalty
from ..ops import OperandCache, grouped_nearest, grouped_topk, nearest, topk
from ..ops.gmm_estep.grouped import grouped_best
from .tree import Tree


def level_offsets(tree: Tree, level: int) -> np.ndarray:
    """CSR children of the groups of ``level`` (the root's at level 0), plus one empty group last,
    which rows under an earlier leaf (node -1) are sent to."""
    offsets = np.array([0, tree.levels[0].n_nodes]) if level == 0 else tree.levels[level - 1].child_offsets
    return np.append(offsets, offsets[-1])


class Router:
    """Nearest children of given parents, level by level.

    Parameters
    ----------
    tree : Tree
    kind : {"exact", "hnsw"}
        "hnsw" answers nodes with at least ``hnsw_threshold`` children from an hnswlib graph
        (built once per node, single-threaded so that it is reproducible), the others exactly.
    hnsw_threshold : int
    ef : int
        hnswlib's search breadth (recall against speed).
    """

    def __init__(self, tree: Tree, kind: str = "exact", hnsw_threshold: int = 4096, ef: int = 64, M: int = 16):
        if kind not in ("exact", "hnsw"):
            raise ValueError(f"router must be 'exact' or 'hnsw', got {kind!r}")
        self.tree, self.kind, self.threshold, self.ef, self.M = tree, kind, hnsw_threshold, ef, M
        self._graphs = {}
        self._offsets = [level_offsets(tree, level) for level in range(tree.n_levels)]
        self._on_device = {}  # (level, device) -> the level's centroids there
        self._operands = OperandCache()  # the centroids and offsets last prepared for the kernels

    def __getstate__(self):  # the centroids moved to a device stay behind
        return {**self.__dict__, "_on_device": {}}

    def centroids(self, level: int, device) -> torch.Tensor:
        """A level's centroids on ``device``, moved once per router rather than once per block
        routed (a level of 65536 x 1024 children is 256 MiB of float32)."""
        key = (level, torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = torch.as_tensor(self.tree.levels[level].centroids, device=device)
        return self._on_device[key]

    def wide(self, level: int) -> np.ndarray:
        """Groups of ``level`` answered by HNSW (never on a level with penalties or mixtures: its
        graphs would have to index penalised centroids, or densities, which no fit needs yet)."""
        mixed = self.tree.levels[level].penalty is not None or self.tree.levels[level].covariances is not None
        if self.kind != "hnsw" or mixed:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.diff(self._offsets[level]) >= self.threshold)

    def _graph(self, level: int, group: int):
        key = (level, group)
        if key not in self._graphs:
            import hnswlib

            lo, hi = self._offsets[level][group], self._offsets[level][group + 1]
            c = np.ascontiguousarray(self.tree.levels[level].centroids[lo:hi], dtype=np.float32)
            graph = hnswlib.Index(space="l2" if self.tree.metric == "euclidean" else "cosine", dim=c.shape[1])
            graph.init_index(max_elements=len(c), ef_construction=max(200, self.ef), M=self.M, random_seed=0)
            graph.set_num_threads(1)
            graph.add_items(c, np.arange(lo, hi))
            graph.set_ef(self.ef)
            self._graphs[key] = graph
        return self._graphs[key]

    def children(self, x: torch.Tensor, level: int, parents: torch.Tensor, k: int):
        """(distances, children), both (n, k): the k nearest children of each row's parent
        (``parents``: node ids of level-1, -1 for none; ignored at level 0). Padded with inf / -1."""
        offsets = self._offsets[level]  # on the host: the ops move them as they need
        if level == 0:
            groups = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        else:
            groups = torch.where(parents >= 0, parents, torch.full_like(parents, len(offsets) - 2))
        c = self.centroids(level, x.device)
        wide = self.wide(level)
        if len(wide) == 0:
            return self._exact(x, level, groups, c, offsets, k)
        is_wide = torch.as_tensor(np.isin(groups.cpu().numpy(), wide), device=x.device)
        if level == 0:  # the root is wide: no exact search at all
            dist = torch.full((x.shape[0], k), torch.inf, dtype=c.dtype, device=x.device)
            child = torch.full((x.shape[0], k), -1, dtype=torch.int64, device=x.device)
        else:
            narrow_groups = torch.where(is_wide, torch.full_like(groups, len(offsets) - 2), groups)
            dist, child = self._exact(x, level, narrow_groups, c, offsets, k)
        rows_np = torch.nonzero(is_wide).squeeze(1).cpu().numpy()
        groups_np = groups.cpu().numpy()
        for group in np.unique(groups_np[rows_np]):
            rows = rows_np[groups_np[rows_np] == group]
            labels, d = self._graph(level, int(group)).knn_query(x[rows].cpu().float().numpy(), k=k)
            dist[rows] = torch.as_tensor(d, dtype=dist.dtype, device=x.device)
            child[rows] = torch.as_tensor(labels.astype(np.int64), device=x.device)
        return dist, child


    def _exact(self, x, level, groups, c, offsets, k):
        """The same ops as the fit's Lloyd passes for k = 1 (nearest at level 0, grouped below), so
        routing a fitted row reproduces its assignment bit for bit; on a level of mixtures, the
        children of highest responsibility, by the op of the fit's assignment pass."""
        fitted = self.tree.levels[level]
        if fitted.covariances is not None:
            return grouped_best(x, groups, offsets, fitted.weights, fitted.centroids, fitted.covariances, k)
        return with_penalty(lambda x, c, metric: self._nearest_children(x, c, level, groups, offsets, k, metric), x, c,
                            self.tree.levels[level].penalty, self.tree.metric)

    def _nearest_children(self, x, c, level, groups, offsets, k, metric):
        if level == 0 and k == 1:
            d, i = nearest(x, c, metric=metric, cache=self._operands)
            return d[:, None], i[:, None]
        if level == 0:
            return topk(x, c, min(k, len(c)), metric=metric, cache=self._operands)
        if k == 1:
            d, i = grouped_nearest(x, groups, c, offsets, metric=metric, cache=self._operands)
            return d[:, None], i[:, None]
        return grouped_topk(x, groups, c, offsets, k, metric=metric)


def route_greedy(x: torch.Tensor, tree: Tree, levels: int | None = None, router: Router | None = None):
    """(paths, distances), both (n, levels): each level's nearest child of the previous node."""
    router = router or Router(tree)
    levels = tree.n_levels if levels is None else levels
    n = x.shape[0]
    paths = torch.full((n, levels), -1, dtype=torch.int64, device=x.device)
    dists = torch.full((n, levels), torch.inf, dtype=torch.float64, device=x.device)
    for level in range(levels):
        parents = paths[:, level - 1] if level else paths[:, 0]
        d, node = router.children(x, level, parents, 1)
        paths[:, level], dists[:, level] = node[:, 0], d[:, 0].double()
    return paths, dists


def route_beam(x: torch.Tensor, tree: Tree, beam: int, n_best: int = 1, router: Router | None = None):
    """(paths (n, n_best, n_levels), distances (n, n_best)): the ``n_best`` nearest leaves among
    those reached by keeping the ``beam`` nearest nodes at every level (leaves of any depth
    compete by the distance to their own centroid; inf / -1 where fewer were reached)."""
    router = router or Router(tree)
    n, n_levels, device = x.shape[0], tree.n_levels, x.device
    best_d = torch.full((n, n_best), torch.inf, dtype=torch.float64, device=device)
    best_path = torch.full((n, n_best, n_levels), -1, dtype=torch.int64, device=device)
    node = torch.full((n, 1), -1, dtype=torch.int64, device=device)  # the root
    paths = torch.full((n, 1, n_levels), -1, dtype=torch.int64, device=device)
    for level in range(n_levels):
        width = node.shape[1]
        k = min(beam, int(np.diff(router._offsets[level]).max(initial=0)))
        if k == 0:
            break
        rows = x.repeat_interleave(width, 0)
        d, child = router.children(rows, level, node.reshape(-1), k)
        d, child = d.reshape(n, width * k), child.reshape(n, width * k)
        d, pick = d.topk(min(beam, width * k), dim=1, largest=False, sorted=True)
        node = child.gather(1, pick)
        paths = paths.gather(1, (pick // k)[:, :, None].expand(-1, -1, n_levels)).clone()
        paths[:, :, level] = node
        # Candidates that are leaves (no children, or the last level) join the best so far.
        offsets = torch.as_tensor(tree.levels[level].child_offsets, device=device)
        safe = node.clamp_min(0)
        leaf = (node >= 0) & ((offsets[safe + 1] == offsets[safe]) | (level == n_levels - 1))
        d_leaf = torch.where(leaf, d.double(), torch.full_like(d, torch.inf, dtype=torch.float64))
        pool_d, order = torch.cat([best_d, d_leaf], 1).sort(dim=1, stable=True)
        pool_paths = torch.cat([best_path, paths], 1)
        best_d = pool_d[:, :n_best]
        best_path = pool_paths.gather(1, order[:, :n_best, None].expand(-1, -1, n_levels))
    return best_path, best_d


def exact_paths(x: torch.Tensor, tree: Tree):
    """(paths, distances) of the nearest leaf over all leaves of every depth: the ground truth
    that beams are measured against."""
    from ..ops import nearest

    best_d = best_path = None
    for level, nodes in tree.leaves():
        if len(nodes) == 0:
            continue
        c = torch.as_tensor(tree.levels[level].centroids[nodes], device=x.device)
        d, i = nearest(x, c, metric=tree.metric)
        path = torch.as_tensor(leaf_paths(tree, level, nodes[i.cpu().numpy()]), device=x.device)
        d = d.double()
        if best_d is None:
            best_d, best_path = d, path
        else:
            better = d < best_d
            best_d = torch.where(better, d, best_d)
            best_path = torch.where(better[:, None], path, best_path)
    return best_path, best_d


def leaf_paths(tree: Tree, level: int, nodes: np.ndarray) -> np.ndarray:
    """Full paths (n, n_levels) of nodes of ``level``, by following parents up."""
    paths = np.full((len(nodes), tree.n_levels), -1, dtype=np.int64)
    paths[:, level] = nodes
    for up in range(level, 0, -1):
        paths[:, up - 1] = tree.levels[up].parent[paths[:, up]]
    return paths
