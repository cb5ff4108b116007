"""A bounded cache of predicted paths by row id, kept in a :class:`~mega_taxonomy.kv.HashTable`."""

from __future__ import annotations

import numpy as np
import torch

from ..kv import EvictStrategy, HashTable
from .tree import Tree


class PathCache:
    """Paths that :meth:`TaxonomyEngine.predict` found, by the rows' ids: at most about
    ``capacity`` ids, the least recently predicted given up first.

    For predictions over data in which the same ids come back (a labelling job that reruns over
    overlapping shards, a service that sees popular items again and again): a row whose id is
    cached is not routed, its path and leaf distance come from the cache, and every row predicted
    renews its id's place. A row's vector is taken not to change while its id is cached: call
    :meth:`clear` after the rows are embedded again. The ids are a source's id column (integers);
    ids that the table reserves (-4 to -1 as int64, the four highest as uint64) are routed every
    time. The cache holds the paths of one tree and one beam; given another, it starts empty.

    The entries live in a ``HashTable`` of LRU scores (``table``): an id's path and distance as
    float64 values (exact for both), in buckets of 128 slots; a full bucket gives up its least
    recently predicted id, so the cache may hold a little fewer than ``capacity`` ids when their
    buckets fill unevenly.

    Parameters
    ----------
    capacity : int
        Ids kept at most (rounded up to whole buckets of a power-of-two table).
    device : str, default="cpu"
        Where the table lives ("cpu": compiled loops in host memory, next to the paths that
        predict returns; "cuda": GPU memory).

    Attributes
    ----------
    hits, misses : int
        Rows found in the cache, and rows routed, over this cache's life.

    Examples
    --------
    Through ``engine.predict(files, cache=cache)``; here by hand, with the rows' ordinals as ids:

    >>> import numpy as np
    >>> from mega_taxonomy import TaxonomyEngine
    >>> X = np.random.default_rng(0).normal(size=(200, 4)).astype("float32")
    >>> engine = TaxonomyEngine(n_levels=2, branching_factor=[3, 2], device="cpu", random_state=0).fit(X)
    >>> cache = PathCache(1000)
    >>> route = lambda rows: engine.transform_paths(X[rows])  # the rows that the cache lacks
    >>> paths, distances = cache.paths(np.arange(200), engine.tree_, 1, route)
    >>> again, _ = cache.paths(np.arange(200), engine.tree_, 1, route)
    >>> bool((again == paths).all()), cache.hits, cache.misses
    (True, 200, 200)
    """

    def __init__(self, capacity: int, *, device="cpu"):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity, self.device = int(capacity), device
        self.table: HashTable | None = None
        self._owner = None  # (tree, beam) of the cached paths
        self.hits = self.misses = 0

    def clear(self) -> None:
        """Forget every path (the counters stay)."""
        if self.table is not None:
            self.table.clear()

    def _table_for(self, tree: Tree, beam: int) -> HashTable:
        if self._owner is None or self._owner[0] is not tree or self._owner[1] != beam:
            self.table = HashTable(tree.n_levels + 1, init_capacity=min(self.capacity, 1 << 16),
                                   max_capacity=self.capacity, evict_strategy=EvictStrategy.LRU,
                                   value_dtype=torch.float64, device=self.device)
            self._owner = (tree, beam)
        return self.table

    def paths(self, ids, tree: Tree, beam: int, route):
        """(paths (n, n_levels) int64, leaf distances (n,) float64) of the rows with ``ids``: the
        cached ones from the cache, the others from ``route(mask)`` (the paths and distances of
        the rows where the bool array ``mask`` is set, as numpy arrays); then all of them cached."""
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"a PathCache keys rows by integer ids, got ids of dtype {ids.dtype}")
        table, levels = self._table_for(tree, beam), tree.n_levels
        keys = torch.from_numpy(ids.astype(np.int64)).to(table.device)
        usable = ~table.reserved(keys)
        values, found, _ = table.find(keys[usable])
        cached = np.zeros(len(ids), dtype=bool)
        cached[usable.cpu().numpy()] = found.cpu().numpy()
        out = np.empty((len(ids), levels + 1))
        out[cached] = values[found].cpu().numpy()
        routed = ~cached
        if routed.any():
            paths, distances = route(routed)
            out[routed, :levels], out[routed, levels] = paths, distances
        if bool(usable.any()):  # misses inserted, hits renewed (their LRU scores)
            table.insert_or_assign(keys[usable], torch.from_numpy(out).to(table.device)[usable])
        self.hits += int(cached.sum())
        self.misses += int(routed.sum())
        return out[:, :levels].astype(np.int64), out[:, levels]

    def __repr__(self):
        size = 0 if self.table is None else self.table.size()
        return f"PathCache(capacity={self.capacity}, size={size}, hits={self.hits}, misses={self.misses})"
