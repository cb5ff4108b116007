"""DistributedKDTree: exact kNN over a pool of workers, PANDA's scheme.

A global kd-tree (``routing.GlobalTree``) cuts space into one region per worker; every point
goes to the worker of its region, which builds a local kd-tree (``ops.knn``, buckets of 32). A
query goes to the owner of its region first; the k-th distance found there, ``r'``, bounds the
answer, so the query is forwarded only to the workers whose box of points lies within ``r'``,
and the candidates are merged by (distance, id). Queries go in batches, and the owners of batch
``b + 1`` are asked while batch ``b``'s forwards are answered, so the two phases overlap.

Where it runs: ``runtime.pool`` (``LocalRuntime``: objects in this process, their kernels on the
CPU threads; ``RayRuntime``: one Ray actor per worker). The driver reads the points and routes
them; at scale the workers would read their own shards and exchange points among themselves
(``docs/scaling.md``).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..ops.knn import build_tree, p_code, tree_knn
from ..runtime.local import LocalRuntime
from .kdtree import as_queries, check_k, read_points
from .routing import GlobalTree, box_distances, merge

MISSING = np.iinfo(np.int64).max  # a missing neighbour's id while merging: sorts after every real id


class PandaWorker:
    """One worker: the points of its region (sorted by global id, so that ties by local row are
    ties by id) and their local kd-tree."""

    def __init__(self, rank: int):
        self.rank = rank
        self._chunks, self.ids, self.tree = [], np.empty(0, np.int64), None

    def add(self, ids, points):
        self._chunks.append((np.asarray(ids, np.int64), np.asarray(points, np.float64)))
        return len(ids)

    def build(self, leafsize, dim):
        """Build the local tree from the points added since the last build: (count, box lo, box hi, seconds)."""
        start = time.perf_counter()
        ids = np.concatenate([c[0] for c in self._chunks]) if self._chunks else np.empty(0, np.int64)
        points = np.concatenate([c[1] for c in self._chunks]) if self._chunks else np.empty((0, dim))
        self._chunks = []
        order = np.argsort(ids, kind="stable")
        self.ids, points = ids[order], points[order]
        self.tree = build_tree(points, leafsize) if len(ids) else None
        lo = points.min(0) if len(ids) else np.full(dim, np.inf)
        hi = points.max(0) if len(ids) else np.full(dim, -np.inf)
        return len(ids), lo, hi, time.perf_counter() - start

    def query(self, queries, k, p, bound):
        """The k nearest of this worker's points: (distances in kernel space, global ids, examined)."""
        if self.tree is None:
            return np.full((len(queries), k), np.inf), np.full((len(queries), k), MISSING), 0
        d, rows, examined = tree_knn(self.tree, queries, k, p=p, bound=bound)
        ids = np.append(self.ids, MISSING)[rows]  # row n (missing) -> MISSING
        return d, ids, examined


class DistributedKDTree:
    """Exact k nearest neighbours over ``n_workers`` workers (PANDA).

    Parameters
    ----------
    source : array-like (n, d), torch.Tensor, path(s) of parquet / npy files, or VectorSource
    n_workers : int, default=8
    runtime : LocalRuntime or RayRuntime, optional
        Where the workers live (default: in this process).
    leafsize : int, default=32
    batch_size : int, default=65536
        Queries per batch of the pipeline.
    rebalance : float, default=0.1
        ``update`` rebuilds the global tree when a worker's share of the points drifts past
        ``(1 + rebalance)`` times the mean.

    Attributes
    ----------
    counters_ : dict
        Of the last ``query``: queries, worker visits (owner and forwards), ``visits_per_query``,
        ``forwarded`` (queries sent past their owner), ``points_examined``, ``bytes_moved``
        (queries out and answers back); and of the build or last update: ``build_bytes_moved``,
        ``shares``, ``rebalanced``.

    Examples
    --------
    >>> import numpy as np
    >>> from mega_taxonomy.index import DistributedKDTree, KDTree
    >>> x = np.random.default_rng(0).random((4000, 3))
    >>> tree = DistributedKDTree(x, n_workers=4)
    >>> d, i = tree.query(x[:5], k=3)
    >>> bool((i == KDTree(x).query(x[:5], k=3)[1]).all())
    True
    >>> tree.close()
    """

    def __init__(self, source, n_workers=8, runtime=None, leafsize=32, batch_size=65_536, rebalance=0.1):
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive int, not {n_workers!r}")
        self.n_workers, self.leafsize, self.batch_size, self.rebalance = n_workers, leafsize, batch_size, rebalance
        points, self.ids = read_points(source)
        self.n, self.dim = points.shape
        self.runtime = runtime if runtime is not None else LocalRuntime(device="cpu", progress=False)
        self.pool = self.runtime.pool(PandaWorker, n_workers)
        self._threads = ThreadPoolExecutor(max_workers=max(2, 2 * n_workers))
        self.counters_ = {}
        start = time.perf_counter()
        self.global_tree = GlobalTree.fit(points, n_workers)
        self._distribute(points)
        self.build_seconds_ = time.perf_counter() - start

    def _all(self, calls):
        """``[pool.call(rank, method, *args)]`` for ``(rank, method, args)`` at once (a thread each)."""
        futures = [self._threads.submit(self.pool.call, rank, method, *args) for rank, method, args in calls]
        return [f.result() for f in futures]

    def _distribute(self, points):
        owner = self.global_tree.owner(points)
        moved, calls = 0, []
        for rank in range(self.n_workers):
            rows = np.flatnonzero(owner == rank)
            for a in range(0, max(len(rows), 1), 1 << 20):  # messages of at most 1M points
                part = rows[a:a + (1 << 20)]
                calls.append((rank, "add", (self.ids[part], points[part])))
                moved += self.ids[part].nbytes + points[part].nbytes
        self._all(calls)
        built = self._all([(rank, "build", (self.leafsize, self.dim)) for rank in range(self.n_workers)])
        self.counts_ = np.array([b[0] for b in built])
        self.lo_, self.hi_ = np.stack([b[1] for b in built]), np.stack([b[2] for b in built])
        self.worker_build_seconds_ = [b[3] for b in built]
        self.counters_.update(build_bytes_moved=moved, shares=(self.counts_ / max(1, self.n)).tolist())

    def update(self, positions):
        """New coordinates for the same points (rows in the order of the source given at the start).
        The global tree is refitted only when a worker's share drifts past the bound; every worker
        rebuilds its local tree. Returns whether the global tree was refitted."""
        points, _ = read_points(positions)
        if points.shape != (self.n, self.dim):
            raise ValueError(f"positions must have shape {(self.n, self.dim)}, not {points.shape}")
        counts = np.bincount(self.global_tree.owner(points), minlength=self.n_workers)
        rebalanced = bool(counts.max() > (1 + self.rebalance) * self.n / self.n_workers)
        if rebalanced:
            self.global_tree = GlobalTree.fit(points, self.n_workers)
        self._distribute(points)
        self.counters_["rebalanced"] = rebalanced
        return rebalanced

    def query(self, x, k=1, distance_upper_bound=math.inf, p=2):
        """The ``k`` nearest points of every query: (distances, global ids), each (q, k), or (q,)
        for ``k=1``, as ``KDTree.query`` gives them (true distances; inf and ``n`` where missing,
        so with a source's own id column, tell a missing neighbour by its infinite distance; ties
        by the smaller id). Counters of the run in ``counters_``."""
        queries, _ = as_queries(x, self.dim)
        k, code = check_k(k), p_code(p)
        bound = float(distance_upper_bound) ** 2 if code == 2 else float(distance_upper_bound)
        stats = {"queries": len(queries), "visits": 0, "forwarded": 0, "points_examined": 0, "bytes_moved": 0}
        out_d, out_i = np.empty((len(queries), k)), np.empty((len(queries), k), np.int64)
        batches = [range(a, min(a + self.batch_size, len(queries))) for a in range(0, len(queries), self.batch_size)]
        pending = self._ask_owners(queries[batches[0].start:batches[0].stop], k, p, bound) if batches else None
        for b, batch in enumerate(batches):
            owners = pending.result()
            if b + 1 < len(batches):  # the owners of the next batch work while this one is forwarded
                nxt = batches[b + 1]
                pending = self._ask_owners(queries[nxt.start:nxt.stop], k, p, bound)
            for key, value in owners[3].items():
                stats[key] += value
            d, i = self._forward(queries[batch.start:batch.stop], owners[:3], k, p, code, bound, stats)
            out_d[batch.start:batch.stop], out_i[batch.start:batch.stop] = d, i
        out_i[out_i == MISSING] = self.n
        if code == 2:
            np.sqrt(out_d, out=out_d)
        stats["visits_per_query"] = stats["visits"] / max(1, len(queries))
        self.counters_.update(stats)
        return (out_d[:, 0], out_i[:, 0]) if k == 1 else (out_d, out_i)

    def _ask_owners(self, part, k, p, bound):
        """A future of (owner, distances, ids, counters) of the queries ``part`` at their owners."""
        owner = self.global_tree.owner(part)
        calls = [(rank, np.flatnonzero(owner == rank)) for rank in range(self.n_workers)]
        calls = [(rank, rows) for rank, rows in calls if len(rows)]

        def run():
            answers = self._all([(rank, "query", (part[rows], k, p, bound)) for rank, rows in calls])
            d, i = np.empty((len(part), k)), np.empty((len(part), k), np.int64)
            stats = {"visits": len(part), "points_examined": 0, "bytes_moved": 0}
            for (_, rows), (dw, iw, examined) in zip(calls, answers):
                d[rows], i[rows] = dw, iw
                stats["points_examined"] += examined
                stats["bytes_moved"] += part[rows].nbytes + dw.nbytes + iw.nbytes
            return owner, d, i, stats

        return self._threads.submit(run)

    def _forward(self, part, owners, k, p, code, bound, stats):
        """Send each query to the other workers whose box lies within its k-th distance so far."""
        owner, d, i = owners
        radius = np.minimum(d[:, -1], bound)
        near = box_distances(part, self.lo_, self.hi_, code)
        # <= : a point exactly at the k-th distance with a smaller id would still enter
        visit = (near <= radius[:, None]) & (near < bound)
        visit[np.arange(len(part)), owner] = False
        calls = [(rank, np.flatnonzero(visit[:, rank])) for rank in range(self.n_workers)]
        calls = [(rank, rows) for rank, rows in calls if len(rows)]
        answers = self._all([(rank, "query", (part[rows], k, p, bound)) for rank, rows in calls])
        for (_, rows), (dw, iw, examined) in zip(calls, answers):
            d[rows], i[rows] = merge(d[rows], i[rows], dw, iw, k)
            stats["points_examined"] += examined
            stats["visits"] += len(rows)
            stats["bytes_moved"] += part[rows].nbytes + dw.nbytes + iw.nbytes
        stats["forwarded"] += int(visit.any(1).sum())
        return d, i

    def close(self):
        """Stop the workers."""
        self.pool.close()
        self._threads.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"DistributedKDTree(n={self.n}, dim={self.dim}, n_workers={self.n_workers})"
