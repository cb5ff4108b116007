"""Exact k nearest neighbours in low dimensions: kd-tree build and queries, and their torch twin.

``build_tree(points, leafsize)`` gives a :class:`Tree` (compiled CPU build, ``build.py``);
``tree_knn`` / ``tree_ball`` query it on this process's CPU threads (``numba.py``);
``knn_reference`` is the brute-force torch twin (float64, the tests' oracle); ``leaf_knn`` runs
the CUDA kernel (``triton.py``) over the tree's leaf buckets (``gpu_knn``, ``buckets.py``). Distances here are in the kernels'
space: squared for ``p=2``; ``index.KDTree`` turns them into scipy's true distances.

Examples
--------
>>> import numpy as np
>>> points = np.random.default_rng(0).random((1000, 3))
>>> tree = build_tree(points, leafsize=32)
>>> d2, rows, examined = tree_knn(tree, points[:2], k=2)
>>> rows[:, 0].tolist(), d2[:, 0].tolist()
([0, 1], [0.0, 0.0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...threads import cpu_threads, map_in_threads
from . import build as _build_kernels
from . import numba as _kernels
from .buckets import DeviceTree, bucket_knn

#: scipy's ``p`` -> the kernels' code (0 is Chebyshev, p = inf)
P_CODES = {1: 1, 2: 2, math.inf: 0}
GPU_MAX_K = 32  # the Triton kernel keeps at most this many neighbours in registers (triton.MAX_K)
ORDER_DEPTH = 10  # levels of the descent that orders queries (numba.leaf_of)
SPLIT_PARALLEL_ROWS = 1 << 16  # below this a build is one subtree: threads would cost more than they give


def p_code(p) -> int:
    try:
        return P_CODES[float(p) if p != math.inf else math.inf]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"p must be 1, 2 or inf, not {p!r}") from None


@dataclass
class Tree:
    """A kd-tree: points in leaf order as (d, n) float64, ``perm`` their original rows, node arrays."""

    pts: np.ndarray
    perm: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    lefts: np.ndarray
    rights: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    dims: np.ndarray
    splits: np.ndarray

    @property
    def n(self) -> int:
        return self.pts.shape[1]

    @property
    def arrays(self) -> tuple:
        return (self.pts, self.perm, self.starts, self.ends, self.lefts, self.rights, self.lo, self.hi, self.dims,
                self.splits)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def build_tree(points, leafsize: int = 32) -> Tree:
    """The kd-tree of ``points`` ((n, d) array): the top levels split here, then one subtree per
    range on the CPU threads (4 ranges a thread, so uneven subtrees still share out), stitched."""
    # a copy always: the build permutes it in place (the transpose of an (n, 1) array is a view)
    pts = np.array(np.asarray(points, dtype=np.float64).T, order="C", copy=True)
    n = pts.shape[1]
    perm = np.arange(n, dtype=np.int64)
    if n == 0:
        empty = np.empty(0, np.int64)
        box = np.empty((0, pts.shape[0]))
        return Tree(pts, perm, empty, empty, empty, empty, box, box, empty, np.empty(0))
    levels = 0 if n < SPLIT_PARALLEL_ROWS else max(0, math.ceil(math.log2(4 * cpu_threads())))
    top, jobs = [[], [], [], [], [], []], []

    def split(start, end, depth):
        node = len(top[0])
        for column, value in zip(top, (start, end, -1, -1, 0, 0.0)):
            column.append(value)
        if depth == levels or end - start <= leafsize:
            jobs.append((node, start, end))
            return node
        mid, top[4][node], top[5][node] = _build_kernels.split_node(pts, perm, start, end)
        top[2][node] = split(start, mid, depth + 1)
        top[3][node] = split(mid, end, depth + 1)
        return node

    split(0, n, 0)
    subtrees = map_in_threads(lambda job: _build_kernels.build_subtree(pts, perm, job[1], job[2], leafsize), jobs)
    columns = [np.array(c, np.int64) for c in top[:5]] + [np.array(top[5], np.float64)]
    parts, base = [[c] for c in columns], len(columns[0])
    for (node, _, _), (starts, ends, lefts, rights, dims, splits) in zip(jobs, subtrees):
        # local id t >= 1 becomes base + t - 1; the local root is the top node itself
        lefts, rights = (np.where(ids >= 0, ids + base - 1, -1) for ids in (lefts, rights))
        for column, values in zip(columns[2:], (lefts, rights, dims, splits)):
            column[node] = values[0]
        for part, values in zip(parts, (starts, ends, lefts, rights, dims, splits)):
            part.append(values[1:])
        base += len(starts) - 1
    starts, ends, lefts, rights, dims, splits = (np.concatenate(p) for p in parts)
    lo, hi = _build_kernels.bounding_boxes(pts, starts, ends, lefts, rights)
    return Tree(pts, perm, starts, ends, lefts, rights, lo, hi, dims, splits)


def _chunks(n: int, threads: int) -> list[tuple[int, int]]:
    size = int(min(8192, max(256, -(-n // (threads * 8)))))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _run(work, n, workers):
    """``work(a, b)`` over chunks of n queries: on the CPU threads, or in this thread (workers=1)."""
    threads = cpu_threads() if workers in (-1, None) or workers > 1 else 1
    chunks = _chunks(n, threads)
    if threads == 1:
        return [work(c) for c in chunks]
    return map_in_threads(work, chunks)


def tree_knn(tree: Tree, queries, k: int, p=2, bound=math.inf, boxsize=None, skip=None, workers=-1,
             order=True):
    """The k nearest rows of every query: (distances (q, k) in kernel space, rows (q, k) int64 with
    ``n`` where missing, points examined). ``bound``: exclusive, in kernel space. ``order``: walk
    the queries in the order of their leaves (results still in query order)."""
    queries = np.ascontiguousarray(queries, dtype=np.float64)
    q, code = len(queries), p_code(p)
    box = np.empty(0) if boxsize is None else np.asarray(boxsize, np.float64)
    skip = np.full(q, -1, np.int64) if skip is None else np.asarray(skip, np.int64)
    out_d, out_i = np.empty((q, k)), np.empty((q, k), np.int64)
    if tree.n == 0 or k == 0:
        out_d[:], out_i[:] = np.inf, tree.n
        return out_d, out_i, 0
    perm = None
    if order and q > 1:
        leaves = np.concatenate(_run(lambda c: _kernels.leaf_of(tree.starts, tree.lefts, tree.rights, tree.dims,
                                                               tree.splits, queries[c[0]:c[1]], ORDER_DEPTH), q, workers))
        perm = np.argsort(leaves, kind="stable")
        queries, skip = queries[perm], skip[perm]

    def work(c):
        a, b = c
        return _kernels.knn(*tree.arrays, queries[a:b], skip[a:b], k, code, float(bound), box, out_d[a:b], out_i[a:b])

    examined = int(sum(_run(work, q, workers)))
    if perm is not None:
        back_d, back_i = np.empty_like(out_d), np.empty_like(out_i)
        back_d[perm], back_i[perm] = out_d, out_i
        out_d, out_i = back_d, back_i
    return out_d, out_i, examined


def tree_ball(tree: Tree, queries, r, p=2, boxsize=None, workers=-1):
    """Rows within ``r`` (inclusive, kernel space; a scalar or one per query) of every query:
    (offsets (q + 1,), rows) in CSR form, each query's rows sorted."""
    queries = np.ascontiguousarray(queries, dtype=np.float64)
    q, code = len(queries), p_code(p)
    box = np.empty(0) if boxsize is None else np.asarray(boxsize, np.float64)
    r = np.broadcast_to(np.asarray(r, np.float64), (q,)).copy()
    offsets = np.zeros(q + 1, np.int64)
    if tree.n == 0:
        return offsets, np.empty(0, np.int64)

    def count(c):
        a, b = c
        _kernels.ball(*tree.arrays, queries[a:b], r[a:b], code, box, offsets[a:b + 1], np.empty(0, np.int64))

    _run(count, q, workers)
    np.cumsum(offsets, out=offsets)
    rows = np.empty(offsets[-1], np.int64)

    def fill(c):
        a, b = c
        _kernels.ball(*tree.arrays, queries[a:b], r[a:b], code, box, offsets[a:b + 1] - offsets[a], rows[offsets[a]:])

    _run(fill, q, workers)
    return offsets, rows


def knn_reference(points, queries, k: int, p=2, bound=math.inf, boxsize=None, skip=None):
    """Brute force in float64 (the torch twin): (distances (q, k) in kernel space, rows (q, k)),
    ties by row, ``n`` and inf where fewer than k rows lie within ``bound`` (exclusive).
    ``skip[j]`` >= 0 leaves that row out of query j's answer. Queries go in chunks of about
    2**23 differences, so memory stays bounded."""
    x = torch.as_tensor(np.asarray(points), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(queries), dtype=torch.float64)
    skip = torch.full((len(y),), -1, dtype=torch.int64) if skip is None else torch.as_tensor(np.asarray(skip))
    box = None if boxsize is None else torch.as_tensor(
        np.broadcast_to(np.asarray(boxsize, np.float64), (x.shape[1],)).copy())
    step = max(1, (1 << 23) // max(1, x.numel()))
    parts = [_reference_chunk(x, y[a:a + step], skip[a:a + step], k, p_code(p), bound, box)
             for a in range(0, len(y), step)]
    if not parts:
        return np.empty((0, k)), np.empty((0, k), np.int64)
    return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])


def _reference_chunk(x, y, skip, k, code, bound, box):
    n = x.shape[0]
    delta = (y[:, None, :] - x[None, :, :]).abs()
    if box is not None:
        delta = torch.minimum(delta, box - delta)
    if code == 0 and delta.shape[2]:
        d = delta.amax(2)
    else:
        d = (delta * delta).sum(2) if code == 2 else delta.sum(2)
    d = torch.where(d < bound, d, torch.full_like(d, math.inf))
    keep = skip >= 0
    d[torch.arange(len(y))[keep], skip[keep]] = math.inf
    values, order = torch.sort(d, dim=1, stable=True)
    values, order = values[:, :k], order[:, :k]
    order = torch.where(torch.isinf(values), torch.full_like(order, n), order)
    pad = k - values.shape[1]
    if pad > 0:
        values = torch.cat([values, torch.full((len(y), pad), math.inf, dtype=torch.float64)], 1)
        order = torch.cat([order, torch.full((len(y), pad), n, dtype=torch.int64)], 1)
    return values.numpy(), order.numpy()


def gpu_knn(device_tree, queries: torch.Tensor, k: int, bound=math.inf):
    """The k nearest rows of every query on CUDA (p=2, no periodic box): the bucket scan of
    ``buckets.py`` with the Triton kernel; (squared distances, rows) as tensors on the device."""
    from .triton import bucket_scan_triton  # triton is optional: imported where it is used

    return bucket_knn(device_tree, queries, k, bound=bound, scan=bucket_scan_triton)


__all__ = ["GPU_MAX_K", "P_CODES", "DeviceTree", "Tree", "build_tree", "gpu_knn", "knn_reference", "p_code", "tree_ball",
           "tree_knn"]
