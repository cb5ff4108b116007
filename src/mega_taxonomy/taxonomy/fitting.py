"""One fit of a taxonomy, its whole life: resume or done, the levels, the outputs, the commit.

Top-down and level-synchronous (DESIGN.md, Taxonomy): level 0 is a k-means over all rows; at
level l every node of level l-1 gets its own children, and all nodes of the level are fitted in
the same data passes, each row compared only with the children of its own parent (grouped
assignment). The number of passes is the sum of the iterations per level plus one assignment
pass per level (which also samples every node for the next level's seeds), one sampling pass
and one output pass, whatever the number of nodes (and, in a level where a cluster went empty,
one pass that finds the farthest rows to refill it: see ``cluster.lloyd``). With
``clusterer="gmm"`` a level's k-means is the start of EM passes, and the level's assignment pass
gives every row the child of highest responsibility (``mixture.py``).

A :class:`FitRun` takes the fit's parameters as one frozen ``config.FitConfig``, never the
engine. State lives in a Store through ``storage.Checkpoints`` (one stage a level): every
iteration's centroids under fresh names, then completed levels. A run started again with the
same parameters goes on from the last checkpoint or completed level and ends with the same
tree, bit for bit; a finished one is loaded, not fitted again.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..cluster.balance import size_penalty, split_and_merge
from ..cluster.lloyd import lloyd
from ..errors import ConfigError
from ..partials import group_of_centroid, hash_sample, offsets_of
from ..runtime import CountingRuntime, cpu_threads, passes_here_on_cpu
from ..sizes import imbalance
from ..storage import Checkpoints, Store
from ..storage.schema import members_file
from .config import FitConfig
from .hooks import IterationCheckpoint
from .levels import plan_children, seed_children
from .mixture import fit_mixtures, start_from_kmeans
from .passes import OutputState, OutputTask, RouteState, RouteTask, predict
from .router import Router
from .sampled import SeedView, TrainingSample, rows_under, train_rows
from .search import SearchIndex
from .tree import Level, Tree

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


def node_groups(labels: dict, n_nodes: int) -> dict:
    """Per block, each row's node as its group at the next level; rows under a leaf (-1) go to
    the empty group ``n_nodes``."""
    return {b: np.where(lab >= 0, lab, n_nodes) for b, lab in labels.items()}


# What a completed level keeps in its checkpoint folder until the tree is saved.
LEVEL_ARRAYS = ("centroids", "counts", "parent", "penalty", "weights", "covariances")


class FitRun:
    """One fit: ``run(output)`` returns ``(tree, stats)``; ``stats`` is the manifest's meta
    (levels' statistics, checkpoint, passes, seconds), committed after every checkpoint and level.

    Parameters
    ----------
    config : FitConfig
    source : VectorSource
    runtime : Runtime
    callback : callable, optional
        ``callback(event)`` after every committed checkpoint and level.
    outputs : bool or "members", default=True
        Whether the output pass writes every row's path (and members, the search index) where
        the fit writes; "members": the members only, for a subtree of a larger fit
        (``subtrees.py``), whose paths come from the whole tree and whose members are selected
        where its rows are; False: nothing.
    iteration_checkpoints : bool, default=True
        Whether every iteration is committed, or only completed levels (a part of a larger fit
        small enough to fit again whole: a subtree).
    """

    def __init__(self, config: FitConfig, source, runtime, callback=None, *, outputs=True, iteration_checkpoints=True):
        self.config, self.source, self.callback, self.outputs = config, source, callback, outputs
        self.runtime = CountingRuntime(runtime)
        self.store = None if config.storage_uri is None else Store(config.storage_uri,
                                                                    storage_options=config.storage_options)
        self.checkpoints = Checkpoints(self.store, KIND, config.params(source), where="storage_uri")
        self.meta = self.checkpoints.meta
        # where the iterations' checkpoints go (none: a Checkpoints without a store)
        self.iterations = self.checkpoints if iteration_checkpoints else Checkpoints(None, KIND, {})
        self.factors = list(config.factors)
        self.dtype = np.dtype(config.dtype)
        self.seed = config.seed
        self.asked_sample_sizes = config.sample_sizes()
        # Per level fitted in this run, every block's final (labels, distances): the rows' paths,
        # which the output pass would otherwise route again (router.Router._exact). Kept where
        # passes run here on the CPU, within _PATHS_BYTES.
        self.keep_paths = (outputs and passes_here_on_cpu(runtime)
                           and _PATH_BYTES_PER_ROW * config.n_levels * len(source) <= _PATHS_BYTES)
        self.level_labels = []

    def run(self, output=None) -> tuple[Tree, dict]:
        """Fit (or go on fitting) the tree, write the outputs (also every row's path under
        ``output``), commit "done"; a fit done already is loaded (and its paths written)."""
        config, store = self.config, self.store
        if self.checkpoints.done:
            logger.info("%r: fit already done, loading it", store)
            tree = Tree.load(store, config.n_levels, config.metric)
            if output is not None:
                routing = config.routing
                predict(tree, Router(tree, routing.kind, routing.threshold, routing.ef), self.source,
                        self.runtime.runtime, out=self.out_store(output), storage_options=config.storage_options,
                        taxonomy_uri=config.storage_uri)
            return tree, self.meta
        self.meta.setdefault("levels", [])
        started = time.perf_counter()
        tree = self.fit_levels()
        if self.outputs:
            self.write_outputs(tree, output, self.fitted_paths())
        self.meta["seconds"] = self.meta.get("seconds", 0) + time.perf_counter() - started
        if store is not None:
            tree.save(store)
            self.checkpoints.clear(range(config.n_levels))
        self.commit("done")
        return tree, self.meta

    def out_store(self, output) -> Store:
        return Store(output, storage_options=self.config.storage_options)

    def commit(self, status="fitting"):
        self.checkpoints.commit(status, passes=self.passes())

    def passes(self) -> int:
        """Passes of the fit so far, this run's included (taken from the counter)."""
        passes, self.runtime.passes = self.meta.get("passes", 0) + self.runtime.passes, 0
        return passes

    def event(self, **info):
        if self.callback is not None:
            self.callback(info)

    def train_rows(self, level: int, parents: int) -> int | None:
        """Rows drawn per node of the ``parents`` nodes above ``level`` to train it on a sample, or
        None (``sampled.train_rows``); a resumed fit knows all it depends on."""
        return train_rows(self.config, level, self.source.dim * self.dtype.itemsize, parents, len(self.source))

    def draw_size(self, level: int, parents: int) -> int:
        """Rows sampled per node of the level above ``level``: the seeds' sample, or the larger
        training sample, of which the seeds' sample is the prefix (both by lowest hash)."""
        return max(self.sample_size(level), self.train_rows(level, parents) or 0)

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
    def fit_levels(self) -> Tree:
        n_levels = self.config.n_levels
        levels, groups, sample = self.start()
        for level in range(len(levels), n_levels):
            fitted = self.fit_level(level, levels, groups, sample)
            if fitted is None:
                break
            groups, sample = fitted
        while len(levels) < n_levels:  # every branch ended early: empty levels keep paths' width
            levels.append(Level(np.zeros((0, self.source.dim), self.dtype), np.zeros(0, np.int64),
                                np.zeros(0, np.int64), np.zeros(1, np.int64)))
        return Tree(levels, self.config.metric)

    def load_level(self, level) -> Level:
        """A completed level, as its run left it in the Store."""
        arrays = self.checkpoints.completed(level, LEVEL_ARRAYS)
        return Level(arrays["centroids"], arrays["parent"], arrays["counts"],
                     np.zeros(len(arrays["centroids"]) + 1, dtype=np.int64), arrays["penalty"], arrays["weights"],
                     arrays["covariances"])

    def start(self):
        """(completed levels, row groups, node samples): what the next level needs. Resuming after
        a completed level, one pass routes the rows down the levels done (and samples their
        nodes); a fresh run draws the root's sample."""
        config, meta, runtime = self.config, self.meta, self.runtime
        levels = [self.load_level(i) for i in range(len(meta["levels"]))]
        groups = sample = None
        if levels:
            for i in range(1, len(levels)):
                levels[i - 1].child_offsets = offsets_of(np.bincount(levels[i].parent, minlength=levels[i - 1].n_nodes))
            parents = levels[-1].n_nodes  # (a level trained on a sample needs it again after a checkpoint)
            need_sample = len(levels) < config.n_levels and (meta["checkpoint"] is None
                                                            or self.train_rows(len(levels), parents) is not None)
            draw = (self.draw_size(len(levels), parents), self.seed + len(levels)) if need_sample else None
            routed = runtime.map_reduce(self.source, RouteTask(), RouteState(Tree(levels, config.metric), draw),
                                        desc="resume")
            groups = node_groups(routed.labels, levels[-1].n_nodes)
            sample = None if routed.sample is None else routed.sample.with_vectors(self.source)
        elif meta["checkpoint"] is None:
            sample = hash_sample(self.source, self.draw_size(0, 1), self.seed, runtime)
            meta["root"] = {"rows": sample.count, "mean_variance": sample.mean_variance}
            if sample.count < self.factors[0] * config.min_cluster_size:
                raise ConfigError(f"{sample.count} rows cannot make {self.factors[0]} clusters of at least "
                                  f"{config.min_cluster_size}: lower branching_factor[0] or min_cluster_size")
        elif self.train_rows(0, 1) is not None:  # resuming level 0, trained on the root's sample
            sample = hash_sample(self.source, self.draw_size(0, 1), self.seed, runtime)
        return levels, groups, sample

    def resumed(self, level, tol):
        """(centroids, iterations done, balancing round, offsets, penalty, max_iter) of ``level``
        from the last checkpoint, or None when it holds none of this level. A checkpoint of an
        iteration that converged leaves only the final pass to run (max_iter = iterations done)."""
        point = self.checkpoints.resume_point()
        if point is None or point.stage != level:
            return None
        logger.info("level %d: resuming after iteration %d", level, point.iteration)
        shift = point.info.get("shift")
        max_iter = point.iteration if shift is not None and shift <= tol else self.config.max_iter
        return (point.arrays["centroids"].astype(self.dtype, copy=False), point.iteration, point.round,
                point.arrays.get("offsets"), point.arrays.get("penalty"), max_iter)

    def fit_level(self, level, levels, groups, sample):
        """Fit ``level`` (appended to ``levels``), with its balancing rounds; returns the next
        level's (groups, sample), or None when every node of the level above is a leaf."""
        config, meta = self.config, self.meta
        started = time.perf_counter()
        if level == 0:
            n_children, offsets = np.array([self.factors[0]]), None
            parent_inertia = meta["root"]["mean_variance"] * meta["root"]["rows"] * self.source.dim
            parent_rows = meta["root"]["rows"]
        else:
            n_children = plan_children(levels[-1].counts, self.factors[level], config.min_cluster_size)
            if not n_children.any():
                logger.info("level %d: every node of level %d is a leaf", level, level - 1)
                return None
            offsets = offsets_of(n_children)
            levels[-1].child_offsets = offsets
            parent_inertia, parent_rows = meta["levels"][-1]["inertia"], int(levels[-1].counts.sum())
        above = 1 if level == 0 else levels[-1].n_nodes
        training = None if sample is None or self.train_rows(level, above) is None else TrainingSample.of(
            sample, n_children, config.max_train_points_per_centroid, self.runtime.device, level,
            parent_rows if level == 0 else rows_under(levels[-1].counts, n_children))
        # scikit-learn's tol: relative to the mean variance of the rows (here: of the parents' nodes)
        tol = config.tol * parent_inertia / max(parent_rows * self.source.dim, 1)
        balance_round, penalty, start_iter, max_iter = 0, None, 0, config.max_iter
        resumed = self.resumed(level, tol)
        if resumed is not None:
            centroids, start_iter, balance_round, resumed_offsets, penalty, max_iter = resumed
            offsets = offsets if resumed_offsets is None else resumed_offsets
        else:
            with cpu_threads(self.runtime.device):
                centroids = seed_children(SeedView(sample, self.sample_size(level)), n_children, metric=config.metric,
                                          seed=self.seed, level=level, dtype=self.dtype, device=self.runtime.device)
        last = level == config.n_levels - 1
        keep_labels = not last or self.keep_paths
        mixture = config.clusterer == "gmm"  # then the k-means passes are the start: no labels, no sample
        iterations = sample_passes = 0
        while True:
            on_iteration = IterationCheckpoint(self.iterations, level, balance_round, offsets, self.callback)
            if start_iter == 0:
                on_iteration(0, centroids, None, penalty)
            # rows under a leaf go to an empty last group
            groups_offsets = None if offsets is None or level == 0 else np.append(offsets, offsets[-1])
            penalised = config.balancing.mode == "penalty" and balance_round > 0
            # (balancing may change the level's node count: the next level's sample is drawn for it)
            next_sample = None if last else (self.draw_size(level + 1, len(centroids)), self.seed + level + 1)
            passes = dict(metric=config.metric, max_iter=max_iter, tol=tol, keep_labels=keep_labels and not mixture,
                          offsets=groups_offsets, groups=groups, start_iter=start_iter, on_iteration=on_iteration,
                          sample=None if mixture else next_sample, desc=f"level {level}")
            if training is not None:  # iterations on the sample in memory, then one pass over all rows
                result, n = training.fit(self.source, self.runtime, centroids, **passes)
                sample_passes += n
            else:  # through the runtime's own entry: a collective runtime runs the level on its workers
                result = self.runtime.drive(lloyd, self.source, centroids, penalty=penalty,
                                            penalty_strength=config.balancing.strength if penalised else 0.0, **passes)
            if self.iterations is self.checkpoints:  # committed by the hook, maybe elsewhere (a collective fit's rank 0)
                self.checkpoints.refresh()
            iterations += result.n_iter - start_iter
            penalty = result.penalty
            rebalanced = self.balance(level, balance_round, result, offsets, groups_offsets)
            if rebalanced is None:
                break
            centroids, offsets, penalty = rebalanced
            balance_round, start_iter, max_iter = balance_round + 1, 0, config.max_iter
        if level > 0:
            levels[-1].child_offsets = offsets
        k = len(result.centroids)
        parent = np.full(k, -1) if level == 0 else group_of_centroid(offsets, k)
        fitted = Level(result.centroids, parent.astype(np.int64), result.counts.astype(np.int64),
                       np.zeros(k + 1, dtype=np.int64), penalty)
        stats = {"n_nodes": k, "iterations": iterations, "inertia": result.inertia, "balance_rounds": balance_round,
                 "sample_rows": None if training is None else training.rows, "sample_passes": sample_passes}
        self.meta["sample_passes"] = self.meta.get("sample_passes", 0) + sample_passes
        labels, sample = result.partial.labels, result.partial.sample
        if mixture:
            labels, sample = self.fit_mixtures(level, fitted, result, groups_offsets, groups, keep_labels,
                                               next_sample, stats)
        levels.append(fitted)
        stats.update(seconds=time.perf_counter() - started, imbalance=imbalance(fitted.counts))
        logger.info("level %d: %d nodes, %d iterations, inertia %.6g", level, k, iterations, result.inertia)
        self.complete(level, levels[-1], stats)
        if self.keep_paths:
            self.level_labels.append(labels)
        if last:
            return None, None
        return node_groups({b: lab for b, (lab, _) in labels.items()}, k), sample.with_vectors(self.source)

    def fit_mixtures(self, level, fitted: Level, result, groups_offsets, groups, keep_labels, next_sample, stats):
        """clusterer="gmm": the level's children as mixtures, EM from its k-means (``mixture.py``);
        ``fitted`` takes their weights, means, variances and the rows' counts by highest
        responsibility. Returns the assignment's (labels per block, next level's sample)."""
        k = fitted.n_nodes
        offsets = np.array([0, k]) if groups_offsets is None else groups_offsets
        start = start_from_kmeans(result.centroids, result.counts, result.partial.inertia, offsets, self.source.dim)
        mixtures, assigned, n_iter, lower_bound = fit_mixtures(
            self.source, self.runtime, start, offsets, groups, max_iter=self.config.max_iter,
            keep_labels=keep_labels, sample=next_sample, dtype=self.dtype, desc=f"level {level}")
        fitted.centroids = mixtures.means.astype(self.dtype)
        fitted.counts = assigned.counts.astype(np.int64)
        fitted.weights, fitted.covariances = mixtures.weights, mixtures.variances
        stats.update(em_iterations=n_iter, lower_bound=lower_bound)
        logger.info("level %d: %d EM iterations, lower bound %.6g", level, n_iter, lower_bound)
        return assigned.labels, assigned.sample

    def fitted_paths(self) -> dict | None:
        """Per block, the (paths, distances) of every row, both (n, n_levels), as greedy routing
        down the fitted tree gives them (the final assignment of every level); None unless this
        run fitted every level and kept their labels (a resumed run, a tree that ended early)."""
        if len(self.level_labels) != self.config.n_levels:
            return None
        return {b: (np.stack([labels[b][0] for labels in self.level_labels], 1),
                    np.stack([labels[b][1] for labels in self.level_labels], 1).astype(np.float64))
                for b in self.level_labels[0]}

    def balance(self, level, balance_round, result, offsets, groups_offsets):
        """The next balancing round's (centroids, offsets, penalty), or None when balancing is
        over: "penalty" runs one round of penalised passes from the converged level, "split" up to
        ``rounds`` rounds of split-and-merge while they change anything."""
        balancing = self.config.balancing
        if balance_round >= balancing.max_rounds:
            return None
        if balancing.mode == "penalty":
            logger.info("level %d: size-penalised passes", level)
            penalty = size_penalty(result.counts, result.partial.inertia, groups_offsets, strength=balancing.strength)
            return result.centroids, offsets, penalty
        rng = np.random.default_rng([self.seed, level, balance_round])
        centroids, balanced, changed = split_and_merge(
            result.centroids, result.counts, result.partial.inertia, None if level == 0 else offsets,
            factor=balancing.factor, merge=balancing.merge, rng=rng)
        if not changed:
            return None
        logger.info("level %d: balancing round %d, %d nodes", level, balance_round + 1, len(centroids))
        return centroids, None if level == 0 else balanced, None

    # -- state in the Store ----------------------------------------------------------------------
    def complete(self, level, fitted: Level, stats: dict):
        """Commit a completed level (its arrays replace its checkpoint)."""
        self.meta["levels"].append(stats)
        self.checkpoints.complete(level, {name: getattr(fitted, name) for name in LEVEL_ARRAYS},
                                  passes=self.passes())
        self.event(event="level", level=level, iteration=stats["iterations"], round=stats["balance_rounds"])

    # -- outputs -------------------------------------------------------------------------------
    def write_outputs(self, tree, output, paths=None, member_levels=None):
        """The output pass: assignments to the store (and ``output``), and members per node
        (``paths``: every block's fitted paths, see :meth:`fitted_paths`; None: routed) of the
        first ``member_levels`` levels (None: all)."""
        config, store = self.config, self.store
        out = None if output is None else self.out_store(output)
        receivers = {s.uri: s for s in (store, out) if s is not None}
        if not receivers:
            return
        members_only = self.outputs == "members"
        build_index = store is not None and config.search_index and not members_only
        targets = () if members_only else tuple((uri, config.storage_options) for uri in receivers)
        state = OutputState(tree, targets, config.members, leaves=build_index, paths=paths,
                            member_levels=member_levels)
        result = self.runtime.map_reduce(self.source, OutputTask(), state, desc="assignments")
        if build_index:
            SearchIndex.build(tree, *result.leaf_rows(), self.source).save(store)
        for (uri, name), entry in result.files.items():
            receivers[uri].record(name, entry)
        if store is not None:
            for level in range(len(result.levels)):
                store.put_table(members_file(level), result.table(level))
        if out is not None:
            out.commit(kind="assignments", params={"taxonomy": config.storage_uri}, status="done", rows=result.rows)
