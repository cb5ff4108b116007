"""A taxonomy whose levels from ``partition_level`` down are fitted subtree by subtree.

A level-synchronous fit (``fitting.py``) passes over every row in every iteration of every
level, and sums partials of all of a level's nodes over all workers. Below the level where the
tree splits across workers, nothing needs that: a node's children depend on its own rows alone.
So here the levels above ``partition_level`` are fitted over all rows (the top fit), every row
is written once grouped by its node of the top's last level (``partitions.py``), and each node's
subtree is an ordinary fit of that node's rows, on one worker, with its own store: no
reduction across workers below the top, no worker needs another's centroids, and the driver
holds nothing per row. The whole data is read by the top fit (with levels trained on samples: a
sample draw and one assignment a level), by the partition pass and by the output pass; the
subtrees read their partitions.

The same tree for any number of workers: each subtree is a fit of its node's rows in block order,
seeded by the fit's random state and the node (``FitConfig.subtree``); how subtrees are shared
out changes only who fits them. A subtree with more rows than a worker's share of all rows is fitted by the
whole runtime instead (its passes spread over every worker), the others in a pool of workers,
largest first. Next to the level-synchronous fit the tree differs in its seeds (and, with
balancing, in its reference: a subtree's level is balanced within the subtree).

The store holds, while fitting, ``top/`` (the top fit's store), ``partitions/`` and
``subtrees/<node>/`` (a store per subtree); all are removed once the whole tree is committed.
A fit interrupted anywhere resumes from what these hold: a subtree from its last completed level
(its iterations are not committed one by one: a subtree is small enough to fit again, and a
commit per iteration cost more than the arithmetic of its passes on 100k rows).
"""

from __future__ import annotations

import functools
import logging
import time

import fsspec
import numpy as np
import pyarrow.compute as pc

from ..io import VectorSource
from ..partials import offsets_of
from ..runtime import LocalRuntime
from ..sizes import imbalance
from ..storage import Store
from ..storage.schema import members_file
from .fitting import FitRun
from .levels import plan_children
from .partitions import ID, VECTOR, PartitionState, PartitionTask, gather, node_file
from .passes import MembersPartial
from .tree import Level, Tree

logger = logging.getLogger(__name__)


class SubtreeRun:
    """A fit with ``config.partition_level`` set: ``run(output)`` returns ``(tree, stats)`` as
    ``FitRun.run`` does, with ``stats`` adding ``subtrees``, ``largest_partition`` (rows) and
    ``subtree_passes`` (passes over partitions), ``passes`` counting those over all rows."""

    def __init__(self, config, source, runtime, callback=None):
        self.config, self.source, self.callback = config, source, callback
        self.whole = FitRun(config, source, runtime, callback)  # the store, its manifest, the output pass
        self.store = self.whole.store

    def uri(self, *parts) -> str:
        return "/".join([self.store.uri.rstrip("/"), *parts])

    def run(self, output=None) -> tuple[Tree, dict]:
        whole, config = self.whole, self.config
        if whole.checkpoints.done:
            return whole.run(output)
        started = time.perf_counter()
        top_run = FitRun(config.top(self.uri("top")), self.source, whole.runtime.runtime, self.callback, outputs=False)
        top, top_meta = top_run.run()
        counts = self.partition(top)
        subtrees, metas = self.fit_subtrees(counts)
        tree = stitch(top, subtrees, config.n_levels)
        whole.write_outputs(tree, output, member_levels=config.partition_level)
        self.write_members(subtrees)
        meta = whole.meta
        meta["levels"] = top_meta["levels"] + subtree_levels(tree, metas, config.partition_level)
        meta["passes"] = meta.get("passes", 0) + top_meta["passes"]
        meta.update(sample_passes=top_meta.get("sample_passes", 0), subtrees=len(subtrees),
                    largest_partition=int(counts.max(initial=0)), subtree_passes=sum(m["passes"] for m in metas),
                    seconds=meta.get("seconds", 0) + time.perf_counter() - started)
        tree.save(self.store)
        for name in self.store.listdir("partitions"):
            self.store.delete(name)
        whole.commit("done")
        for folder in ("top", "subtrees", "partitions"):  # (the partitions' files went with the commit)
            remove(self.uri(folder), config.storage_options)
        return tree, meta

    def write_members(self, subtrees: dict) -> None:
        """The members of the levels from ``partition_level`` down: each subtree's own, selected
        by the worker that fitted it over its node's rows (``SubtreeWorker``), their nodes
        renumbered as :func:`stitch` numbers them, subtree after subtree. The driver only copies
        them: no item of the output pass sends a row for these levels (at the 200B plan they were
        62 MB an item, about 190 times the pass's reading: ``bench_control_traffic.py``)."""
        owners = sorted(subtrees)

        def renumbered(depth):  # one subtree's table at a time: a level's members may not fit memory
            start = 0
            for node in owners:
                table = Store(self.uri("subtrees", f"{node:08d}"),
                              storage_options=self.config.storage_options).get_table(members_file(depth))
                yield table.set_column(0, "node", pc.add(table["node"], np.int32(start)))
                start += subtrees[node].levels[depth].n_nodes

        for depth in range(self.config.n_levels - self.config.partition_level):  # (no subtree: an empty file)
            self.store.put_row_groups(members_file(self.config.partition_level + depth), MembersPartial.SCHEMA,
                                      lambda depth=depth: renumbered(depth))

    def partition(self, top: Tree) -> np.ndarray:
        """The partition pass (once: a resumed fit finds its counts in the manifest); returns the
        rows per node of the top's last level."""
        meta = self.whole.meta
        if "partition_rows" not in meta:
            state = PartitionState(top, (self.store.uri, self.config.storage_options))
            result = self.whole.runtime.map_reduce(self.source, PartitionTask(), state, desc="partition")
            for name, entry in result.files.items():
                self.store.record(name, entry)
            meta["partition_rows"] = result.counts.tolist()
            self.whole.commit()  # the block files are visible to the workers' stores from here
        return np.asarray(meta["partition_rows"], dtype=np.int64)

    def fit_subtrees(self, counts: np.ndarray) -> tuple[dict, list]:
        """Every node's subtree (``{node: Tree}``) and the fits' stats, in node order."""
        config = self.config
        n_children = plan_children(counts, config.factors[config.partition_level], config.min_cluster_size)
        nodes = np.flatnonzero(n_children)
        runtime = self.whole.runtime.runtime
        workers = int(getattr(runtime, "num_workers", 1))
        big = [int(node) for node in nodes if workers > 1 and counts[node] * workers > counts.sum()]
        jobs = {int(node): (int(n_children[node]), self.uri("subtrees", f"{node:08d}")) for node in nodes}
        worker = functools.partial(SubtreeWorker, config=config, uri=self.store.uri, n_blocks=self.source.n_blocks,
                                   device=str(runtime.device) if runtime.in_process else "auto")
        shares = share_out([node for node in jobs if node not in big], counts, workers)
        runtime.release()  # the passes' workers are idle until the big subtrees: the pool takes their place
        with runtime.pool(worker, workers) as pool:
            written = {}
            for done in pool.broadcast("fit", [{node: jobs[node] for node in share} for share in shares]):
                written.update(done)
        for node in big:  # too big for one worker: its passes go through the whole runtime
            logger.info("subtree %d: %d rows, fitted over all workers", node, counts[node])
            written.update(worker(0).fit({node: jobs[node]}, runtime=runtime))
        for name, entry in written.items():
            self.store.record(name, entry)
        trees, metas = {}, []
        for node in sorted(jobs):
            sub = Store(jobs[node][1], storage_options=config.storage_options)
            trees[node] = Tree.load(sub, config.n_levels - config.partition_level, config.metric)
            metas.append(sub.manifest()["meta"])
        return trees, metas


class SubtreeWorker:
    """Fits the subtrees it is given, each from its node's rows gathered from the block files
    (:func:`partitions.gather`); built in a pool's worker (``Runtime.pool``)."""

    def __init__(self, rank, *, config, uri, n_blocks, device):
        self.config, self.uri, self.n_blocks, self.device = config, uri, n_blocks, device
        self.rank = rank

    def fit(self, shares, runtime=None) -> dict:
        """Fit this worker's share (``shares[rank]``, or ``shares`` itself: ``{node: (n_children,
        uri)}``); returns the node files written, ``{name: {"sha256", "bytes"}}``. A subtree whose
        store is done already is left as it is."""
        jobs = shares[self.rank] if isinstance(shares, list) else shares
        options = self.config.storage_options
        todo = {node: job for node, job in jobs.items()
                if (Store(job[1], storage_options=options).manifest() or {}).get("status") != "done"}
        if not todo:
            return {}
        store = Store(self.uri, storage_options=options)
        written = gather(store, self.n_blocks, todo)
        runtime = runtime or LocalRuntime(device=self.device, progress=False)  # (the whole fit shows progress)
        for node, (n_children, uri) in todo.items():
            source = VectorSource(f"{self.uri}/{node_file(node)}", column=VECTOR, id_column=ID, storage_options=options)
            # its members too (outputs="members"): selected here, where the node's rows are
            FitRun(self.config.subtree(node, n_children, uri), source, runtime, outputs="members",
                   iteration_checkpoints=False).run()
        return written


def share_out(nodes, counts, workers: int) -> list[list[int]]:
    """Nodes in ``workers`` shares of about equal rows: largest first, each to the share with
    the fewest rows so far (the lowest rank on ties)."""
    shares, rows = [[] for _ in range(workers)], np.zeros(workers, dtype=np.int64)
    for node in sorted(nodes, key=lambda n: (-counts[n], n)):
        rank = int(np.argmin(rows))
        shares[rank].append(node)
        rows[rank] += counts[node]
    return shares


def stitch(top: Tree, subtrees: dict, n_levels: int) -> Tree:
    """The whole tree: ``top``'s levels, then level by level each subtree's nodes in node order
    (the children of a node stay contiguous), their parents renumbered."""
    levels = [Level(lv.centroids, lv.parent, lv.counts, lv.child_offsets, lv.penalty, lv.weights, lv.covariances)
              for lv in top.levels]
    owners = sorted(subtrees)
    for depth in range(n_levels - len(top.levels)):
        parts = [subtrees[node].levels[depth] for node in owners]
        if depth == 0:
            parents = [np.full(part.n_nodes, node, dtype=np.int64) for node, part in zip(owners, parts)]
        else:  # a subtree's nodes above come after those of the subtrees before it
            above = np.cumsum([0] + [subtrees[node].levels[depth - 1].n_nodes for node in owners])
            parents = [part.parent + start for part, start in zip(parts, above)]
        levels.append(Level(
            np.concatenate([part.centroids for part in parts]) if parts else top.levels[0].centroids[:0],
            np.concatenate(parents) if parts else np.zeros(0, np.int64),
            np.concatenate([part.counts for part in parts]) if parts else np.zeros(0, np.int64),
            None, *(joined([getattr(part, name) for part in parts], part_sizes=[p.n_nodes for p in parts])
                    for name in ("penalty", "weights", "covariances"))))
    for upper, lower in zip(levels, levels[1:]):
        upper.child_offsets = offsets_of(np.bincount(lower.parent, minlength=upper.n_nodes))
    levels[-1].child_offsets = np.zeros(levels[-1].n_nodes + 1, dtype=np.int64)
    return Tree(levels, top.metric)


def joined(arrays, part_sizes):
    """An optional per-node array of the parts, end to end: None where no part has one, zeros for
    the parts without (a subtree fitted without size penalties)."""
    present = [a for a in arrays if a is not None]
    if not present:
        return None
    like = present[0]
    return np.concatenate([a if a is not None else np.zeros((n, *like.shape[1:]), like.dtype)
                           for a, n in zip(arrays, part_sizes)])


def subtree_levels(tree: Tree, metas: list, first: int) -> list[dict]:
    """The stats of the levels fitted by subtrees, per level: nodes, inertia and iterations summed
    over the subtrees, and the imbalance of the whole level."""
    out = []
    for depth, level in enumerate(tree.levels[first:]):
        stats = [m["levels"][depth] for m in metas if depth < len(m["levels"])]
        out.append({"n_nodes": level.n_nodes, "inertia": float(sum(s["inertia"] for s in stats)),
                    "iterations": int(sum(s["iterations"] for s in stats)),
                    "seconds": float(sum(s["seconds"] for s in stats)), "imbalance": imbalance(level.counts)})
    return out


def remove(uri: str, storage_options) -> None:
    """Delete the folder ``uri`` (a store nested in the fit's), if it is there."""
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if fs.exists(root):
        fs.rm(root, recursive=True)
