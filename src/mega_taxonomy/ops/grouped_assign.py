"""Grouped assignment: every row is compared only with the children of its own parent.

A taxonomy level holds the children of all parents side by side (CSR: the children of parent
``g`` are ``centroids[offsets[g]:offsets[g + 1]]``). Fitting or walking a level assigns each row
to the nearest child of its parent, like a grouped GEMM: one call per batch, whatever the
number of parents.

``grouped_nearest`` / ``grouped_topk`` dispatch; ``*_reference`` are the torch twins. The twin
picks per call between two exact strategies: a loop of matrix products over the parents
present (few, big groups: level 0, wide levels) and a gather of each row's padded children
followed by a batched product (many small groups). The choice depends only on the batch's
content, so the same block gives the same bits wherever it runs.
"""

from __future__ import annotations

import numpy as np
import torch

from .assign import _TILE_ELEMENTS, _check, _finish, _prepare, _use_triton

# Children per matrix product of grouped rows: enough columns for an efficient product, few
# enough that computing every row against all of them wastes little.
_BATCH_COLUMNS = 128


def _padded_children(offsets, device):
    """(n_groups, width) global child index per slot, -1 where a group has fewer children."""
    counts = offsets[1:] - offsets[:-1]
    width = max(int(counts.max()), 1) if len(counts) else 1
    slots = torch.arange(width, device=device)
    index = offsets[:-1, None] + slots[None, :]
    return torch.where(slots[None, :] < counts[:, None], index, torch.full_like(index, -1))


def grouped_distances_reference(x, groups, centroids, offsets, *, metric="euclidean"):
    """(n, width) distances of every row to the children of its group, ``inf`` in empty slots,
    and the (n, width) global child indices (-1 in empty slots)."""
    _check(x, centroids, metric)
    offsets = torch.as_tensor(offsets, device=x.device, dtype=torch.int64)
    groups = torch.as_tensor(groups, device=x.device, dtype=torch.int64)
    x, x_sq, operand = _prepare(x, centroids, metric)
    children = _padded_children(offsets, x.device)
    # index_select, not x[idx]: advanced indexing is 6x slower on the CPU (65536 x 64: 26 ms / 4 ms).
    index = children.index_select(0, groups)  # (n, width)
    # Rows sorted by group, then runs of consecutive groups whose children add up to at least
    # _BATCH_COLUMNS: one matrix product per run (rows of the run x all its children), from which
    # each row keeps its own group's columns. Few Python steps per block, at most a few times
    # the useful arithmetic, one code path for one wide group and for thousands of narrow ones.
    order = torch.argsort(groups, stable=True)
    present, counts = torch.unique_consecutive(groups[order], return_counts=True)
    present, counts = present.tolist(), counts.tolist()
    # Sorted once, every run of groups is a contiguous slice: no gather per run.
    xs, index_s = x.index_select(0, order), index.index_select(0, order)
    xs_sq = None if x_sq is None else x_sq.index_select(0, order)
    dist_s = torch.full(index.shape, torch.inf, dtype=x.dtype, device=x.device)
    starts = np.concatenate([[0], np.cumsum(counts)])
    off = offsets.tolist()
    i = 0
    while i < len(present):
        j, lo = i, off[present[i]]
        while j < len(present) and (j == i or off[present[j] + 1] - lo <= _BATCH_COLUMNS):
            j += 1
        hi = off[present[j - 1] + 1]
        step = max(256, _TILE_ELEMENTS // max(hi - lo, 1))  # bounds the tile for one very wide group
        for r0 in range(int(starts[i]), int(starts[j]) if hi > lo else 0, step):
            rows = slice(r0, min(r0 + step, int(starts[j])))
            tile = operand.tile(operand.rows(xs[rows]), lo, hi)
            cols = (index_s[rows] - lo).clamp_min(0)
            d = _finish(tile.gather(1, cols.to(tile.device)), None if xs_sq is None else xs_sq[rows])
            dist_s[rows] = torch.where(index_s[rows] >= 0, d, torch.full_like(d, torch.inf))
        i = j
    unsort = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))
    dist = dist_s.index_select(0, unsort)
    return dist, index


def grouped_nearest_reference(x, groups, centroids, offsets, *, metric="euclidean"):
    """Torch twin of :func:`grouped_nearest`."""
    dist, index = grouped_distances_reference(x, groups, centroids, offsets, metric=metric)
    best, slot = dist.min(1)  # first minimum: ties keep the lowest child
    label = index.gather(1, slot[:, None]).squeeze(1)
    return best, torch.where(torch.isfinite(best), label, torch.full_like(label, -1))


def grouped_topk_reference(x, groups, centroids, offsets, k, *, metric="euclidean"):
    """Torch twin of :func:`grouped_topk`."""
    dist, index = grouped_distances_reference(x, groups, centroids, offsets, metric=metric)
    if dist.shape[1] < k:
        pad = k - dist.shape[1]
        dist = torch.cat([dist, dist.new_full((dist.shape[0], pad), torch.inf)], 1)
        index = torch.cat([index, index.new_full((index.shape[0], pad), -1)], 1)
    dist, order = dist.sort(dim=1, stable=True)
    return dist[:, :k], index.gather(1, order[:, :k])


def grouped_nearest(x: torch.Tensor, groups, centroids: torch.Tensor, offsets, *, metric: str = "euclidean",
                    backend: str = "auto"):
    """Nearest child of each row's group.

    Parameters
    ----------
    x : torch.Tensor of shape (n, d)
    groups : int tensor of shape (n,)
        Group (parent) of every row, in ``[0, len(offsets) - 1)``.
    centroids : torch.Tensor of shape (n_children, d)
        Children of all groups, group by group.
    offsets : int tensor of shape (n_groups + 1,)
        CSR: the children of group ``g`` are rows ``offsets[g]:offsets[g + 1]`` of ``centroids``.
    metric : {"euclidean", "cosine"}
    backend : {"auto", "torch", "triton"}, default="auto"
        "auto": the Triton kernel (``grouped_assign_triton``) for fp16 / bf16 / fp32 tensors on
        CUDA, the torch twin elsewhere (as :func:`~mega_taxonomy.ops.nearest`).

    Returns
    -------
    distances : (n,) tensor, ``inf`` for rows whose group has no children
    indices : (n,) int64 tensor of global child indices, -1 for rows whose group has no children

    Examples
    --------
    >>> import torch
    >>> c = torch.tensor([[0.0], [10.0], [1.0], [5.0]])   # group 0: rows 0-1, group 1: rows 2-3
    >>> grouped_nearest(torch.tensor([[4.0], [4.0]]), torch.tensor([0, 1]), c, torch.tensor([0, 2, 4]))[1]
    tensor([0, 3])
    """
    if _use_triton(x, backend):
        from .grouped_assign_triton import grouped_nearest_dispatch

        return grouped_nearest_dispatch(x, groups, centroids, offsets, metric)
    return grouped_nearest_reference(x, groups, centroids, offsets, metric=metric)


def grouped_topk(x: torch.Tensor, groups, centroids: torch.Tensor, offsets, k: int, *, metric: str = "euclidean"):
    """The ``k`` nearest children of each row's group, nearest first: ``(n, k)`` distances and
    global indices, padded with ``inf`` / -1 where a group has fewer than ``k`` children."""
    return grouped_topk_reference(x, groups, centroids, offsets, k, metric=metric)
