"""KDTree: exact nearest neighbours in low and middle dimensions, with scipy's API.

Built and queried by the compiled kernels of ``ops.knn`` (buckets of 32 points stored as a
structure of arrays, splits on the dimension of highest variance at a sampled median, queries
spread over this process's CPU threads in the order of their leaves).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from .._estimator import as_source
from ..errors import DataError
from ..ops.knn import GPU_MAX_K, DeviceTree, Tree, build_tree, gpu_knn, p_code, tree_ball, tree_knn
from ..storage import Store
from ..storage.schema import KDTREE_ARRAYS, kdtree_file

# From this many queries on, a machine with CUDA answers on the GPU (the bucket scan): below it,
# the copies and the launch cost more than the CPU threads take.
GPU_MIN_QUERIES = 1 << 16


def read_points(data):
    """(points (n, d) float64, ids (n,) int64) of an array, tensor, path or source, every row checked."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if isinstance(data, np.ndarray) and data.ndim != 2:
        raise DataError(f"points must be a 2-d array (n, d), not of shape {data.shape}")
    source = as_source(data)
    blocks = list(source.blocks())  # validates every row (a DataError names the file, row and column)
    if not blocks:
        return np.empty((0, source.dim)), np.empty(0, np.int64)
    points = np.concatenate([np.asarray(b.vectors, dtype=np.float64) for b in blocks])
    return points, np.concatenate([b.ids for b in blocks]).astype(np.int64)


def as_queries(x, dim):
    """Queries as (q, d) float64 and the leading shape of the answer; a DataError names a bad row."""
    x = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] != dim:
        raise DataError(f"queries must have {dim} values in their last dimension, not shape {x.shape}")
    flat = x.reshape(-1, dim)
    bad = ~np.isfinite(flat)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise DataError(f"query value {flat[row, column]} at dimension {column} (queries must be finite)", row=int(row))
    return flat, x.shape[:-1]


class KDTree:
    """Exact k nearest neighbours by a kd-tree, with ``scipy.spatial.cKDTree``'s API and results.

    Parameters
    ----------
    data : array-like (n, d), torch.Tensor, path(s) of parquet / npy files, or VectorSource
        The points. Read once into memory as float64 (the tree keeps its own copy, in leaf order).
    leafsize : int, default=32
        Most points in a leaf (a bucket scanned as a whole, as PANDA's).
    boxsize : float or array of d floats, optional
        Periodic boundaries (N-body boxes): dimension ``j`` wraps around at ``boxsize[j]``. The data
        must lie in ``[0, boxsize)``; queries are wrapped into the box.

    Attributes
    ----------
    data : ndarray (n, d) float64
    n, m : int
        Number of points and their dimension.
    ids : ndarray (n,) int64
        The source's row ids (the row ordinals unless it has an id column); ``query`` answers row
        positions ``0..n-1``, as scipy does.

    Notes
    -----
    Neighbours come in increasing distance, ties between equal distances by the smaller row, so a
    float64 brute force sorted by (distance, row) gives the same rows. Distances are true
    distances in float64 (not squared). Missing neighbours (``k > n``, or none within
    ``distance_upper_bound``, which is exclusive) are ``inf`` with index ``n``.

    Examples
    --------
    >>> import numpy as np
    >>> from mega_taxonomy.index import KDTree
    >>> points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> tree = KDTree(points)
    >>> tree.query([0.1, 0.0], k=2)
    (array([0.1, 0.9]), array([0, 1]))
    >>> tree.query_ball_point([0.0, 0.0], 1.0)
    [0, 1]
    >>> tree.query_self(k=1)
    (array([[1.],
           [1.],
           [2.]]), array([[1],
           [0],
           [0]]))
    """

    def __init__(self, data, leafsize=32, boxsize=None):
        if isinstance(leafsize, bool) or not isinstance(leafsize, (int, np.integer)) or leafsize < 1:
            raise ValueError(f"leafsize must be a positive int, not {leafsize!r}")
        self.data, self.ids = read_points(data)
        self.n, self.m = self.data.shape
        self.leafsize = int(leafsize)
        self.boxsize = None
        if boxsize is not None:
            box = np.broadcast_to(np.asarray(boxsize, dtype=np.float64), (self.m,)).copy()
            if not (np.isfinite(box).all() and (box > 0).all()):
                raise ValueError(f"boxsize must be positive and finite, not {boxsize!r}")
            outside = (self.data < 0) | (self.data >= box)
            if outside.any():
                row, column = np.argwhere(outside)[0]
                raise DataError(f"value {self.data[row, column]} at dimension {column} is outside the periodic "
                                f"box [0, {box[column]})", row=int(row))
            self.boxsize = box
        self._tree = build_tree(self.data, self.leafsize)

    @property
    def size(self) -> int:
        """Number of nodes."""
        return len(self._tree.starts)

    def _queries(self, x):
        flat, shape = as_queries(x, self.m)
        if self.boxsize is not None:
            flat = np.mod(flat, self.boxsize)
            flat[flat >= self.boxsize] = 0.0  # np.mod of a tiny negative value rounds up to the box side
        return flat, shape

    def _true(self, d, p):
        """Kernel distances (squared for p=2) as true ones."""
        return np.sqrt(d, out=d) if p_code(p) == 2 else d

    def _bound(self, r, p):
        r = float(r)
        return r * r if p_code(p) == 2 and math.isfinite(r) else r

    def query(self, x, k=1, eps=0, p=2, distance_upper_bound=math.inf, workers=-1):
        """The ``k`` nearest points of each query, as ``cKDTree.query``.

        Parameters
        ----------
        x : array-like (..., m) or torch.Tensor
        k : int or sequence of int
            The number of neighbours, or the ranks wanted (1-based: ``k=[2]`` is the second nearest).
        eps : 0
            Exact search only (scipy's approximate ``eps`` is refused).
        p : {1, 2, inf}
        distance_upper_bound : float
            Only neighbours strictly closer than this.
        workers : int
            -1 (default): all of this process's CPU threads; 1: this thread only.

        Returns
        -------
        d : float64 array of shape ``x.shape[:-1] + (len(k),)`` (no last axis for ``k=1``; scalars
            for one point and ``k=1``)
        i : int64 array of the same shape (``n`` where missing)
        """
        if eps != 0:
            raise ValueError("eps must be 0: KDTree answers exact neighbours only")
        ranks, squeeze = _ranks(k)
        bound = self._bound(distance_upper_bound, p)
        on_device = isinstance(x, torch.Tensor) and x.is_cuda and x.ndim >= 1 and x.shape[-1] == self.m
        if on_device and self._on_gpu(x.numel() // self.m, max(ranks), p):
            return self._gpu_query(x, ranks, squeeze, bound)  # queries stay on the GPU, and the answers
        flat, shape = self._queries(x)
        if self._on_gpu(len(flat), max(ranks), p):
            d, i = gpu_knn(self._on(torch.device("cuda")), torch.as_tensor(flat, device="cuda"), max(ranks), bound)
            d, i = d.cpu().numpy(), i.cpu().numpy()
        else:
            d, i, _ = tree_knn(self._tree, flat, max(ranks), p=p, bound=bound, boxsize=self.boxsize, workers=workers)
        d, i = self._true(d, p)[:, np.asarray(ranks) - 1], i[:, np.asarray(ranks) - 1]
        d, i = d.reshape(shape + (len(ranks),)), i.reshape(shape + (len(ranks),))
        if squeeze:
            d, i = d[..., 0], i[..., 0]
            if not shape:
                return float(d), int(i)
        return _like(x, d), _like(x, i)

    def _on_gpu(self, n_queries, k, p) -> bool:
        """The CUDA path: many queries, p=2, no periodic box, k the kernel holds, and a GPU."""
        return (n_queries >= GPU_MIN_QUERIES and k <= GPU_MAX_K and p_code(p) == 2 and self.boxsize is None
                and torch.cuda.is_available())

    def _on(self, device) -> DeviceTree:
        """The tree's arrays on ``device``, copied once and kept for later queries."""
        if getattr(self, "_device_tree", None) is None or self._device_tree.pts.device != device:
            self._device_tree = DeviceTree(self._tree, device)
        return self._device_tree

    def _gpu_query(self, x, ranks, squeeze, bound):
        """``query`` of a CUDA tensor, checked and answered on its device (tensors back)."""
        q = x.reshape(-1, self.m)
        if not bool(torch.isfinite(q).all()):
            row = int(torch.nonzero(~torch.isfinite(q))[0, 0])
            raise DataError("query values must be finite", row=row)
        d, i = gpu_knn(self._on(x.device), q, max(ranks), bound)
        cols = torch.as_tensor(np.asarray(ranks) - 1, device=x.device)
        d, i = d.sqrt()[:, cols], i[:, cols]
        shape = tuple(x.shape[:-1]) + (len(ranks),)
        d, i = d.reshape(shape), i.reshape(shape)
        return (d[..., 0], i[..., 0]) if squeeze else (d, i)

    def query_self(self, k=1, p=2, distance_upper_bound=math.inf, workers=-1):
        """Every point's ``k`` nearest other points (itself excluded; a duplicate of it is not):
        (distances (n, k), indices (n, k)). Points are walked in leaf order, so neighbouring
        queries share their branches in cache."""
        k = check_k(k)
        tree = self._tree
        queries = tree.pts.T.copy()
        d, i, _ = tree_knn(tree, queries, k, p=p, bound=self._bound(distance_upper_bound, p), boxsize=self.boxsize,
                           skip=tree.perm, workers=workers, order=False)
        out_d, out_i = np.empty_like(d), np.empty_like(i)
        out_d[tree.perm], out_i[tree.perm] = self._true(d, p), i
        return out_d, out_i

    def query_ball_point(self, x, r, p=2.0, eps=0, workers=-1, return_sorted=None, return_length=False):
        """The points within distance ``r`` (inclusive) of each query, as ``cKDTree.query_ball_point``:
        a list for one point, else an object array of lists of the queries' shape (each list
        sorted, whatever ``return_sorted`` says); with ``return_length``, their sizes instead."""
        if eps != 0:
            raise ValueError("eps must be 0: KDTree answers exact neighbours only")
        flat, shape = self._queries(x)
        r = np.broadcast_to(np.asarray(r, np.float64), shape).reshape(-1)
        r = r * r if p_code(p) == 2 else r
        offsets, rows = tree_ball(self._tree, flat, r, p=p, boxsize=self.boxsize, workers=workers)
        if return_length:
            counts = np.diff(offsets).reshape(shape)
            return int(counts) if not shape else counts
        lists = [rows[a:b].tolist() for a, b in itertools.pairwise(offsets)]
        if not shape:
            return lists[0]
        out = np.empty(len(lists), dtype=object)
        out[:] = lists
        return out.reshape(shape)

    def save(self, uri, *, storage_options=None) -> dict:
        """Write the tree to a Store (``kdtree/*.npy``, manifest kind "kdtree"): :meth:`load` gives
        it back without building again. Returns the committed manifest."""
        store = Store(uri, storage_options=storage_options)
        tree = self._tree
        arrays = {"ids": self.ids, **{name: getattr(tree, name) for name in KDTREE_ARRAYS if name != "ids"}}
        for name in KDTREE_ARRAYS:
            store.put_array(kdtree_file(name), arrays[name])
        box = None if self.boxsize is None else self.boxsize.tolist()
        return store.commit(kind="kdtree", params={"leafsize": self.leafsize, "boxsize": box}, status="built",
                            n=self.n, dim=self.m)

    @classmethod
    def load(cls, uri, *, storage_options=None) -> KDTree:
        """A KDTree written by :meth:`save`."""
        store = Store(uri, storage_options=storage_options)
        manifest = store.manifest_of("kdtree", "kd-tree")
        arrays = {name: np.asarray(store.get_array(kdtree_file(name))) for name in KDTREE_ARRAYS}
        self = cls.__new__(cls)
        self.ids = arrays.pop("ids")
        self._tree = Tree(**arrays)
        self.n, self.m = manifest["meta"]["n"], manifest["meta"]["dim"]
        self.data = np.empty((self.n, self.m))
        self.data[self._tree.perm] = self._tree.pts.T
        self.leafsize = manifest["params"]["leafsize"]
        box = manifest["params"]["boxsize"]
        self.boxsize = None if box is None else np.asarray(box, np.float64)
        return self

    def __repr__(self):
        return f"KDTree(n={self.n}, m={self.m}, leafsize={self.leafsize}, boxsize={self.boxsize})"


def check_k(k) -> int:
    """``k`` as a positive int (ValueError otherwise)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, not {k!r}")
    return int(k)


def _ranks(k):
    """(1-based ranks, whether the last axis goes): scipy's ``k`` as an int or a list of ranks."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        return list(range(1, check_k(k) + 1)), k == 1
    ranks = [check_k(r) for r in k]
    if not ranks:
        raise ValueError("k must not be empty")
    return ranks, False


def _like(x, array):
    """Arrays out, tensors out for tensors in (on the queries' device)."""
    return torch.from_numpy(array).to(x.device) if isinstance(x, torch.Tensor) else array
