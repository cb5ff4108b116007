"""KMeans: scikit-learn's estimator over arrays, tensors and streamed sources."""

from __future__ import annotations

import functools
import logging
import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._estimator import as_source, is_source_like
from .._sklearn_compat import Interval, StrOptions, _fit_context
from ..errors import ConfigError
from ..ops import METRICS, compute_dtype, distances
from ..io.device import as_tensor, host_arrays
from ..partials import hash_sample
from ..runtime import cpu_threads, finished, get_runtime, settled
from ..storage import Store
from ..storage.schema import assignments_file, assignments_table, level_file
from .checkpointing import open_checkpoints, resume, save_iteration
from .init import kmeans_plusplus
from .lloyd import lloyd
from .lloyd_pass import LloydState, LloydTask

logger = logging.getLogger(__name__)


def seed_of(random_state) -> int:
    """An int seed for hash sampling: the int given, else one drawn from the RandomState."""
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """K-means clustering that streams its data: arrays, tensors, or files of any size.

    Lloyd's algorithm as passes of additive float64 partial sums per block of rows (see
    ``cluster/lloyd.py``): the same data and seed give the same centroids for any file layout,
    batch size or runtime. Initialization runs on a sample of rows chosen by the lowest
    hash(seed, id).

    Parameters
    ----------
    n_clusters : int, default=8
    init : {"k-means++", "random"} or array of shape (n_clusters, n_features), default="k-means++"
        "k-means++" runs greedy k-means++ on the sample; "random" takes the ``n_clusters`` sampled
        rows of lowest hash.
    max_iter : int, default=300
    tol : float, default=1e-4
        As scikit-learn: stop when the sum of squared centroid shifts is at most ``tol`` times the
        mean per-feature variance of the data. ``tol=0`` runs until the centroids stop moving (or
        ``max_iter``).
    random_state : int, RandomState instance or None, default=None
    metric : {"euclidean", "cosine"}, default="euclidean"
        "cosine" is spherical k-means: unit-norm centroids, distance ``1 - cos``.
    device : str, default="auto"
        "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    batch_size : int, default=65536
        Rows read at a time when ``X`` is a path or URI.
    sample_size : int or None, default=None
        Rows sampled for initialization; None means ``max(50 * n_clusters, 10_000)`` (all rows
        when fewer).
    runtime : Runtime or None, default=None
        Where passes run; None is an in-process ``LocalRuntime`` on ``device``.
    checkpoint : str or None, default=None
        A Store (local path or fsspec URI) where ``fit`` commits the centroids after every
        Lloyd iteration (``storage.Checkpoints``). A fit run again with the same parameters and
        input (rows, dim, dtype) goes on from the last iteration committed and ends with the
        same centroids, bit for bit; a fit finished there is taken from it (one pass gives the
        labels, counts and inertia). Other parameters there raise ConfigError. On a collective
        runtime, rank 0 writes them (the store must be one it reaches).
    storage_options : dict or None, default=None
        fsspec options for ``checkpoint`` and for paths and URIs given as ``X`` (never logged
        or written).

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    labels_ : ndarray of shape (n_samples,)
        Only for in-memory input (arrays, tensors).
    inertia_ : float
        Sum of squared distances (``1 - cos`` for cosine) of the rows to their centroid.
    n_iter_ : int
    counts_ : ndarray of shape (n_clusters,)
        Rows per cluster.
    n_features_in_ : int

    Notes
    -----
    ``transform`` returns *squared* euclidean distances (the project's convention), not the
    euclidean distances of scikit-learn's ``KMeans.transform``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=np.float32)
    >>> km = KMeans(n_clusters=2, random_state=0, device="cpu").fit(X)
    >>> sorted(km.cluster_centers_.tolist())
    [[1.0, 2.0], [10.0, 2.0]]
    >>> km.predict(np.array([[0, 0], [12, 3]], dtype=np.float32)).tolist() == [
    ...     km.predict(X[:1])[0], km.predict(X[3:4])[0]]
    True
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions({"k-means++", "random"}), "array-like"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "metric": [StrOptions(set(METRICS))],
        "device": [str, torch.device],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "sample_size": [Interval(Integral, 1, None, closed="left"), None],
        "runtime": [None, StrOptions({"local"}), object],
        "checkpoint": [None, str, os.PathLike],
        "storage_options": [None, dict],
    }

    def __init__(self, n_clusters=8, *, init="k-means++", max_iter=300, tol=1e-4, random_state=None,
                 metric="euclidean", device="auto", batch_size=65_536, sample_size=None, runtime=None,
                 checkpoint=None, storage_options=None):
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.metric = metric
        self.device = device
        self.batch_size = batch_size
        self.sample_size = sample_size
        self.runtime = runtime
        self.checkpoint = checkpoint
        self.storage_options = storage_options

    # -- input -------------------------------------------------------------------------------
    def _source(self, X, *, reset):
        """``X`` as a VectorSource, validated as scikit-learn does for in-memory arrays."""
        return as_source(X, self, reset=reset, batch_size=self.batch_size, storage_options=self.storage_options)

    def _runtime(self):
        return get_runtime(self.runtime, self.device)

    def _dtype(self, source):
        return np.float64 if source.dtype == np.float64 else np.float32

    # -- fit ---------------------------------------------------------------------------------
    def _check_size(self, n_samples):
        if n_samples < self.n_clusters:
            raise ConfigError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")

    def _initial_centroids(self, source, runtime, seed):
        """(centroids, sample) where sample carries the data moments for ``tol``."""
        dtype = self._dtype(source)
        needs_sample = not hasattr(self.init, "__array__") or self.tol > 0
        sample = None
        if needs_sample:
            size = self.sample_size or max(50 * self.n_clusters, 10_000)
            sample = hash_sample(source, size, seed, runtime)
            self._check_size(sample.count)
        if hasattr(self.init, "__array__"):
            centroids = np.asarray(host_arrays(self.init)[0], dtype=dtype)  # a tensor on any device too
            if centroids.shape != (self.n_clusters, source.dim):
                raise ConfigError(
                    f"init has shape {centroids.shape}, expected (n_clusters, n_features) = "
                    f"({self.n_clusters}, {source.dim})"
                )
            return np.ascontiguousarray(centroids), sample
        rows = sample.vectors.astype(dtype)
        if len(rows) < self.n_clusters:
            raise ConfigError(f"sample_size={len(rows)} should be >= n_clusters={self.n_clusters}.")
        if self.init == "random":
            return np.ascontiguousarray(rows[: self.n_clusters]), sample
        x = torch.as_tensor(rows, device=runtime.device)
        if self.metric == "cosine":
            x = torch.nn.functional.normalize(x, dim=1)
        with cpu_threads(runtime.device):
            centroids = kmeans_plusplus(x, self.n_clusters, np.random.default_rng(seed), metric=self.metric)
        return centroids.cpu().numpy(), sample

    def _start(self, source, runtime):
        """(initial centroids, absolute tol): the fit's start, from a sample of ``source``."""
        centroids, sample = self._initial_centroids(source, runtime, seed_of(self.random_state))
        if self.metric == "cosine":
            centroids = torch.nn.functional.normalize(torch.from_numpy(centroids), dim=1).numpy()
        return centroids, self.tol * sample.mean_variance if self.tol > 0 else 0.0

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute the centroids.

        Parameters
        ----------
        X : {array-like, tensor} of shape (n_samples, n_features), VectorSource, path or URI
            Paths and URIs (parquet, npy, fvecs/bvecs; globs, directories, ``s3://``) are streamed.
        y : Ignored

        Returns
        -------
        self
        """
        source = self._source(X, reset=True)
        self._check_size(len(source))
        runtime = self._runtime()
        in_memory = not is_source_like(X)
        checkpoints = None
        if self.checkpoint is not None:
            checkpoints = open_checkpoints(self.checkpoint, self.storage_options, self.get_params(), source)
        if checkpoints is None:
            centroids, tol = self._start(source, runtime)
            result = runtime.drive(lloyd, source, centroids, metric=self.metric, max_iter=self.max_iter, tol=tol,
                                   keep_labels=in_memory, desc="k-means")
        else:
            centroids, tol, start_iter, max_iter = resume(checkpoints, lambda: self._start(source, runtime),
                                                          self.max_iter)
            result = runtime.drive(lloyd, source, centroids, metric=self.metric, max_iter=max_iter, tol=tol,
                                   keep_labels=in_memory, desc="k-means", start_iter=start_iter,
                                   on_iteration=functools.partial(save_iteration, checkpoints, tol))
            checkpoints.refresh()  # the hooks may have committed elsewhere (a collective fit's rank 0)
            checkpoints.complete(0, {"centroids": result.centroids}, status="done", n_iter=result.n_iter, tol=tol)
        self.cluster_centers_ = result.centroids
        self.counts_ = result.counts
        self.inertia_ = result.inertia
        self.n_iter_ = result.n_iter
        if in_memory:
            self.labels_ = host_arrays(result.partial.ordered_labels()[0])[0]
        self._n_features_out = self.n_clusters
        logger.info("k-means: %d clusters, %d iterations, inertia %.6g", self.n_clusters, self.n_iter_, self.inertia_)
        return self

    def partial_fit(self, X, y=None):
        """Update the centroids with one mini-batch (per block of ``X``), as MiniBatchKMeans.

        Each centroid moves to the mean of all rows it was ever assigned:
        ``c <- (c * n + sum(batch rows)) / (n + n_batch)``. The first call initializes the
        centroids from ``X`` (which needs at least ``n_clusters`` rows).

        Returns
        -------
        self
        """
        first = not hasattr(self, "cluster_centers_")
        if first:
            self._validate_params()
        source = self._source(X, reset=first)
        runtime = self._runtime()
        if first:
            self._check_size(len(source))
            seed = seed_of(self.random_state)
            centroids, _ = self._initial_centroids(source, runtime, seed)
            self.cluster_centers_ = centroids
            self.counts_ = np.zeros(self.n_clusters, dtype=np.int64)
            self.n_steps_ = 0
            self._n_features_out = self.n_clusters
        task = LloydTask()
        for block in source.blocks():
            state = LloydState(self.cluster_centers_, self.metric, update=True)
            p = settled(finished(task(block, state, runtime.device)))
            counts = self.counts_ + p.counts
            grown = p.counts > 0
            centroids = self.cluster_centers_.astype(np.float64)
            centroids[grown] = (centroids[grown] * self.counts_[grown, None] + p.sums[grown]) / counts[grown, None]
            if self.metric == "cosine":
                centroids = torch.nn.functional.normalize(torch.from_numpy(centroids), dim=1).numpy()
            self.cluster_centers_ = centroids.astype(self.cluster_centers_.dtype)
            self.counts_ = counts
            self.inertia_ = p.total_inertia
            self.n_steps_ = getattr(self, "n_steps_", 0) + 1
        return self

    # -- use ---------------------------------------------------------------------------------
    def _assign(self, X):
        """(labels, distances) of the rows of X, in X's type (tensor in, tensor out)."""
        check_is_fitted(self)
        source = self._source(X, reset=False)
        state = LloydState(self.cluster_centers_, self.metric, update=False, keep_labels=True)
        partial = self._runtime().map_reduce(source, LloydTask(), state, desc="predict")
        labels, dist = partial.ordered_labels()
        if isinstance(X, torch.Tensor):
            return torch.as_tensor(labels).to(X.device), torch.as_tensor(dist).to(X.device)
        return tuple(host_arrays(labels, dist))

    def predict(self, X):
        """Index of the nearest centroid of every row.

        Returns
        -------
        labels : ndarray of shape (n_samples,), int64 (a tensor on X's device for tensor input)
        """
        return self._assign(X)[0]

    def transform(self, X):
        """Squared distances (``1 - cos`` for cosine) to every centroid: shape (n_samples, n_clusters)."""
        check_is_fitted(self)
        if isinstance(X, torch.Tensor):
            self._source(X, reset=False)
            c = torch.as_tensor(self.cluster_centers_, device=X.device)
            return distances(X, c, metric=self.metric).to(compute_dtype(X.dtype))
        source = self._source(X, reset=False)
        device = self._runtime().device
        c = torch.as_tensor(self.cluster_centers_, device=device)
        out = [distances(as_tensor(b.vectors, device), c, metric=self.metric).cpu().numpy() for b in source.blocks()]
        return np.concatenate(out)

    def score(self, X, y=None):
        """Opposite of the inertia of ``X`` on the fitted centroids."""
        _, dist = self._assign(X)
        return -float(np.asarray(dist.cpu() if isinstance(dist, torch.Tensor) else dist, dtype=np.float64).sum())

    # -- storage -----------------------------------------------------------------------------
    def _json_params(self) -> dict:
        params = self.get_params()
        for name in ("checkpoint", "storage_options"):  # where a fit ran, not what it fitted
            params.pop(name)
        if hasattr(params["init"], "__array__"):
            params["init"] = "array"
        params["runtime"] = None if params["runtime"] in (None, "local") else repr(params["runtime"])
        params["device"] = str(params["device"])
        params["random_state"] = params["random_state"] if isinstance(params["random_state"], Integral) else None
        return params

    def save(self, uri, *, storage_options=None, assignments=None) -> dict:
        """Write the fitted model to a Store (a one-level taxonomy: ``levels/00/...``).

        Parameters
        ----------
        uri : str
            Local path or fsspec URI.
        storage_options : dict, optional
            fsspec options (never written or logged).
        assignments : source, optional
            Also write every row's ``(id, path=[label], distance)`` under ``assignments/``.

        Returns
        -------
        dict
            The committed manifest.
        """
        check_is_fitted(self)
        store = Store(uri, storage_options=storage_options)
        store.put_array(level_file(0, "centroids"), self.cluster_centers_)
        store.put_array(level_file(0, "counts"), self.counts_)
        if assignments is not None:
            source = self._source(assignments, reset=False)
            device = self._runtime().device
            state = LloydState(self.cluster_centers_, self.metric, update=False, keep_labels=True)
            for block in source.blocks():
                ((labels, dist),) = finished(LloydTask()(block, state, device)).labels.values()
                store.put_table(assignments_file(block.index), assignments_table(block.ids, labels, dist))
        return store.commit(kind="kmeans", params=self._json_params(), status="fitted", n_iter=self.n_iter_,
                            inertia=self.inertia_, n_features_in=self.n_features_in_)

    @classmethod
    def load(cls, uri, *, storage_options=None) -> KMeans:
        """A fitted KMeans from a Store written by :meth:`save`."""
        store = Store(uri, storage_options=storage_options)
        manifest = store.manifest_of("kmeans", "k-means model")
        params = {k: v for k, v in manifest["params"].items() if k != "init"}
        km = cls(**params)
        km.cluster_centers_ = np.asarray(store.get_array(level_file(0, "centroids")))
        km.counts_ = np.asarray(store.get_array(level_file(0, "counts")))
        km.n_iter_, km.inertia_ = manifest["meta"]["n_iter"], manifest["meta"]["inertia"]
        km.n_features_in_ = manifest["meta"]["n_features_in"]
        km._n_features_out = km.n_clusters
        return km

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

