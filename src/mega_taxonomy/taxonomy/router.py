"""Routing: walk a vector down the tree, searching at each level only the children of the
nodes kept so far (one with ``beam=1``, several with a beam).

The exact path of a vector is the path of its nearest leaf centroid over all leaves of any
depth; a wider beam gets closer to it. Fitting assigns greedily (beam 1): a row's node at
level l is the nearest child of its node at level l-1.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ops import grouped_nearest, grouped_topk, nearest, topk
from .tree import Tree


def level_offsets(tree: Tree, level: int, device) -> torch.Tensor:
    """CSR children of the groups of ``level`` (the root's at level 0), plus one empty group last,
    which rows under an earlier leaf (node -1) are sent to."""
    if level == 0:
        offsets = np.array([0, tree.levels[0].n_nodes])
    else:
        offsets = tree.levels[level - 1].child_offsets
    return torch.as_tensor(np.append(offsets, offsets[-1]), device=device)


def as_groups(nodes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Node ids of the level above as groups; -1 (no node) goes to the trailing empty group."""
    return torch.where(nodes >= 0, nodes, torch.full_like(nodes, len(offsets) - 2))


def route_greedy(x: torch.Tensor, tree: Tree, levels: int | None = None):
    """(paths, distances), both (n, levels): each level's nearest child of the previous node."""
    levels = tree.n_levels if levels is None else levels
    n = x.shape[0]
    paths = torch.full((n, levels), -1, dtype=torch.int64, device=x.device)
    dists = torch.full((n, levels), torch.inf, dtype=torch.float64, device=x.device)
    for level in range(levels):
        c = torch.as_tensor(tree.levels[level].centroids, device=x.device)
        if level == 0:
            d, node = nearest(x, c, metric=tree.metric)
        else:
            offsets = level_offsets(tree, level, x.device)
            d, node = grouped_nearest(x, as_groups(paths[:, level - 1], offsets), c, offsets, metric=tree.metric)
        paths[:, level], dists[:, level] = node, d.double()
    return paths, dists


def route_beam(x: torch.Tensor, tree: Tree, beam: int):
    """(paths (n, n_levels), leaf distances (n,)): the best leaf among those reached by keeping the
    ``beam`` nearest nodes at every level."""
    if beam <= 1:
        paths, dists = route_greedy(x, tree)
        depth = (paths >= 0).sum(1) - 1
        return paths, dists.gather(1, depth[:, None]).squeeze(1)
    n, n_levels, device = x.shape[0], tree.n_levels, x.device
    c0 = torch.as_tensor(tree.levels[0].centroids, device=device)
    d, node = topk(x, c0, min(beam, len(c0)), metric=tree.metric)
    paths = torch.full((n, d.shape[1], n_levels), -1, dtype=torch.int64, device=device)
    paths[:, :, 0] = node
    best_d = torch.full((n,), torch.inf, dtype=torch.float64, device=device)
    best_path = torch.full((n, n_levels), -1, dtype=torch.int64, device=device)

    def settle(level, d, node, paths):
        """Candidates that are leaves (no children, or the last level) compete for the best."""
        nonlocal best_d, best_path
        offsets = torch.as_tensor(tree.levels[level].child_offsets, device=device)
        safe = node.clamp_min(0)
        leaf = (node >= 0) & ((offsets[safe + 1] == offsets[safe]) | (level == n_levels - 1))
        d_leaf = torch.where(leaf, d.double(), torch.full_like(d, torch.inf, dtype=torch.float64))
        cand_d, cand = d_leaf.min(1)
        better = cand_d < best_d
        best_d = torch.where(better, cand_d, best_d)
        best_path = torch.where(better[:, None], paths[torch.arange(n, device=device), cand], best_path)

    settle(0, d, node, paths)
    for level in range(1, n_levels):
        width = node.shape[1]
        offsets = level_offsets(tree, level, device)
        c = torch.as_tensor(tree.levels[level].centroids, device=device)
        rows = x.repeat_interleave(width, 0)
        k = min(beam, int(torch.diff(offsets).max()))
        if k == 0:
            break
        d_child, child = grouped_topk(rows, as_groups(node.reshape(-1), offsets), c, offsets, k, metric=tree.metric)
        d_child, child = d_child.reshape(n, width * k), child.reshape(n, width * k)
        d, pick = d_child.topk(min(beam, width * k), dim=1, largest=False, sorted=True)
        node = child.gather(1, pick)
        parent_slot = pick // k
        paths = paths.gather(1, parent_slot[:, :, None].expand(-1, -1, n_levels)).clone()
        paths[:, :, level] = node
        settle(level, d, node, paths)
    return best_path, best_d


def exact_paths(x: torch.Tensor, tree: Tree):
    """(paths, distances) of the nearest leaf over all leaves of every depth: the ground truth
    that beams are measured against."""
    best_d = best_path = None
    for level, nodes in tree.leaves():
        if len(nodes) == 0:
            continue
        c = torch.as_tensor(tree.levels[level].centroids[nodes], device=x.device)
        d, i = nearest(x, c, metric=tree.metric)
        path = leaf_paths(tree, level, nodes[i.cpu().numpy()])
        d = d.double()
        if best_d is None:
            best_d, best_path = d, torch.as_tensor(path, device=x.device)
        else:
            better = d < best_d
            best_d = torch.where(better, d, best_d)
            best_path = torch.where(better[:, None], torch.as_tensor(path, device=x.device), best_path)
    return best_path, best_d


def leaf_paths(tree: Tree, level: int, nodes: np.ndarray) -> np.ndarray:
    """Full paths (n, n_levels) of nodes of ``level``, by following parents up."""
    paths = np.full((len(nodes), tree.n_levels), -1, dtype=np.int64)
    paths[:, level] = nodes
    for up in range(level, 0, -1):
        paths[:, up - 1] = tree.levels[up].parent[paths[:, up]]
    return paths
