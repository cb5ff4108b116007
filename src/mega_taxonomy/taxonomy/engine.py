"""TaxonomyEngine: a hierarchy of k-means clusters over streamed vectors.

The estimator: its parameters (declared in ``_parameter_constraints``, grouped in
``config.Balancing`` and ``config.Routing``), and what a fitted tree does (predict, search,
sample), reading and writing one Store. A fit's whole life, resume included, is
``fitting.FitRun``, which takes the parameters as one ``config.FitConfig``.
"""

from __future__ import annotations

import logging
import os
from numbers import Integral, Real

import numpy as np
import torch

from .._estimator import as_source
from .._sklearn_compat import Interval, StrOptions
from ..errors import ConfigError
from ..io import VectorSource
from ..io.device import as_tensor
from ..ops import METRICS
from ..ops.gmm_estep.grouped import grouped_responsibilities
from ..runtime import get_runtime
from ..storage import Store
from ..storage.schema import SEARCH_ARRAYS, search_file
from .config import BALANCE_MODES, CLUSTERERS, ROUTERS, Balancing, FitConfig, Routing, check_constraints, grouped
from .fitting import KIND, FitRun
from .levels import branching_list
from .passes import predict
from .router import Router, level_offsets, route_beam, route_greedy
from .sampling import balanced_sample, read_assignments
from .search import SearchIndex
from .subtrees import SubtreeRun
from .tree import Tree

logger = logging.getLogger(__name__)

# Parameters that change the fitted tree: a store fitted with others is refused, not mixed.
FIT_PARAMS = ("n_levels", "branching_factor", "max_iter", "tol", "metric", "random_state", "dtype",
              "sample_size", "min_cluster_size", "balance", "balance_factor", "balance_merge", "balance_rounds",
              "balance_strength", "clusterer", "max_train_points_per_centroid", "partition_level")
# The flat keywords of each group (engine keyword -> the group's field), and their defaults.
BALANCE_KEYWORDS = {"balance_factor": "factor", "balance_merge": "merge", "balance_rounds": "rounds",
                    "balance_strength": "strength"}
ROUTING_KEYWORDS = {"hnsw_threshold": "threshold", "hnsw_ef": "ef"}


class TaxonomyEngine:
    """Hierarchical k-means over vectors too many for memory.

    Parameters
    ----------
    n_levels : int, default=3
    branching_factor : int or list of int, default=16
        Children per node, for every level or one per level (level 0: clusters of the root).
    dim : int, optional
        Expected dimension; input of another dimension raises DataError.
    storage_uri : str, optional
        Local path or fsspec URI (``s3://``...) of the Store holding checkpoints, the tree,
        assignments and members. Without it the fit runs in memory and cannot resume.
    max_iter, tol : Lloyd iterations per level, and scikit-learn's tolerance (scaled per level by
        the mean within-parent variance).
    metric : {"euclidean", "cosine"}
    random_state : int, default=0
    device : str, default="auto"
    dtype : {"float32", "float64"}, default="float32"
        Dtype of the centroids and of the arithmetic.
    sample_size : int or list of (int or None), optional
        Rows sampled per node to seed its children, for every level or one per level (entry
        ``l`` seeds level ``l``; entry 0 is the root's sample). Default (None):
        ``max(64 * branching, 1024)``, lowered (to no fewer than ``16 * branching``) where a
        level's sample would pass 4 GiB.
    min_cluster_size : int, default=1
        A node gets at most ``count // min_cluster_size`` children, and becomes a leaf when that
        is below 2.
    runtime : Runtime or "local", optional
    storage_options : dict, optional
        fsspec options for ``storage_uri``, the input and outputs (never logged or stored).
    column, id_column : str, optional
        Parquet columns of the vectors and ids.
    batch_size : int, default=65536
        Rows read at a time.
    members : int, default=100
        Nearest members kept per node.
    router : {"exact", "hnsw"} or Routing, default="exact"
        How predict and search find the nearest children of a node: exactly, or through an
        hnswlib graph for nodes with at least ``hnsw_threshold`` children (fit is always exact).
        ``Routing(kind, threshold=, ef=)`` gives the three routing parameters at once.
    hnsw_threshold, hnsw_ef : int
        Fan-out from which a node gets a graph, and the graphs' search breadth.
    search_index : bool, default=True
        Keep every fitted row's vector grouped by leaf in the Store, for :meth:`search`
        (needs the vectors in memory once, while building).
    balance : {None, "split", "penalty"} or Balancing, default=None
        ``Balancing(mode, factor=, merge=, rounds=, strength=)`` gives the five balancing
        parameters at once (then the ``balance_*`` keywords stay at their defaults).
        "split": after a level converges, nodes above ``balance_factor`` times the level's mean
        size are split and nodes below ``balance_merge`` times it are merged into their siblings,
        then the level's Lloyd passes run again; up to ``balance_rounds`` times. Nodes then no
        longer have exactly ``branching_factor`` children.
        "penalty": size-penalised assignment. After a level converges, its Lloyd passes run
        again (up to ``max_iter``) with rows choosing the child of least ``distance +
        penalty``, each node's penalty following from its size in the pass before
        (``balance_strength`` times the mean distance of its siblings' rows times the log of its
        size: ``cluster.balance.size_penalty``). The penalties are part of the tree
        (``levels/NN/penalty.npy``): predict and search route with them.
    balance_strength : float, default=0.5
        Weight of the size penalty (0 < strength < 1; larger is unstable).
    clusterer : {"kmeans", "gmm"}, default="kmeans"
        "gmm": each node's children are a Gaussian mixture (diagonal covariances) fitted on the
        node's rows, all nodes of a level in the same passes: EM started from the level's k-means,
        rows then going to the child of highest responsibility (``taxonomy/mixture.py``). Each
        level also stores its nodes' weights within their parent and variances
        (``levels/NN/weights.npy``, ``covariances.npy``; the centroids are the means); predict,
        search and the paths route by responsibility, the stored ``distance`` being
        ``-log(w N(x | node))``; :meth:`predict_proba` gives the responsibilities. Needs
        ``metric="euclidean"``, and no ``balance="penalty"``.
    max_train_points_per_centroid : int or None, default=256
        A level whose nodes' children times this many rows are fewer than the rows under it runs
        its Lloyd iterations on a hash sample of that many rows per child held in memory (FAISS's
        rule: 256 points per centroid), then one pass over all rows assigns every row
        (``taxonomy/sampled.py``): its iterations read no data. Levels too wide for that (a sample
        past 4 GiB, or as large as the data), mixtures and ``balance="penalty"`` read every row
        in every pass, as all levels do with None. ``stats_`` counts both kinds of passes:
        ``"passes"`` over the data, ``"sample_passes"`` over samples in memory.
    partition_level : int or None, default=None
        Fit the levels from this one down subtree by subtree (``taxonomy/subtrees.py``): the
        levels above are fitted over all rows, every row is then written once to ``storage_uri``
        grouped by its node there, and each node's subtree is fitted from its own rows alone, on
        one worker of the runtime's pool (a subtree larger than a worker's share of the rows:
        over all workers). No pass below sums across workers, and the driver keeps nothing per
        row. Needs ``storage_uri``. The tree is the same for any number of workers; it differs
        from the level-synchronous fit's (None) in its seeds. ``stats_`` adds ``subtrees``,
        ``largest_partition`` and ``subtree_passes``.

    Attributes
    ----------
    tree_ : Tree
        Per level: centroids, parent, counts, child_offsets (CSR).
    stats_ : dict
        Per-level iterations, inertia, imbalance and seconds; total passes.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    >>> engine = TaxonomyEngine(n_levels=2, branching_factor=[4, 3], device="cpu").fit(X)
    >>> engine.predict(X[:3]).shape
    (3, 2)
    """

    _parameter_constraints: dict = {
        "n_levels": [Interval(Integral, 1, None, closed="left")],
        "branching_factor": [Integral, list, tuple],  # values: levels.branching_list
        "dim": [Interval(Integral, 1, None, closed="left"), None],
        "storage_uri": [str, os.PathLike, None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "metric": [StrOptions(set(METRICS))],
        "random_state": [Integral],
        "device": [str, torch.device],
        "dtype": [StrOptions({"float32", "float64"})],
        "sample_size": [Integral, list, tuple, None],  # values: levels.sample_size_list
        "min_cluster_size": [Interval(Integral, 1, None, closed="left")],
        "runtime": [None, StrOptions({"local"}), object],
        "storage_options": [dict, None],
        "column": [str, None],
        "id_column": [str, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "members": [Interval(Integral, 1, None, closed="left")],
        "router": [StrOptions(set(ROUTERS)), Routing],
        "hnsw_threshold": [Interval(Integral, 1, None, closed="left")],
        "hnsw_ef": [Interval(Integral, 1, None, closed="left")],
        "search_index": ["boolean"],
        "balance": [None, StrOptions(set(BALANCE_MODES)), Balancing],
        "balance_factor": [Interval(Real, 1, None, closed="neither")],
        "balance_merge": [Interval(Real, 0, 1, closed="left")],
        "balance_rounds": [Interval(Integral, 0, None, closed="left")],
        "balance_strength": [Interval(Real, 0, 1, closed="neither")],
        "clusterer": [StrOptions(set(CLUSTERERS))],
        "max_train_points_per_centroid": [Interval(Integral, 1, None, closed="left"), None],
        "partition_level": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, n_levels=3, branching_factor=16, dim=None, storage_uri=None, *, max_iter=20, tol=1e-4,
                 metric="euclidean", random_state=0, device="auto", dtype="float32", sample_size=None,
                 min_cluster_size=1, runtime=None, storage_options=None, column=None, id_column=None,
                 batch_size=65_536, members=100, router="exact", hnsw_threshold=4096, hnsw_ef=64,
                 search_index=True, balance=None, balance_factor=2.0, balance_merge=0.1, balance_rounds=3,
                 balance_strength=0.5, clusterer="kmeans", max_train_points_per_centroid=256,
                 partition_level=None):
        self.n_levels = n_levels
        self.branching_factor = branching_factor
        self.dim = dim
        self.storage_uri = storage_uri
        self.max_iter = max_iter
        self.tol = tol
        self.metric = metric
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.sample_size = sample_size
        self.min_cluster_size = min_cluster_size
        self.runtime = runtime
        self.storage_options = storage_options
        self.column = column
        self.id_column = id_column
        self.batch_size = batch_size
        self.members = members
        self.router = router
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_ef = hnsw_ef
        self.search_index = search_index
        self.balance = balance
        self.balance_factor = balance_factor
        self.balance_merge = balance_merge
        self.balance_rounds = balance_rounds
        self.balance_strength = balance_strength
        self.clusterer = clusterer
        self.max_train_points_per_centroid = max_train_points_per_centroid
        self.partition_level = partition_level

    # -- parameters ----------------------------------------------------------------------------
    def _validate_params(self):
        check_constraints(self._parameter_constraints, {name: getattr(self, name) for name in
                                                        self._parameter_constraints}, type(self).__name__)

    def _group(self, name, group, keywords):
        defaults = type(self).__init__.__kwdefaults__
        flat = {keyword: (field, getattr(self, keyword), defaults[keyword]) for keyword, field in keywords.items()}
        return grouped(getattr(self, name), group, flat, name)

    def balancing(self) -> Balancing:
        """The balancing parameters, from ``balance`` (a Balancing) or the flat keywords."""
        return self._group("balance", Balancing, BALANCE_KEYWORDS)

    def routing(self) -> Routing:
        """The routing parameters, from ``router`` (a Routing) or the flat keywords."""
        return self._group("router", Routing, ROUTING_KEYWORDS)

    def _config(self) -> FitConfig:
        """The fit's parameters, checked (ConfigError names the one to fix)."""
        self._validate_params()
        factors = tuple(branching_list(self.branching_factor, self.n_levels))
        return FitConfig(n_levels=self.n_levels, factors=factors, max_iter=self.max_iter, tol=self.tol,
                         metric=self.metric, random_state=self.random_state, dtype=self.dtype,
                         sample_size=self.sample_size, min_cluster_size=self.min_cluster_size,
                         balancing=self.balancing(), routing=self.routing(), members=self.members,
                         search_index=self.search_index, storage_uri=self.storage_uri,
                         storage_options=self.storage_options, clusterer=self.clusterer,
                         max_train_points_per_centroid=self.max_train_points_per_centroid,
                         partition_level=self.partition_level)

    # -- helpers -------------------------------------------------------------------------------
    def _source(self, data) -> VectorSource:
        return as_source(data, dim=self.dim, column=self.column, id_column=self.id_column,
                         batch_size=self.batch_size, storage_options=self.storage_options)

    def _store(self, uri=None) -> Store | None:
        uri = uri or self.storage_uri
        return None if uri is None else Store(uri, storage_options=self.storage_options)

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, input, output=None, *, callback=None):
        """Fit the taxonomy on ``input`` (path, glob, URI, array, tensor or VectorSource).

        A fit interrupted in the same ``storage_uri`` goes on from its last checkpoint; a fit
        done there is loaded (with ``output``, its paths are written there).

        Parameters
        ----------
        output : str, optional
            Also write every row's ``(id, path, distance)`` as parquet parts under this URI.
        callback : callable, optional
            ``callback(event)`` with a dict after every committed checkpoint and level
            (``{"event": "iteration" | "level", "level": l, "iteration": t, "round": balancing round}``).

        Returns
        -------
        self
        """
        config = self._config()
        source = self._source(input)
        fit = FitRun if config.partition_level is None else SubtreeRun
        run = fit(config, source, get_runtime(self.runtime, self.device), callback)
        self.tree_, self.stats_ = run.run(output)
        self._search = None
        return self

    def _load_fitted(self, store, manifest):
        self.tree_ = Tree.load(store, self.n_levels, self.metric)
        self.stats_ = manifest["meta"]
        self._search = None

    # -- use -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, storage_uri, *, storage_options=None, **overrides) -> TaxonomyEngine:
        """A fitted engine from its Store."""
        store = Store(storage_uri, storage_options=storage_options)
        manifest = store.manifest_of(KIND, "finished taxonomy", status="done")
        params = {k: v for k, v in manifest["params"].items() if k in FIT_PARAMS}
        if "max_train_points_per_centroid" not in overrides:  # not recorded: every level read all rows
            params.setdefault("max_train_points_per_centroid", None)
        engine = cls(storage_uri=storage_uri, storage_options=storage_options, **params, **overrides)
        engine._load_fitted(store, manifest)
        return engine

    @property
    def router_(self) -> Router:
        """The router of the fitted tree (HNSW graphs are built on first use)."""
        self._check_fitted()
        key = self.routing()
        if getattr(self, "_router", None) is None or self._router_key != key or self._router.tree is not self.tree_:
            self._router = Router(self.tree_, key.kind, key.threshold, key.ef)
            self._router_key = key
        return self._router

    def _check_fitted(self):
        if not hasattr(self, "tree_"):
            raise ConfigError("this TaxonomyEngine is not fitted: call fit() or TaxonomyEngine.load()")

    def predict(self, input, output=None, *, beam=1, cache=None):
        """Paths of the rows of ``input``: int64 array (n, n_levels), -1 below a leaf.

        ``beam > 1`` keeps that many candidates per level and returns the path of the best leaf
        reached. With ``output`` (a URI) the paths are written there as parquet parts
        (``id``, ``path``, ``distance``), in input order, and the committed manifest is returned.
        ``cache`` (a :class:`~mega_taxonomy.taxonomy.PathCache`): rows whose id it holds take their
        path from it, unrouted, and every row's path is kept there (files with an ``id_column``;
        the engine's runtime in this process).
        """
        self._check_fitted()
        out = self._store(output) if output is not None else None
        return predict(self.tree_, self.router_, self._source(input), get_runtime(self.runtime, self.device),
                       beam=beam, out=out, storage_options=self.storage_options, taxonomy_uri=self.storage_uri,
                       cache=cache)

    def predict_proba(self, input, level=0):
        """Responsibilities of the children of every row's parent at ``level`` (a taxonomy fitted
        with ``clusterer="gmm"``): float64 (n, branching_factor[level]), column j the parent's
        j-th child, rows summing to 1 (0 past a parent's children; all 0 for a row whose parent at
        ``level - 1`` is a leaf). The parents are the rows' greedy paths (:meth:`predict`).
        Tensor in, tensor out (on its device); otherwise an array."""
        self._check_fitted()
        if not 0 <= level < self.tree_.n_levels:
            raise ValueError(f"level must be in [0, {self.tree_.n_levels}), got {level}")
        fitted = self.tree_.levels[level]
        if fitted.covariances is None:
            raise ConfigError("predict_proba needs a taxonomy fitted with clusterer='gmm'")
        width = branching_list(self.branching_factor, self.n_levels)[level]
        device = get_runtime(self.runtime, self.device).device
        offsets = level_offsets(self.tree_, level)
        out = []
        for block in self._source(input).blocks():
            x = as_tensor(block.vectors, device)
            if level == 0:
                groups = torch.zeros(len(x), dtype=torch.int64, device=device)
            else:
                parents = route_greedy(x, self.tree_, level, router=self.router_)[0][:, level - 1]
                groups = torch.where(parents >= 0, parents, len(offsets) - 2)
            r = grouped_responsibilities(x, groups, offsets, fitted.weights, fitted.centroids, fitted.covariances)
            out.append(torch.nn.functional.pad(r, (0, max(0, width - r.shape[1])))[:, :width].cpu())
        proba = torch.cat(out)
        return proba.to(input.device) if isinstance(input, torch.Tensor) else proba.numpy()

    def search(self, queries, k=10, *, beam=8, return_compared=False):
        """The ``k`` fitted rows nearest each query: beam down to the ``beam`` nearest leaves,
        then rank all their members exactly.

        Returns
        -------
        distances : ndarray (n, k) float32, squared L2 (or ``1 - cos``), nearest first
        ids : ndarray (n, k) int64, -1 where fewer than k rows were reached
        compared : ndarray (n,), rows compared per query (with ``return_compared=True``)
        """
        self._check_fitted()
        if getattr(self, "_search", None) is None:
            store = self._store()
            if store is None or search_file(SEARCH_ARRAYS[0]) not in store.listdir("search"):
                raise ConfigError("search needs a fit with storage_uri and search_index=True")
            self._search = SearchIndex.load(store)
        q = torch.as_tensor(np.asarray(queries) if not isinstance(queries, torch.Tensor) else queries)
        q = q.to(torch.float64 if self.dtype == "float64" else torch.float32)
        d, ids, compared = self._search.search(q, self.tree_, self.router_, k, beam)
        return (d, ids, compared) if return_compared else (d, ids)

    def sample(self, n, *, strategy="uniform-leaves", random_state=0) -> np.ndarray:
        """``n`` fitted ids spread evenly over the leaves ("uniform-leaves"), or evenly over the
        children at every level ("hierarchical"); the rows of lowest hash within each leaf.
        Reads the assignments from the Store (see ``taxonomy/sampling.py``)."""
        self._check_fitted()
        store = self._store()
        if store is None:
            raise ConfigError("sample needs a fit with storage_uri (it reads the stored assignments)")
        return balanced_sample(*read_assignments(store), self.tree_, n, strategy, random_state)

    def transform_paths(self, x, beam=1):
        """(paths, leaf distances) of an in-memory batch (tensor or array), without the runtime."""
        self._check_fitted()
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        paths, dist = route_beam(t, self.tree_, beam, router=self.router_)
        return paths[:, 0].cpu().numpy(), dist[:, 0].cpu().numpy()
