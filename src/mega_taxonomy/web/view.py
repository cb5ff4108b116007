"""What the browser and the report show of a stored taxonomy, read through ``storage/`` only.

A :class:`TaxonomyView` opens a Store written by ``TaxonomyEngine`` (or any writer of the same
schema), maps the tree's per-level arrays (``parent``, ``counts``, ``child_offsets``; the
centroids are never read) and answers small questions: a node, a page of its children, its
nearest members, the sizes of a level, a bounded piece of the tree for a treemap. Everything it
returns is plain JSON-ready Python. It is read-only: nothing here writes to the Store.

Nodes are named by a *key*: ``"root"`` or ``"LEVEL-NODE"`` (``"1-37"``: node 37 of level 1, a
global id per level as in the paths). Children come largest first (ties by node id), so a page
of a lopsided node starts with what dominates it.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from ..errors import StorageError
from ..storage import Store
from ..storage.schema import level_file, members_file, read_paths
from ..taxonomy.tree import LEVEL_ARRAYS, Level, Tree
from .labels import Labels
from .stats import imbalance, size_histogram

KIND = "taxonomy"
ROOT = "root"
_KEY = re.compile(r"(0|[1-9][0-9]{0,8})-(0|[1-9][0-9]{0,11})")


class NotFound(LookupError):
    """An unknown node, level or id (the server answers 404)."""


def load_tree(store: Store) -> tuple[Tree, dict]:
    """The stored tree, its arrays memory-mapped where the Store is local, and the manifest.

    Raises
    ------
    StorageError
        If the Store holds no finished taxonomy.
    """
    manifest = store.manifest()
    if manifest is None or manifest.get("kind") != KIND or manifest.get("status") != "done":
        found = "nothing" if manifest is None else f"kind={manifest.get('kind')!r} status={manifest.get('status')!r}"
        raise StorageError(f"{store!r} holds no finished taxonomy (found {found})")
    params = manifest.get("params", {})
    n_levels = params.get("n_levels")
    if n_levels is None:  # a manifest written without it: the levels stored, in order
        n_levels = 0
        while store.listdir(level_file(n_levels, "counts")):
            n_levels += 1
    levels = [Level(*(store.get_array(level_file(i, name), mmap=True) for name in LEVEL_ARRAYS))
              for i in range(n_levels)]
    return Tree(levels, params.get("metric", "euclidean")), manifest


class TaxonomyView:
    """Read-only questions about a stored taxonomy.

    Parameters
    ----------
    storage_uri : str
        The taxonomy's Store (local path or fsspec URI).
    labels : Labels, optional
        A label per id (``web.labels.Labels``), shown beside members and searched.
    storage_options : dict, optional
        fsspec options (never logged).
    """

    def __init__(self, storage_uri, *, labels: Labels | None = None, storage_options=None):
        self.store = Store(storage_uri, storage_options=storage_options)
        self.tree, manifest = load_tree(self.store)
        self.params = manifest.get("params", {})
        self.meta = manifest.get("meta", {})
        self.labels = labels
        self._members: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._assignments: tuple[np.ndarray, np.ndarray] | None = None
        self._levels = [{"level": i, "nodes": lv.n_nodes, "imbalance": imbalance(lv.counts),
                         "histogram": size_histogram(lv.counts)} for i, lv in enumerate(self.tree.levels)]
        self.rows = int(np.asarray(self.tree.levels[0].counts).sum()) if self.tree.n_levels else 0
        self._order = lru_cache(maxsize=4096)(self._children_order)

    # -- keys ----------------------------------------------------------------------------------
    def parse(self, key: str) -> tuple[int, int]:
        """``(level, node)`` of a key (``(-1, 0)`` for the root); NotFound if there is no such node."""
        if key == ROOT:
            return -1, 0
        match = _KEY.fullmatch(key)
        if not match:
            raise NotFound(f"malformed node key {key[:40]!r}: 'root' or LEVEL-NODE, e.g. '0-12'")
        level, node = int(match.group(1)), int(match.group(2))
        if level >= self.tree.n_levels or node >= self.tree.levels[level].n_nodes:
            raise NotFound(f"no node {level}-{node}")
        return level, node

    # -- nodes ---------------------------------------------------------------------------------
    def summary(self) -> dict:
        """The taxonomy as a whole: levels with sizes, imbalance and histograms, parameters."""
        return {"uri": self.store.uri, "rows": self.rows, "n_levels": self.tree.n_levels,
                "metric": self.tree.metric, "levels": self._levels, "labels": self.labels is not None,
                "params": {k: v for k, v in self.params.items() if k in _SHOWN_PARAMS},
                "seconds": self.meta.get("seconds"), "passes": self.meta.get("passes")}

    def _child_span(self, level: int, node: int) -> tuple[int, int]:
        if level < 0:
            return 0, (self.tree.levels[0].n_nodes if self.tree.n_levels else 0)
        offsets = self.tree.levels[level].child_offsets
        return int(offsets[node]), int(offsets[node + 1])

    def _children_order(self, level: int, node: int) -> np.ndarray:
        """Ids of the children of a node, largest first (ties by id)."""
        start, stop = self._child_span(level, node)
        if stop == start:  # a leaf (at the last level there is no level below to index)
            return np.zeros(0, np.int64)
        sizes = np.asarray(self.tree.levels[level + 1].counts[start:stop])
        return start + np.argsort(-sizes, kind="stable")

    def _brief(self, level: int, node: int) -> dict:
        lv = self.tree.levels[level]
        return {"key": f"{level}-{node}", "level": level, "node": node, "size": int(lv.counts[node]),
                "n_children": int(lv.child_offsets[node + 1] - lv.child_offsets[node]),
                "labels": self.member_labels(level, node, 3)}

    def node(self, key: str) -> dict:
        """A node: size, path from the root, child count and imbalance, rank among its siblings."""
        level, node = self.parse(key)
        start, stop = self._child_span(level, node)
        child_sizes = np.asarray(self.tree.levels[level + 1].counts[start:stop]) if stop > start else []
        if level < 0:
            out = {"key": ROOT, "level": -1, "node": 0, "size": self.rows, "n_children": stop - start,
                   "labels": [], "path": [], "rank": 0, "parent": None}
        else:
            out = self._brief(level, node)
            path = [node]
            for up in range(level, 0, -1):
                path.append(int(self.tree.levels[up].parent[path[-1]]))
            out["path"] = [f"{i}-{n}" for i, n in enumerate(reversed(path))]
            parent = (level - 1, path[1]) if level > 0 else (-1, 0)
            out["parent"] = ROOT if level == 0 else f"{parent[0]}-{parent[1]}"
            out["rank"] = int(np.flatnonzero(self._order(*parent) == node)[0])
        out["children_imbalance"] = imbalance(child_sizes) if len(child_sizes) else None
        return out

    def children(self, key: str, offset: int, limit: int) -> dict:
        """A page of a node's children, largest first: ``{"total", "offset", "children": [...]}``."""
        level, node = self.parse(key)
        order = self._order(level, node)
        page = order[offset:offset + limit]
        return {"key": key, "total": len(order), "offset": offset,
                "children": [self._brief(level + 1, int(c)) for c in page]}

    def treemap(self, key: str, depth: int, limit: int) -> dict:
        """A bounded piece of the tree under ``key`` for a treemap or sunburst: up to ``limit``
        largest children per node, ``depth`` levels down; the rest of a node's children as one
        ``"+N more"`` entry. Flat lists ``ids``, ``parents``, ``names``, ``values`` (plotly's form;
        values are sizes, each parent's the sum of its entries)."""
        level, node = self.parse(key)
        size = self.rows if level < 0 else int(self.tree.levels[level].counts[node])
        out = {"ids": [key], "parents": [""], "names": [self._name(level, node)], "values": [size]}
        frontier = [(level, node, key)]
        for _ in range(depth):
            nxt = []
            for lv, nd, k in frontier:
                order = self._order(lv, nd)
                counts = self.tree.levels[lv + 1].counts if len(order) else None
                for c in order[:limit]:
                    c = int(c)
                    child = f"{lv + 1}-{c}"
                    out["ids"].append(child), out["parents"].append(k)
                    out["names"].append(self._name(lv + 1, c)), out["values"].append(int(counts[c]))
                    nxt.append((lv + 1, c, child))
                if len(order) > limit:
                    rest = int(np.asarray(counts)[order[limit:]].sum())
                    out["ids"].append(f"{k}/more"), out["parents"].append(k)
                    out["names"].append(f"+{len(order) - limit} more"), out["values"].append(rest)
            frontier = nxt
        return out

    def _name(self, level: int, node: int) -> str:
        if level < 0:
            return "root"
        # plotly reads tags in text (<b>, <a href>): labels are data, so their angle brackets go.
        words = [w.replace("<", "\u2039").replace(">", "\u203a") for w in self.member_labels(level, node, 3)]
        return f"{level}-{node}" + (f" {', '.join(words)}" if words else "")

    # -- members -------------------------------------------------------------------------------
    def _level_members(self, level: int):
        """(node, id, distance, offsets) of the level's stored members, node-grouped; None if absent."""
        if level not in self._members:
            name = members_file(level)
            if not self.store.listdir(name):
                self._members[level] = None
            else:
                table = self.store.get_table(name, columns=["node", "id", "distance"])
                node = table.column("node").to_numpy().astype(np.int64)
                order = np.argsort(node, kind="stable")  # the fit writes them grouped; be sure
                node = node[order]
                ids = table.column("id").to_numpy().astype(np.int64)[order]
                dist = table.column("distance").to_numpy().astype(np.float64)[order]
                offsets = np.searchsorted(node, np.arange(self.tree.levels[level].n_nodes + 1))
                self._members[level] = (node, ids, dist, offsets)
        return self._members[level]

    def members(self, key: str, limit: int) -> dict:
        """A node's nearest stored members (nearest first): ids, distances and labels."""
        level, node = self.parse(key)
        if level < 0:
            return {"key": key, "stored": False, "members": []}
        found = self._level_members(level)
        if found is None:
            return {"key": key, "stored": False, "members": []}
        _, ids, dist, offsets = found
        lo, hi = int(offsets[node]), int(offsets[node + 1])
        hi = min(hi, lo + limit)
        labels = self.labels.lookup(ids[lo:hi]) if self.labels is not None else [None] * (hi - lo)
        return {"key": key, "stored": True, "members": [
            {"id": int(i), "distance": float(d), "label": lab} for i, d, lab in zip(ids[lo:hi], dist[lo:hi], labels)]}

    def member_labels(self, level: int, node: int, n: int) -> list[str]:
        """Labels of a node's ``n`` nearest members ([] without labels or stored members)."""
        if self.labels is None:
            return []
        found = self._level_members(level)
        if found is None:
            return []
        _, ids, _, offsets = found
        lo = int(offsets[node])
        return [lab for lab in self.labels.lookup(ids[lo:min(int(offsets[node + 1]), lo + n)]) if lab is not None]

    # -- search --------------------------------------------------------------------------------
    def search(self, query: str, limit: int) -> dict:
        """The row of id ``query`` when it is an integer, then rows whose label is ``query``
        (case-insensitive), then rows whose label starts with it: each with its path of node keys
        (from the stored assignments); rows not fitted are left out."""
        query = query.strip()
        ids: list[int] = []
        if re.fullmatch(r"-?[0-9]{1,18}", query):
            ids.append(int(query))
        if self.labels is not None:
            ids += [i for i in self.labels.find(query, limit) if i not in ids]
        ids = np.asarray(ids[:limit], dtype=np.int64)
        labels = self.labels.lookup(ids) if self.labels is not None else [None] * len(ids)
        hits = [{"id": int(i), "label": label, "path": path}
                for i, label, path in zip(ids, labels, self.paths_of(ids)) if path is not None]
        return {"query": query, "hits": hits}

    def locate(self, text: str) -> dict:
        """The row of id ``text``: its label and path; NotFound if no fitted row has that id."""
        if not re.fullmatch(r"-?[0-9]{1,18}", text):
            raise NotFound(f"malformed id {text[:40]!r}: an integer")
        row_id = int(text)
        path = self.paths_of(np.asarray([row_id], dtype=np.int64))[0]
        if path is None:
            raise NotFound(f"no fitted row has id {row_id}")
        label = self.labels.lookup([row_id])[0] if self.labels is not None else None
        return {"id": row_id, "label": label, "path": path}

    def paths_of(self, ids: np.ndarray) -> list[list[str] | None]:
        """The path (node keys from level 0 down) of each id, None for an id not fitted."""
        all_ids, all_paths = self._read_assignments()
        at = np.searchsorted(all_ids, ids)
        out = []
        for i, j in zip(ids, at):
            if j < len(all_ids) and all_ids[j] == i:
                out.append([f"{lv}-{n}" for lv, n in enumerate(all_paths[j]) if n >= 0])
            else:
                out.append(None)
        return out

    def _read_assignments(self) -> tuple[np.ndarray, np.ndarray]:
        """Every fitted row's (id, path), sorted by id; read once, on the first search (12 bytes a
        row and level: 400k GloVe words, 3 levels: 20 MB)."""
        if self._assignments is None:
            ids, paths = [], []
            for name in self.store.listdir("assignments"):
                if name.endswith(".parquet"):
                    table = self.store.get_table(name, columns=["id", "path"])
                    ids.append(table.column("id").to_numpy().astype(np.int64))
                    paths.append(read_paths(table).astype(np.int32))
            if not ids:
                self._assignments = (np.zeros(0, np.int64), np.zeros((0, self.tree.n_levels), np.int32))
            else:
                ids, paths = np.concatenate(ids), np.concatenate(paths)
                order = np.argsort(ids, kind="stable")
                self._assignments = (ids[order], paths[order])
        return self._assignments


_SHOWN_PARAMS = ("n_levels", "branching_factor", "metric", "max_iter", "random_state", "balance", "members")
