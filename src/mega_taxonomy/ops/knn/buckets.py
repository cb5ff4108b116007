"""Exact kNN by brute force over candidate leaf buckets, the GPU's way to walk a kd-tree (torch).

Tree walks diverge from query to query, which a GPU runs badly; scanning whole buckets of 32
points for a block of nearby queries is what it runs well. So, for queries sorted by their leaf:

1. every query's home leaf (down the split planes, all queries at once, one level a step);
2. an upper bound of its k-th distance: the k-th distance to the points of the smallest subtree
   over its home leaf that holds k points (real points, so a true bound);
3. queries in blocks of ``block`` (consecutive in leaf order): the block's box and the largest
   bound; the leaves whose box lies within that bound of the block's box are its candidates,
   found level by level for all blocks at once (pairs of (block, node) pruned by box distance);
4. the kernel (``triton.py``, or :func:`scan_reference` in torch) scans each block's candidate
   leaves and keeps each query's k best by (distance, row).

Every point that can be among a query's k nearest lies in a candidate leaf, so the answer is
exact; distances are float64 throughout, as on the CPU. p=2 only, no periodic box.

# Inputs : a ``Tree`` (numpy, see ``build.py``); queries (q, d) float64 tensor on the device
# Outputs: (q, k) float64 squared distances, (q, k) int64 original rows (n where missing)
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 32  # queries a kernel program holds


class DeviceTree:
    """The tree's arrays on a torch device, with parents and leaf sizes for the bucket scan."""

    def __init__(self, tree, device):
        def put(a):
            return torch.as_tensor(np.ascontiguousarray(a), device=device)

        self.n, self.dim = tree.pts.shape[1], tree.pts.shape[0]
        self.pts, self.perm = put(tree.pts), put(tree.perm)
        self.starts, self.ends = put(tree.starts), put(tree.ends)
        self.lefts, self.rights = put(tree.lefts), put(tree.rights)
        self.dims, self.splits = put(tree.dims), put(tree.splits)
        self.lo, self.hi = put(tree.lo), put(tree.hi)
        parent = np.full(len(tree.starts), -1, np.int64)
        inner = np.flatnonzero(tree.lefts >= 0)
        parent[tree.lefts[inner]] = inner
        parent[tree.rights[inner]] = inner
        self.parent = put(parent)
        self.sizes = self.ends - self.starts
        leaf = tree.lefts < 0
        self.max_leaf = int((tree.ends - tree.starts)[leaf].max()) if leaf.any() else 1
        self.depth = _depth(tree.lefts, tree.rights)


def _depth(lefts, rights) -> int:
    depth, level = 0, np.array([0])
    while len(level):
        inner = level[lefts[level] >= 0]
        level = np.concatenate([lefts[inner], rights[inner]])
        depth += 1
    return depth


def home_leaves(t: DeviceTree, q: torch.Tensor) -> torch.Tensor:
    node = torch.zeros(len(q), dtype=torch.int64, device=q.device)
    rows = torch.arange(len(q), device=q.device)
    for _ in range(t.depth):
        left = t.lefts[node]
        below = q[rows, t.dims[node]] < t.splits[node]
        node = torch.where(left >= 0, torch.where(below, left, t.rights[node]), node)
    return node


def upper_bounds(t: DeviceTree, q: torch.Tensor, leaves: torch.Tensor, k: int, chunk=1 << 16) -> torch.Tensor:
    """A bound of every query's k-th squared distance: its k-th among the points of the smallest
    subtree over its home leaf that holds k points (inf when the tree holds fewer)."""
    if t.n < k:
        return torch.full((len(q),), float("inf"), dtype=torch.float64, device=q.device)
    node = leaves.clone()
    while True:
        small = t.sizes[node] < k
        if not bool(small.any()):
            break
        node = torch.where(small, t.parent[node], node)
    out = torch.empty(len(q), dtype=torch.float64, device=q.device)
    for a in range(0, len(q), chunk):
        n_part = node[a:a + chunk]
        width = int(t.sizes[n_part].max())
        cols = t.starts[n_part, None] + torch.arange(width, device=q.device)[None, :]
        valid = cols < t.ends[n_part, None]
        cols = torch.where(valid, cols, t.starts[n_part, None])
        diff = t.pts[:, cols] - q[a:a + chunk].T[:, :, None]  # (d, m, width)
        d2 = torch.where(valid, (diff * diff).sum(0), torch.full_like(valid, float("inf"), dtype=torch.float64))
        out[a:a + chunk] = torch.kthvalue(d2, k, dim=1).values
    return out


def candidates(t: DeviceTree, q: torch.Tensor, bounds: torch.Tensor, block: int = BLOCK):
    """(leaf offsets per block (n_blocks + 1,), candidate leaf nodes) for blocks of ``block``
    consecutive queries: the leaves within the block's largest bound of the block's box."""
    n_blocks = -(-len(q) // block)
    pad = n_blocks * block - len(q)
    qp = torch.cat([q, q[-1:].expand(pad, -1)]) if pad else q
    bp = torch.cat([bounds, bounds[-1:].expand(pad)]) if pad else bounds
    qlo, qhi = qp.view(n_blocks, block, -1).amin(1), qp.view(n_blocks, block, -1).amax(1)
    radius = bp.view(n_blocks, block).amax(1)
    blocks = torch.arange(n_blocks, device=q.device)
    nodes = torch.zeros(n_blocks, dtype=torch.int64, device=q.device)
    found_b, found_n, found_gap = [], [], []
    while len(nodes):
        gap = torch.clamp(torch.maximum(t.lo[nodes] - qhi[blocks], qlo[blocks] - t.hi[nodes]), min=0)
        gap = (gap * gap).sum(1)
        keep = gap <= radius[blocks]
        blocks, nodes, gap = blocks[keep], nodes[keep], gap[keep]
        leaf = t.lefts[nodes] < 0
        found_b.append(blocks[leaf])
        found_n.append(nodes[leaf])
        found_gap.append(gap[leaf])
        inner_b, inner_n = blocks[~leaf], nodes[~leaf]
        blocks = torch.cat([inner_b, inner_b])
        nodes = torch.cat([t.lefts[inner_n], t.rights[inner_n]])
    found_b, found_n, found_gap = torch.cat(found_b), torch.cat(found_n), torch.cat(found_gap)
    # a block's leaves nearest first (by the gap between the boxes, then by node): the k best are
    # near their final values after the first leaves, so later ones improve few rows (or none,
    # and the kernel skips them by their box)
    order = torch.argsort(found_n)
    order = order[torch.argsort(found_gap[order], stable=True)]
    order = order[torch.argsort(found_b[order], stable=True)]
    found_b, found_n = found_b[order], found_n[order]
    offsets = torch.zeros(n_blocks + 1, dtype=torch.int64, device=q.device)
    offsets[1:] = torch.cumsum(torch.bincount(found_b, minlength=n_blocks), 0)
    return offsets, found_n


def scan_reference(t: DeviceTree, q, offsets, leaves, k, bound, block=BLOCK):
    """The kernel's twin in torch: each block's queries against its candidate leaves' points,
    the k best by (distance, row)."""
    out_d = torch.full((len(q), k), float("inf"), dtype=torch.float64, device=q.device)
    out_i = torch.full((len(q), k), t.n, dtype=torch.int64, device=q.device)
    for b in range(len(offsets) - 1):
        rows = slice(b * block, min((b + 1) * block, len(q)))
        nodes = leaves[offsets[b]:offsets[b + 1]]
        if not len(nodes):
            continue
        cols = torch.cat([torch.arange(int(t.starts[v]), int(t.ends[v]), device=q.device) for v in nodes])
        diff = q[rows, None, :] - t.pts[:, cols].T[None, :, :]
        d2 = (diff * diff).sum(2)
        ids = t.perm[cols].expand_as(d2)
        d2 = torch.where(d2 < bound, d2, torch.full_like(d2, float("inf")))
        by_row = torch.argsort(ids, dim=1, stable=True)  # then a stable sort by distance: ties by row
        d2, ids = torch.gather(d2, 1, by_row), torch.gather(ids, 1, by_row)
        order = torch.argsort(d2, dim=1, stable=True)[:, :k]
        d_best, i_best = torch.gather(d2, 1, order), torch.gather(ids, 1, order)
        i_best = torch.where(torch.isinf(d_best), torch.full_like(i_best, t.n), i_best)
        out_d[rows, :d_best.shape[1]], out_i[rows, :d_best.shape[1]] = d_best, i_best
    return out_d, out_i


def bucket_knn(t: DeviceTree, q: torch.Tensor, k: int, bound=float("inf"), scan=None, block=BLOCK):
    """The k nearest rows of every query (see the module's notes): (squared distances, rows),
    in query order. ``scan`` is the bucket scan (default: :func:`scan_reference`)."""
    q = q.to(torch.float64).contiguous()
    leaves = home_leaves(t, q)
    order = torch.argsort(t.starts[leaves], stable=True)
    qs = q[order].contiguous()
    bounds = torch.clamp(upper_bounds(t, qs, leaves[order], k), max=bound)
    offsets, cand = candidates(t, qs, bounds, block)
    d, i = (scan or scan_reference)(t, qs, offsets, cand, k, bound, block)
    out_d, out_i = torch.empty_like(d), torch.empty_like(i)
    out_d[order], out_i[order] = d, i
    return out_d, out_i
