"""One run of ``TaxonomyEngine.fit``: levels fitted top-down, every iteration checkpointed.

Top-down and level-synchronous (DESIGN.md, Taxonomy): level 0 is a k-means over all rows; at
level l every node of level l-1 gets its own children, and all nodes of the level are fitted in
the same data passes, each row compared only with the children of its own parent (grouped
assignment). The number of passes is the sum of the iterations per level plus one assignment
pass per level (which also samples every node for the next level's seeds), one sampling pass
and one output pass, whatever the number of nodes (and, in a level where a cluster went empty,
one pass that finds the farthest rows to refill it: see ``cluster.lloyd``).

State lives in a Store: per-iteration checkpoints with fresh names (so a crash never leaves a
half-updated file behind a committed manifest), then completed levels. A run started again
with the same arguments continues from the manifest's last checkpoint (``meta["checkpoint"]``)
or completed level, and ends with the same tree, bit for bit.
"""

from __future__ import annotations

import functools
import logging
import math
import time

import numpy as np

from ..cluster.balance import imbalance, size_penalty, split_and_merge
from ..cluster.lloyd import lloyd
from ..errors import ConfigError
from ..ops.device import host_arrays
from ..partials import group_of_centroid, hash_sample, offsets_of
from ..runtime import cpu_threads, passes_here_on_cpu
from .levels import plan_children, sample_size_list, seed_children
from .passes import RouteState, RouteTask
from .tree import Level, Tree, optional_array

logger = logging.getLogger(__name__)

KIND = "taxonomy"

# A row's fitted path costs 12 bytes per level (an int64 label and a float32 distance): kept for
# the output pass up to this many bytes (1M rows, 3 levels: 36 MB), else the rows are routed again.
_PATH_BYTES_PER_ROW = 12
_PATHS_BYTES = 1 << 30

# The seeds' sample of a level (every node's rows, on the driver) is kept within this many bytes
# (in the centroids' dtype) by sampling fewer rows per node than the default 64 a child, but
# never fewer than 16 a child: 16 x 16 x 16 over 300k rows of a Zipf mixture of 4,096 Gaussians
# (mean over 3 seeds) ended 3% worse at the leaves from 16 rows a child, 10% worse from 8; on
# GloVe's 400k words (cosine) 8 to 64 a child were all within noise (benchmarks/
# study_seed_sample.py, results/seed_sample.json). 4,096 nodes of 1024-d float32 rows: 256 a node.
_SAMPLE_BYTES = 4 << 30


def seed_sample_size(branching: int, parents: int, row_bytes: int) -> int:
    """The default rows sampled per node to seed its ``branching`` children, for ``parents``
    nodes of rows of ``row_bytes``: 64 a child (at least 1,024), fewer where the level's sample
    would pass _SAMPLE_BYTES, but not fewer than 16 a child."""
    return max(min(_unbounded_sample_size(branching), _SAMPLE_BYTES // (parents * row_bytes)), 16 * branching)


def _unbounded_sample_size(branching: int) -> int:
    return max(64 * branching, 1024)


class CountingRuntime:
    """Counts the passes over data that a fit makes (they are what costs at scale)."""

    def __init__(self, runtime):
        self.runtime, self.passes = runtime, 0

    def map_reduce(self, source, task, state, *, desc=None):
        self.passes += 1
        return self.runtime.map_reduce(source, task, state, desc=desc)

    @property
    def device(self):
        return self.runtime.device

    @property
    def in_process(self):
        return self.runtime.in_process


def checkpoint_dir(level: int) -> str:
    return f"checkpoints/level-{level:02d}"


def node_groups(labels: dict, n_nodes: int) -> dict:
    """Per block, each row's node as its group at the next level; rows under a leaf (-1) go to
    the empty group ``n_nodes``."""
    return {b: np.where(lab >= 0, lab, n_nodes) for b, lab in labels.items()}


def load_level(store, level) -> Level:
    """A completed level, as its run left it in the Store."""
    folder = checkpoint_dir(level)
    arrays = {name: np.asarray(store.get_array(f"{folder}/{name}.npy")) for name in ("centroids", "counts", "parent")}
    return Level(arrays["centroids"], arrays["parent"], arrays["counts"],
                 np.zeros(len(arrays["centroids"]) + 1, dtype=np.int64), optional_array(store, f"{folder}/penalty.npy"))


class FitRun:
    """The levels of one fit: ``run()`` returns the Tree; ``meta`` is the manifest's "meta"
    (levels' stats, checkpoint, passes), committed after every checkpoint and level.

    Parameters
    ----------
    engine : TaxonomyEngine
        The parameters (read only).
    source : VectorSource
    store : Store or None
        None: no checkpoints (nothing to resume from).
    params : dict
        The manifest's parameters.
    meta : dict
        The manifest's meta of an interrupted run, or a fresh one.
    factors : list of int
        Children per node, per level.
    runtime : Runtime
    callback : callable, optional
        ``callback(event)`` after every committed checkpoint and level.
    """

    def __init__(self, engine, source, store, params, meta, factors, runtime, callback=None):
        self.engine, self.source, self.store, self.params = engine, source, store, params
        self.meta, self.factors, self.callback = meta, factors, callback
        self.runtime = CountingRuntime(runtime)
        self.dtype = np.dtype(engine.dtype)
        self.seed = int(engine.random_state)
        self.asked_sample_sizes = sample_size_list(engine.sample_size, engine.n_levels)
        # Per level fitted in this run, every block's final (labels, distances): the rows' paths,
        # which the output pass would otherwise route again (router.Router._exact). Kept where
        # passes run here on the CPU, within _PATHS_BYTES.
        self.keep_paths = (passes_here_on_cpu(runtime)
                           and _PATH_BYTES_PER_ROW * engine.n_levels * len(source) <= _PATHS_BYTES)
        self.level_labels = []

    def commit(self, status="fitting"):
        self.meta["passes"] = self.meta.get("passes", 0) + self.runtime.passes
        self.runtime.passes = 0
        if self.store is not None:
            self.store.commit(kind=KIND, params=self.params, status=status, **self.meta)

    def event(self, **info):
        if self.callback is not None:
            self.callback(info)

    def sample_size(self, level: int) -> int:
        """Rows sampled per node of the level above ``level`` to seed its children. A function of
        the parameters alone (a resumed fit draws what the first run drew): the parents are
        counted as the most there can be, the product of the branching factors above."""
        if self.asked_sample_sizes[level] is not None:
            return self.asked_sample_sizes[level]
        branching, parents = self.factors[level], math.prod(self.factors[:level])
        size = seed_sample_size(branching, parents, self.source.dim * self.dtype.itemsize)
        if size < _unbounded_sample_size(branching):
            logger.info("level %d: %d rows sampled a node, to keep up to %d nodes' samples within %d MiB",
                        level, size, parents, _SAMPLE_BYTES >> 20)
        return size

    # -- the levels ----------------------------------------------------------------------------
    def run(self) -> Tree:
        levels, groups, sample = self.start()
        for level in range(len(levels), self.engine.n_levels):
            fitted = self.fit_level(level, levels, groups, sample)
            if fitted is None:
                break
            groups, sample = fitted
        while len(levels) < self.engine.n_levels:  # every branch ended early: empty levels keep paths' width
            levels.append(Level(np.zeros((0, self.source.dim), self.dtype), np.zeros(0, np.int64),
                                np.zeros(0, np.int64), np.zeros(1, np.int64)))
        return Tree(levels, self.engine.metric)

    def start(self):
        """(completed levels, row groups, node samples): what the next level needs. Resuming after
        a completed level, one pass routes the rows down the levels done (and samples their
        nodes); a fresh run draws the root's sample."""
        store, meta, runtime = self.store, self.meta, self.runtime
        levels = [load_level(store, i) for i in range(len(meta["levels"]))]
        groups = sample = None
        if levels:
            for i in range(1, len(levels)):
                levels[i - 1].child_offsets = offsets_of(np.bincount(levels[i].parent, minlength=levels[i - 1].n_nodes))
            need_sample = meta["checkpoint"] is None and len(levels) < self.engine.n_levels
            draw = (self.sample_size(len(levels)), self.seed + len(levels)) if need_sample else None
            routed = runtime.map_reduce(self.source, RouteTask(), RouteState(Tree(levels, self.engine.metric), draw),
                                        desc="resume")
            groups = node_groups(routed.labels, levels[-1].n_nodes)
            sample = None if routed.sample is None else routed.sample.with_vectors(self.source)
        elif meta["checkpoint"] is None:
            sample = hash_sample(self.source, self.sample_size(0), self.seed, runtime)
            meta["root"] = {"rows": sample.count, "mean_variance": sample.mean_variance}
            if sample.count < self.factors[0] * self.engine.min_cluster_size:
                raise ConfigError(f"{sample.count} rows cannot make {self.factors[0]} clusters of at least "
                                  f"{self.engine.min_cluster_size}: lower branching_factor[0] or min_cluster_size")
        return levels, groups, sample

    def fit_level(self, level, levels, groups, sample):
        """Fit ``level`` (appended to ``levels``), with its balancing rounds; returns the next
        level's (groups, sample), or None when every node of the level above is a leaf."""
        engine, meta = self.engine, self.meta
        started = time.perf_counter()
        if level == 0:
            n_children, offsets = np.array([self.factors[0]]), None
            parent_inertia = meta["root"]["mean_variance"] * meta["root"]["rows"] * self.source.dim
            parent_rows = meta["root"]["rows"]
        else:
            n_children = plan_children(levels[-1].counts, self.factors[level], engine.min_cluster_size)
            if not n_children.any():
                logger.info("level %d: every node of level %d is a leaf", level, level - 1)
                return None
            offsets = offsets_of(n_children)
            levels[-1].child_offsets = offsets
            parent_inertia, parent_rows = meta["levels"][-1]["inertia"], int(levels[-1].counts.sum())
        # scikit-learn's tol: relative to the mean variance of the rows (here: of the parents' nodes)
        tol = engine.tol * parent_inertia / max(parent_rows * self.source.dim, 1)
        balance_round, penalty, start_iter = 0, None, 0
        checkpoint = meta["checkpoint"]
        if checkpoint is not None and checkpoint["level"] == level:
            centroids = np.asarray(self.store.get_array(checkpoint["file"]), dtype=self.dtype)
            start_iter, balance_round = checkpoint["iteration"], checkpoint.get("round", 0)
            if checkpoint.get("offsets"):
                offsets = np.asarray(self.store.get_array(checkpoint["offsets"]))
            if checkpoint.get("penalty"):
                penalty = np.asarray(self.store.get_array(checkpoint["penalty"]))
            logger.info("level %d: resuming after iteration %d", level, start_iter)
        else:
            with cpu_threads(self.runtime.device):
                centroids = seed_children(sample, n_children, metric=engine.metric, seed=self.seed, level=level,
                                          dtype=self.dtype, device=self.runtime.device)
        last = level == engine.n_levels - 1
        next_sample = None if last else (self.sample_size(level + 1), self.seed + level + 1)
        iterations = 0
        while True:
            on_iteration = functools.partial(self.checkpoint, level, balance_round, offsets)
            if start_iter == 0:
                on_iteration(0, centroids, None, penalty)
            # rows under a leaf go to an empty last group
            groups_offsets = None if offsets is None or level == 0 else np.append(offsets, offsets[-1])
            penalised = engine.balance == "penalty" and balance_round > 0
            result = lloyd(self.source, centroids, self.runtime, metric=engine.metric, max_iter=engine.max_iter,
                           tol=tol, keep_labels=not last or self.keep_paths, offsets=groups_offsets, groups=groups,
                           start_iter=start_iter, on_iteration=on_iteration, sample=next_sample, penalty=penalty,
                           penalty_strength=engine.balance_strength if penalised else 0.0, desc=f"level {level}")
            iterations += result.n_iter - start_iter
            penalty = result.penalty
            rebalanced = self.balance(level, balance_round, result, offsets, groups_offsets)
            if rebalanced is None:
                break
            centroids, offsets, penalty = rebalanced
            balance_round, start_iter = balance_round + 1, 0
        if level > 0:
            levels[-1].child_offsets = offsets
        k = len(result.centroids)
        parent = np.full(k, -1) if level == 0 else group_of_centroid(offsets, k)
        levels.append(Level(result.centroids, parent.astype(np.int64), result.counts.astype(np.int64),
                            np.zeros(k + 1, dtype=np.int64), penalty))
        stats = {"n_nodes": k, "iterations": iterations, "inertia": result.inertia, "balance_rounds": balance_round,
                 "seconds": time.perf_counter() - started, "imbalance": imbalance(result.counts)}
        logger.info("level %d: %d nodes, %d iterations, inertia %.6g", level, k, iterations, result.inertia)
        self.complete(level, levels[-1], stats)
        if self.keep_paths:
            self.level_labels.append(result.partial.labels)
        if last:
            return None, None
        labels = {b: lab for b, (lab, _) in result.partial.labels.items()}
        return node_groups(labels, k), result.partial.sample.with_vectors(self.source)

    def fitted_paths(self) -> dict | None:
        """Per block, the (paths, distances) of every row, both (n, n_levels), as greedy routing
        down the fitted tree gives them (the final assignment of every level); None unless this
        run fitted every level and kept their labels (a resumed run, a tree that ended early)."""
        if len(self.level_labels) != self.engine.n_levels:
            return None
        return {b: (np.stack([labels[b][0] for labels in self.level_labels], 1),
                    np.stack([labels[b][1] for labels in self.level_labels], 1).astype(np.float64))
                for b in self.level_labels[0]}

    def balance(self, level, balance_round, result, offsets, groups_offsets):
        """The next balancing round's (centroids, offsets, penalty), or None when balancing is
        over: "penalty" runs one round of penalised passes from the converged level, "split" up to
        ``balance_rounds`` rounds of split-and-merge while they change anything."""
        engine = self.engine
        if engine.balance is None or balance_round >= (1 if engine.balance == "penalty" else engine.balance_rounds):
            return None
        if engine.balance == "penalty":
            logger.info("level %d: size-penalised passes", level)
            penalty = size_penalty(result.counts, result.partial.inertia, groups_offsets,
                                   strength=engine.balance_strength)
            return result.centroids, offsets, penalty
        rng = np.random.default_rng([self.seed, level, balance_round])
        centroids, balanced, changed = split_and_merge(
            result.centroids, result.counts, result.partial.inertia, None if level == 0 else offsets,
            factor=engine.balance_factor, merge=engine.balance_merge, rng=rng)
        if not changed:
            return None
        logger.info("level %d: balancing round %d, %d nodes", level, balance_round + 1, len(centroids))
        return centroids, None if level == 0 else balanced, None

    # -- state in the Store ----------------------------------------------------------------------
    def checkpoint(self, level, balance_round, offsets, iteration, centroids, shift, penalty=None):
        """Commit the centroids after ``iteration`` (and the penalties of the next pass, and a new
        balancing round's offsets), then delete the previous checkpoint's files."""
        store, meta = self.store, self.meta
        if store is None:
            return
        folder = checkpoint_dir(level)
        previous = meta["checkpoint"] or {}
        name = f"{folder}/round-{balance_round}-iter-{iteration:04d}.npy"
        store.put_array(name, host_arrays(centroids)[0])
        penalty_file = None
        if penalty is not None:  # the next pass's penalties: a function of the last pass
            penalty_file = f"{folder}/round-{balance_round}-iter-{iteration:04d}-penalty.npy"
            store.put_array(penalty_file, penalty)
        for old in previous.get("file"), previous.get("penalty"):
            if old is not None and old not in (name, penalty_file):
                store.delete(old)
        offsets_file = previous.get("offsets") if previous.get("level") == level else None
        if balance_round and iteration == 0:  # a new structure: its offsets travel with it
            offsets_file = f"{folder}/round-{balance_round}-offsets.npy"
            store.put_array(offsets_file, offsets if offsets is not None else np.array([0, len(centroids)]))
        meta["checkpoint"] = {"level": level, "iteration": iteration, "file": name, "shift": shift,
                              "round": balance_round, "offsets": offsets_file, "penalty": penalty_file}
        self.commit()
        self.event(event="iteration", level=level, iteration=iteration, round=balance_round)

    def complete(self, level, fitted: Level, stats: dict):
        """Commit a completed level (its arrays replace its checkpoint)."""
        store, meta = self.store, self.meta
        if store is not None:
            folder = checkpoint_dir(level)
            store.put_array(f"{folder}/centroids.npy", fitted.centroids)
            store.put_array(f"{folder}/counts.npy", fitted.counts)
            store.put_array(f"{folder}/parent.npy", fitted.parent)
            if fitted.penalty is not None:
                store.put_array(f"{folder}/penalty.npy", fitted.penalty)
            for name in (meta["checkpoint"].get(key) for key in ("file", "offsets", "penalty")):
                if name:
                    store.delete(name)
        meta["checkpoint"] = None
        meta["levels"].append(stats)
        self.commit()
        self.event(event="level", level=level, iteration=stats["iterations"], round=stats["balance_rounds"])

    def clear(self):
        """Delete the completed levels' arrays once the tree is saved."""
        if self.store is None:
            return
        for level in range(self.engine.n_levels):
            folder = checkpoint_dir(level)
            for name in ("centroids", "counts", "parent", "penalty"):
                if f"{folder}/{name}.npy" in self.store.listdir(folder):
                    self.store.delete(f"{folder}/{name}.npy")
