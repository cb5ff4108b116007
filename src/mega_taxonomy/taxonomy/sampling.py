"""Balanced samples of fitted rows: ids spread evenly over the leaves of a taxonomy.

Large curation pipelines pick training data this way: instead of sampling rows uniformly (which
reproduces the data's imbalance), every leaf, or every child at every level, gets an equal share.

Two strategies:

- ``"uniform-leaves"``: all leaves of the tree, at whatever level they end, share the budget
  equally.
- ``"hierarchical"``: the root's children (level-0 nodes) share the budget equally, then every
  node's share is split equally among its children, down to the leaves. A subtree with many
  leaves gets no more than a sibling with one.

Shares are water-filled: a node with fewer rows than its share gives all of them and the rest
goes, again evenly, to its siblings that still have rows, so a sample has exactly
``min(n, n_rows)`` ids. Within a leaf the rows of lowest ``hash(random_state, id)`` are taken
(:func:`mega_taxonomy.ops.hashing.hash_ids`, the Contracts' determinism): the sample depends
only on the ids, their paths, the tree, ``n`` and the seed, not on the order of the rows, and the
sample of ``n`` is a subset of the sample of ``n + 1``.

Water-filling is computed in closed form for all parents of a level at once (a sort and prefix
sums per level), so the cost is O(N log N) in rows plus O(nodes log nodes) per level, with no
Python loop over rows or nodes.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..errors import ConfigError, DataError, StorageError
from ..ops.hashing import hash_ids
from ..partials.groups import rank_in_group
from ..storage.schema import read_paths
from .tree import Tree

STRATEGIES = ("uniform-leaves", "hierarchical")


def balanced_sample(ids: np.ndarray, paths: np.ndarray, tree: Tree, n: int, strategy: str = "uniform-leaves",
                    random_state: int = 0) -> np.ndarray:
    """Ids of ``min(n, N)`` rows spread evenly over the leaves (or the children at every level) of ``tree``.

    Parameters
    ----------
    ids : array-like of int of shape (N,)
        The rows' ids (int64, unique).
    paths : array-like of int of shape (N, tree.n_levels)
        Every row's global node id per level, -1 below its leaf (``TaxonomyEngine.predict``, or
        the ``path`` column of the assignments: :func:`read_assignments`). A row's leaf is its
        deepest node >= 0, and must be a node without children in ``tree``.
    tree : Tree
        The fitted tree whose structure (``child_offsets``) the paths follow.
    n : int
        Sample size; ``n >= N`` returns every id.
    strategy : {"uniform-leaves", "hierarchical"}, default="uniform-leaves"
        ``"uniform-leaves"``: every leaf has an equal quota of ``n / n_leaves``.
        ``"hierarchical"``: ``n`` is split evenly among the level-0 nodes, then each node's quota
        evenly among its children, recursively down to the leaves.
    random_state : int, default=0
        Seed of the hash that orders the rows within a leaf (>= 0).

    Returns
    -------
    ids : ndarray of int64 of shape (min(n, N),)
        Ordered by path (lexicographically, level 0 first), then by ``hash(random_state, id)``.

    Raises
    ------
    ConfigError
        If ``n`` < 0 or is not an integer, ``strategy`` is unknown or ``random_state`` < 0.
    DataError
        If ``ids`` and ``paths`` disagree in length, an id repeats, or a path does not follow
        ``tree`` (node out of range, wrong parent, -1 above a node, ending above a leaf).

    Notes
    -----
    Water-filling, at every split: a quota ``q`` over children holding ``c_1..c_k`` rows gives
    child ``i`` ``min(c_i, t)`` rows, ``t`` the largest integer with ``sum_i min(c_i, t) <= q``;
    the ``r = q - sum_i min(c_i, t)`` rows left (``r`` < the number of children with
    ``c_i > t``) go one each to the children with ``c_i > t`` that hold the most rows, ties to
    the lowest node id (``"uniform-leaves"``: the lowest ``(level, node id)``). This is what
    handing out the quota one row at a time would give, each row to the child with the fewest
    so far (among those with rows left), ties broken by the same rule. Quotas only grow with
    ``n``, so the sample of ``n`` is a subset of the sample of ``n + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> from mega_taxonomy.taxonomy.tree import Level, Tree
    >>> def level(n_nodes, offsets):
    ...     return Level(np.zeros((n_nodes, 1)), np.full(n_nodes, -1), np.zeros(n_nodes, np.int64),
    ...                  np.asarray(offsets))
    >>> tree = Tree([level(2, [0, 2, 2]), level(2, [0, 0, 0])])  # node 0 has two children; node 1 is a leaf
    >>> paths = np.array([[0, 0]] * 6 + [[0, 1]] * 6 + [[1, -1]] * 6)
    >>> ids = np.arange(18)
    >>> np.bincount(paths[balanced_sample(ids, paths, tree, 6), 0])  # 3 leaves: 2 rows each
    array([4, 2])
    >>> np.bincount(paths[balanced_sample(ids, paths, tree, 6, "hierarchical"), 0])  # 2 level-0 nodes: 3 each
    array([3, 3])
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ConfigError(f"n must be an integer >= 0, got {n!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral) or random_state < 0:
        raise ConfigError(f"random_state must be an integer >= 0, got {random_state!r}")
    ids, paths = np.asarray(ids), np.asarray(paths)
    if len(ids) == 0 and len(paths) == 0:
        return np.zeros(0, np.int64)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"ids must be a 1-d integer array, got shape {ids.shape} and dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if paths.shape != (len(ids), tree.n_levels) or not np.issubdtype(paths.dtype, np.integer):
        raise DataError(f"paths must be an integer array of shape (len(ids), n_levels) = "
                        f"({len(ids)}, {tree.n_levels}), got shape {paths.shape} and dtype {paths.dtype}")
    paths = paths.astype(np.int64, copy=False)
    depth = _check_paths(ids, paths, tree)
    offsets = np.concatenate([[0], np.cumsum([lv.n_nodes for lv in tree.levels])])
    leaf = offsets[depth] + paths[np.arange(len(ids)), depth]  # global node index of each row's leaf
    rows = np.bincount(leaf, minlength=offsets[-1])  # rows under each leaf
    quota = (_uniform_leaves if strategy == "uniform-leaves" else _hierarchical)(tree, paths, offsets, rows,
                                                                                min(int(n), len(ids)))

    hashes = hash_ids(ids, random_state)
    taken = _lowest_per_group(leaf, hashes, quota)
    # Output order: by path, then hash. Leaves ranked by their path (one row of each stands for all).
    leaves, first = np.unique(leaf[taken], return_index=True)
    rank = np.zeros(offsets[-1], np.int64)
    rank[leaves[np.lexsort(paths[taken[first]].T[::-1])]] = np.arange(len(leaves))
    taken = taken[np.lexsort((hashes[taken], rank[leaf[taken]]))]
    return ids[taken]


def read_assignments(store) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, paths)`` of every row of a Store's ``assignments/part-*.parquet`` parts, in part order.

    Returns
    -------
    ids : ndarray of int64 of shape (N,)
    paths : ndarray of int64 of shape (N, n_levels)

    Raises
    ------
    StorageError
        If the store holds no assignment parts, or parts of different path widths.
    """
    names = [name for name in store.listdir("assignments")
             if name.rsplit("/", 1)[-1].startswith("part-") and name.endswith(".parquet")]
    if not names:
        raise StorageError(f"{store!r}: no assignments/part-*.parquet (was the taxonomy fitted with a "
                           "storage_uri, and did the fit finish?)")
    ids, paths = [], []
    for name in names:
        table = store.get_table(name, columns=["id", "path"])
        if table.num_rows == 0:
            continue
        ids.append(table.column("id").to_numpy().astype(np.int64, copy=False))
        paths.append(read_paths(table))
        if paths[-1].shape[1] != paths[0].shape[1]:
            raise StorageError(f"{store!r}: {name}: paths of width {paths[-1].shape[1]}, "
                               f"other parts have {paths[0].shape[1]}")
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.int64)
    return np.concatenate(ids), np.concatenate(paths)


# -- internals ------------------------------------------------------------------------------------

def _check_paths(ids: np.ndarray, paths: np.ndarray, tree: Tree) -> np.ndarray:
    """Every row's leaf level; DataError (naming the first bad row) where a path does not follow ``tree``."""

    def fail(bad, message):
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"id {ids[row]}: path {paths[row].tolist()} {message}", row=row, column="path")

    sorted_ids = np.sort(ids)  # a value sort: far faster than argsort, rows are looked up on failure only
    if len(same := np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])):
        first, row = np.flatnonzero(ids == sorted_ids[same[0]])[:2]
        raise DataError(f"id {ids[row]} appears more than once (also in row {first})", row=int(row),
                        column="id")
    for level, lv in enumerate(tree.levels):
        offsets = np.asarray(lv.child_offsets)
        below = tree.levels[level + 1].n_nodes if level + 1 < tree.n_levels else 0
        if (offsets.shape != (lv.n_nodes + 1,) or offsets[0] != 0 or offsets[-1] != below
                or (np.diff(offsets) < 0).any()):
            raise DataError(f"tree: level {level}'s child_offsets must rise from 0 to {below} (the nodes "
                            f"of the level below) in {lv.n_nodes + 1} steps, got {offsets.tolist()[:20]}")
    valid = paths >= 0
    if tree.n_levels == 0 or not valid[:, 0].all():
        fail(~valid[:, 0] if tree.n_levels else np.ones(len(ids), bool), "has no node at level 0")
    if tree.n_levels > 1 and (hole := valid[:, 1:] & ~valid[:, :-1]).any():
        fail(hole.any(axis=1), "has a node below a -1")
    depth = valid.sum(axis=1) - 1
    for level, lv in enumerate(tree.levels):
        node = np.where(valid[:, level], paths[:, level], 0)
        if (out := valid[:, level] & (paths[:, level] >= lv.n_nodes)).any():
            fail(out, f"has a node >= {lv.n_nodes}, the number of nodes at level {level}")
        if lv.n_nodes == 0:  # no row reaches this level (checked just above)
            continue
        if level > 0:
            above = tree.levels[level - 1]
            parent = np.repeat(np.arange(above.n_nodes), above.n_children)
            if (wrong := valid[:, level] & (parent[node] != paths[:, level - 1])).any():
                fail(wrong, f"has node {level}:{paths[np.flatnonzero(wrong)[0], level]} under a node "
                            "that is not its parent")
        if (inner := (depth == level) & (lv.n_children[node] > 0)).any():
            fail(inner, f"ends at level {level}, at a node that has children (not a leaf)")
    return depth


def _lowest_per_group(group: np.ndarray, hashes: np.ndarray, quota: np.ndarray, bits: int = 0) -> np.ndarray:
    """Positions (in no particular order) of the ``quota[g]`` rows of lowest hash of every group ``g``.

    ``hashes`` must be distinct (distinct ids). Sorting (row, hash) pairs by index is what costs;
    instead, the rows of groups only partly taken are value-sorted (``np.sort``, several times
    faster than ``argsort``/``lexsort``) on one uint64 key: the group in the high bits, the
    hash's high bits below. The ``quota[g]``-th key of a group is its threshold; rows below it
    are taken, and the few rows whose truncated hash equals it are settled by their full hash.
    ``bits`` (tests only) truncates the hash to that many bits, to force such ties.
    """
    n_groups = len(quota)
    sizes = np.bincount(group, minlength=n_groups)
    q = np.minimum(quota, sizes)
    partial = (q > 0) & (q < sizes)
    chosen = (q == sizes)[group]  # groups taken whole (and empty ones)
    rows = np.flatnonzero(partial[group])
    if len(rows):
        group_bits = max(int(n_groups - 1).bit_length(), 1)
        hash_bits = bits or 64 - group_bits
        g = group[rows].astype(np.uint64)
        key = (g << np.uint64(64 - group_bits)) | (hashes[rows] >> np.uint64(64 - hash_bits))
        sorted_key = np.sort(key)
        start = np.concatenate([[0], np.cumsum(np.where(partial, sizes, 0))[:-1]])
        threshold = np.zeros(n_groups, np.uint64)
        threshold[partial] = sorted_key[start[partial] + q[partial] - 1]
        chosen[rows] = key < threshold[group[rows]]
        # Rows equal to the threshold: as many as the group still needs, by full hash.
        below = np.searchsorted(sorted_key, threshold[partial], side="left") - start[partial]
        need = np.zeros(n_groups, np.int64)
        need[partial] = q[partial] - below
        tied = rows[key == threshold[group[rows]]]
        tied = tied[np.lexsort((hashes[tied], group[tied]))]
        chosen[tied[rank_in_group(group[tied]) < need[group[tied]]]] = True
    return np.flatnonzero(chosen)


def _uniform_leaves(tree: Tree, paths, offsets, rows, n) -> np.ndarray:
    """Quota of every node (global index): one water-filling over all leaves."""
    leaves = np.concatenate([offsets[level] + nodes for level, nodes in tree.leaves()]).astype(np.int64)
    quota = np.zeros(offsets[-1], np.int64)
    quota[leaves] = _water_fill(np.zeros(len(leaves), np.int64), rows[leaves], leaves, np.array([n]))
    return quota


def _hierarchical(tree: Tree, paths, offsets, rows, n) -> np.ndarray:
    """Quota of every node (global index): water-filling level by level, each parent's quota over
    its children, all parents of a level at once."""
    quota = np.zeros(offsets[-1], np.int64)
    parent_quota = np.array([n])
    for level, lv in enumerate(tree.levels):
        under = np.bincount(paths[:, level][paths[:, level] >= 0], minlength=lv.n_nodes)  # rows per node
        if level == 0:
            parent = np.zeros(lv.n_nodes, np.int64)
        else:
            above = tree.levels[level - 1]
            parent = np.repeat(np.arange(above.n_nodes), above.n_children)
        node = np.arange(lv.n_nodes)
        parent_quota = _water_fill(parent, under, node, parent_quota)
        quota[offsets[level]:offsets[level + 1]] = parent_quota
    return quota  # only the leaves' quotas are used: an inner node's is passed on whole to its children


def _water_fill(group: np.ndarray, capacity: np.ndarray, key: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Integer water-filling of ``quota[g]`` over the children of every group ``g`` at once.

    Child ``i`` (of group ``group[i]``, holding ``capacity[i]`` rows) gets ``min(capacity[i], t)``
    with ``t`` the largest integer level whose total fits the group's quota, and the rest (fewer
    than the children above ``t``) goes one each to the children above ``t`` of most capacity,
    then lowest ``key``. ``key`` is unique within a group. Returns the allocation per child.
    """
    m = len(group)
    alloc = np.zeros(m, np.int64)
    if m == 0:
        return alloc
    n_groups = len(quota)
    order = np.lexsort((key, capacity, group))  # by group, then capacity ascending
    g, c = group[order], capacity[order].astype(np.int64)
    k = np.bincount(g, minlength=n_groups)  # children per group
    start = np.concatenate([[0], np.cumsum(k)[:-1]])
    csum = np.concatenate([[0], np.cumsum(c)])
    j = np.arange(m) - start[g] + 1  # 1-based rank of the child in its group, by capacity
    below = csum[1:] - csum[start[g]]  # rows of this child and the smaller ones
    # sum_i min(c_i, c_j) = below_j + c_j * (k - j): the children up to j are saturated when it fits.
    saturated = below + c * (k[g] - j) <= quota[g]  # a prefix of every group
    s = np.bincount(g[saturated], minlength=n_groups)
    free = k - s
    left = quota - (csum[start + s] - csum[start])  # quota left after the saturated children
    t = np.where(free > 0, left // np.maximum(free, 1), 0)
    extra = np.where(free > 0, left - t * free, 0)  # < free
    full = j <= s[g]
    sorted_alloc = np.where(full, c, t[g])
    open_ = np.flatnonzero(~full)
    if len(open_):  # the extra units: to the open children of most capacity, then lowest key
        pick = open_[np.lexsort((key[order][open_], -c[open_], g[open_]))]
        sorted_alloc[pick[rank_in_group(g[pick]) < extra[g[pick]]]] += 1
    alloc[order] = sorted_alloc
    return alloc
