"""Grouped assignment: every row is compared only with the children of its own parent.

A taxonomy level holds the children of all parents side by side (CSR: the children of parent
``g`` are ``centroids[offsets[g]:offsets[g + 1]]``). Fitting or walking a level assigns each row
to the nearest child of its parent, like a grouped GEMM: one call per batch, whatever the
number of parents.

``grouped_nearest`` / ``grouped_topk`` dispatch; ``*_reference`` are the torch twins: rows
sorted by group, then one matrix product per run of consecutive groups (rows of the run x all
its children), from which each row keeps its own group's columns. On the CPU,
``grouped_nearest`` runs numba, the compiled loop of ``grouped_assign/numba.py``, where groups are narrow
(a taxonomy's few children per node); wider groups, and ``grouped_topk``, work on numpy arrays in
parallel threads: big groups get products of their own, small ones go by buckets through
batched products (see ``_OWN_PRODUCT_ROWS``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...threads import parallel_map
from ..common import TILE_ELEMENTS, OperandCache, check, finish, prepare, use_triton
from .numba import MAX_CHILDREN, grouped_nearest_bounded, grouped_nearest_numba, narrow

__all__ = ["MAX_CHILDREN", "grouped_distances_reference", "grouped_nearest", "grouped_nearest_bounded",
           "grouped_nearest_reference", "grouped_topk", "grouped_topk_reference", "stable_order"]

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
    check(x, centroids, metric)
    offsets = torch.as_tensor(offsets, device=x.device, dtype=torch.int64)
    groups = torch.as_tensor(groups, device=x.device, dtype=torch.int64)
    x, x_sq, operand = prepare(x, centroids, metric)
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
        step = max(256, TILE_ELEMENTS // max(hi - lo, 1))  # bounds the tile for one very wide group
        for r0 in range(int(starts[i]), int(starts[j]) if hi > lo else 0, step):
            rows = slice(r0, min(r0 + step, int(starts[j])))
            tile = operand.tile(operand.rows(xs[rows]), lo, hi)
            cols = (index_s[rows] - lo).clamp_min(0)
            d = finish(tile.gather(1, cols.to(tile.device)), None if xs_sq is None else xs_sq[rows])
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


# On the CPU, groups with at least this many rows in a batch get matrix products of their own;
# smaller ones are stacked in buckets of equal width, padded to the bucket's largest group, and
# go through one batched product per bucket (65536 rows in 256 groups of 16 children: 13 ms
# against 22 ms for a product per run of groups; 4096 groups: 33 ms against 66 ms).
_OWN_PRODUCT_ROWS = 1024
_BUCKET_GROUPS = 32


def stable_order(values: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort(values, kind="stable")`` for integers in ``[0, bound)``; numpy sorts 16-bit
    integers by radix, 25x faster than int64 (65536 values: 0.1 ms against 2.6 ms)."""
    if bound <= np.iinfo(np.int16).max:
        values = values.astype(np.int16)
    return np.argsort(values, kind="stable")


def _cpu_work(starts, rows, lo, width):
    """The units of work of a batch sorted by group, from each present group's first sorted row,
    rows, first child and number of children: ``("own", r0, r1, lo, hi)`` row tiles of big groups
    and ``("bucket", indices)`` of small groups (indices into the given arrays)."""
    work = []
    for i in np.flatnonzero((rows >= _OWN_PRODUCT_ROWS) & (width > 0)).tolist():
        step = max(256, min(8192, TILE_ELEMENTS // int(width[i])))
        r0, r1 = int(starts[i]), int(starts[i] + rows[i])
        work += [("own", a, min(a + step, r1), int(lo[i]), int(lo[i] + width[i])) for a in range(r0, r1, step)]
    small = np.flatnonzero((rows < _OWN_PRODUCT_ROWS) & (width > 0))
    small = small[np.lexsort((rows[small], width[small]))]  # equal widths together, by size
    i = 0
    while i < len(small):
        j = i + 1
        while j < len(small) and j - i < _BUCKET_GROUPS and width[small[j]] == width[small[i]]:
            j += 1
        work.append(("bucket", small[i:j]))
        i = j
    return work


def _smallest(d, k):
    """(values, indices) of the ``k`` smallest along the last axis, nearest first, equal values
    by index."""
    i = d.argmin(-1)[..., None] if k == 1 else np.argsort(d, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(d, i, -1), i


def _grouped_topk_cpu(x, groups, centroids, offsets, k, metric):
    """``grouped_topk`` on the CPU, on numpy arrays, with the units of :func:`_cpu_work` in
    parallel threads. Units depend only on the batch's content, so a block's bits never depend
    on where it runs."""
    x, x_sq, operand = prepare(x, centroids, metric)
    g = np.asarray(groups, dtype=np.int64)
    off = np.asarray(offsets, dtype=np.int64)
    order = stable_order(g, len(off) - 1)
    sorted_groups = g[order]
    bounds = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1], True])
    present = sorted_groups[bounds[:-1]]
    starts, rows, lo = bounds[:-1], np.diff(bounds), off[present]
    width = off[present + 1] - lo
    xn, augmented = x.numpy(), operand.augmented
    best_s = np.full((len(g), k), np.inf, dtype=xn.dtype)
    label_s = np.full((len(g), k), -1, dtype=np.int64)

    def own(r0, r1, c0, c1):
        xr = np.empty((r1 - r0, xn.shape[1] + 1), dtype=xn.dtype)
        xr[:, :-1], xr[:, -1] = xn[order[r0:r1]], 1.0
        d, i = _smallest(operand.tile(xr, c0, c1, scratch=True).numpy(), k)
        best_s[r0:r1, :d.shape[1]], label_s[r0:r1, :d.shape[1]] = d, i + c0

    def bucket(members):
        m, w = int(rows[members].max()), int(width[members[0]])
        slot = np.arange(m)
        # (groups, m) sorted positions, short groups padded with their last row
        positions = starts[members, None] + np.minimum(slot[None, :], rows[members, None] - 1)
        xb = np.empty((len(members), m, xn.shape[1] + 1), dtype=xn.dtype)
        xb[..., :-1], xb[..., -1] = xn[order[positions]], 1.0
        cb = augmented[lo[members, None] + np.arange(w)[None, :]]  # (groups, w, d + 1)
        d, i = _smallest(np.matmul(xb, cb.transpose(0, 2, 1)), k)  # of (groups, m, w) distances
        valid = slot[None, :] < rows[members, None]
        at = positions[valid]
        best_s[at, :d.shape[2]] = d[valid]
        label_s[at, :d.shape[2]] = (i + lo[members, None, None])[valid]

    def run(unit):
        own(*unit[1:]) if unit[0] == "own" else bucket(unit[1])

    parallel_map(run, _cpu_work(starts, rows, lo, width))
    best, label = np.empty_like(best_s), np.empty_like(label_s)
    best[order], label[order] = best_s, label_s
    if x_sq is not None:
        best += x_sq.numpy()[:, None]
    return torch.from_numpy(np.maximum(best, 0, out=best)), torch.from_numpy(label)


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
                    backend: str = "auto", cache: OperandCache | None = None):
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
        "auto": the Triton kernel (``grouped_assign/triton.py``) for fp16 / bf16 / fp32 tensors on
        CUDA; on the CPU numba, the compiled kernel of ``grouped_assign/numba.py``, where no group
        has more than ``MAX_CHILDREN`` children, else the numpy path of ``_grouped_topk_cpu``; the
        torch twin elsewhere; "torch": the twin.
    cache : OperandCache, optional
        Where the centroids and offsets moved for the Triton kernel are kept from call to call
        (a pass's blocks share one); without it they are prepared every call.

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
    if use_triton(x, backend):
        from .triton import grouped_nearest_dispatch

        return grouped_nearest_dispatch(x, groups, centroids, offsets, metric, cache)
    if x.device.type == "cpu" and backend == "auto":
        groups, offsets = _numpy(groups, offsets)
        if narrow(offsets):
            return grouped_nearest_numba(x, groups, centroids, offsets, metric)
        d, i = _grouped_topk_cpu(x, groups, centroids, offsets, 1, metric)
        return d[:, 0], i[:, 0]
    return grouped_nearest_reference(x, groups, centroids, offsets, metric=metric)


def grouped_topk(x: torch.Tensor, groups, centroids: torch.Tensor, offsets, k: int, *, metric: str = "euclidean"):
    """The ``k`` nearest children of each row's group, nearest first: ``(n, k)`` distances and
    global indices, padded with ``inf`` / -1 where a group has fewer than ``k`` children."""
    if x.device.type == "cpu":
        groups, offsets = _numpy(groups, offsets)
        return _grouped_topk_cpu(x, groups, centroids, offsets, k, metric)
    return grouped_topk_reference(x, groups, centroids, offsets, k, metric=metric)


def _numpy(*arrays):
    return tuple(v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in arrays)
