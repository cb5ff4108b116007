"""IVFIndex: an inverted-file index whose coarse quantizer is k-means or a Gaussian mixture, with
vectors near a border stored in several lists (multi-assignment), searched exactly within the
probed lists (``ops.probe``: queries grouped by list, one scan of each probed list per batch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .._estimator import as_source
from ..errors import ConfigError, DataError
from ..io.device import host_arrays
from ..ops.probe import PROBE_METRICS, probe_rerank
from ..storage import Store
from ..storage.schema import IVF_LIST_ARRAYS, ivf_file
from .lists import InvertedLists
from .quantizer import GMM_COVARIANCES, GMM_PROBES, Quantizer, cluster_precisions, gmm_arrays, unit_rows

logger = logging.getLogger(__name__)

QUANTIZERS = ("kmeans", "gmm")
ASSIGNMENTS = ("single", "multi", "soar")


@dataclass
class SearchStats:
    """Per-query work of a search: distances to list centroids / components (``coarse``), to
    stored rows (``fine``: the sizes of the probed lists, copies included) and lists probed."""

    coarse: np.ndarray
    fine: np.ndarray
    probed: np.ndarray

    @property
    def distances(self) -> np.ndarray:
        return self.coarse + self.fine


class IVFIndex:
    """Inverted-file index: ``nlist`` lists found by a coarse quantizer, exact re-ranking inside.

    Parameters
    ----------
    nlist : int
        Number of lists (k-means clusters or mixture components).
    quantizer : {"kmeans", "gmm"}, default="kmeans"
        "gmm" fits a Gaussian mixture (``covariance_type``; EM started from the k-means fit);
        ``gmm_probe`` says how its lists are ranked.
    assignment : {"single", "multi"}, default="single"
        "multi": a vector also goes to its next best lists, up to ``max_assign`` in all: with
        k-means when the list's distance is within ``threshold`` times the nearest (spilling:
        ``d <= d1 + (threshold - 1) |d1|``); with a GMM when its responsibility is at least
        ``threshold``. "soar" (k-means): every vector in its nearest list and in a second one
        whose residual is nearly orthogonal to the first's (``index/quantizer.py``). Search
        returns each id once.
    max_assign : int, default=2
    coarse_probe : int or None, default=None
        None: a query is scored against every list (FAISS's flat coarse quantizer). An int: the
        lists grouped under about sqrt(nlist) centroids (a k-means of the lists' centroids, made
        once and saved with the index), a query scores the groups and then the lists of its
        ``coarse_probe`` nearest groups only (``Quantizer.search_grouped``): fewer coarse
        distances, a little less recall per probe.
    threshold : float or None, default=None
        None: ``1 / nlist`` for the GMM, 1.1 for spilling, 1 for SOAR's lambda.
    metric : {"euclidean", "cosine", "inner_product"}, default="euclidean"
        Results are ascending squared L2, ``1 - cos`` or ``-<q, x>``.
    covariance_type : {"diag", "spherical"}, default="diag"
    gmm_probe : {"mean", "likelihood"}, default="mean"
        GMM: a query probes (and a vector is first stored in) the components of nearest mean,
        as with k-means, the responsibilities deciding only the extra lists of "multi"; or
        those of highest responsibility ("likelihood", which needed 4-8x the distances for the
        same recall on GloVe: see ``index/quantizer.py``).
    max_iter : int, default=20
        Lloyd iterations of the k-means fit.
    gmm_iter : int, default=10
        EM iterations of the GMM after its k-means start.
    random_state : int, default=0
    device : str, default="cpu"
        Where ``search`` runs: "cpu" (compiled kernels) or "cuda" (lists kept there; Triton).
    batch_size : int, default=65536
        Rows read at a time by ``add`` from files.

    Attributes
    ----------
    quantizer_ : Quantizer
    lists_ : InvertedLists
    ntotal : int
        Vectors added (each counted once whatever its copies) less those removed.
    last_stats_ : SearchStats
        The per-query counters of the last search.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    >>> index = IVFIndex(16, assignment="multi").train(X)
    >>> _ = index.add(X)
    >>> d, i = index.search(X[:3], k=1, nprobe=16)
    >>> i[:, 0].tolist(), index.ntotal
    ([0, 1, 2], 2000)
    """

    def __init__(self, nlist, *, quantizer="kmeans", assignment="single", max_assign=2, coarse_probe=None,
                 threshold=None, metric="euclidean", covariance_type="diag", gmm_probe="mean", max_iter=20,
                 gmm_iter=10, random_state=0, device="cpu", batch_size=65_536):
        self.nlist, self.quantizer, self.assignment = nlist, quantizer, assignment
        self.coarse_probe = coarse_probe
        self.gmm_probe = gmm_probe
        self.max_assign, self.threshold, self.metric = max_assign, threshold, metric
        self.covariance_type, self.max_iter, self.gmm_iter = covariance_type, max_iter, gmm_iter
        self.random_state, self.device, self.batch_size = random_state, device, batch_size
        self._validate()
        self.quantizer_, self.lists_, self.ntotal = None, None, 0
        self.last_stats_ = None
        self._device_lists = None

    def _validate(self):
        if not isinstance(self.nlist, (int, np.integer)) or self.nlist < 1:
            raise ConfigError(f"nlist must be a positive int, got {self.nlist!r}")
        for name, value, options in (("quantizer", self.quantizer, QUANTIZERS),
                                     ("assignment", self.assignment, ASSIGNMENTS),
                                     ("metric", self.metric, PROBE_METRICS),
                                     ("covariance_type", self.covariance_type, GMM_COVARIANCES),
                                     ("gmm_probe", self.gmm_probe, GMM_PROBES)):
            if value not in options:
                raise ConfigError(f"{name} must be one of {options}, got {value!r}")
        if self.max_assign < 1:
            raise ConfigError(f"max_assign must be at least 1, got {self.max_assign}")
        if self.coarse_probe is not None and (not isinstance(self.coarse_probe, (int, np.integer))
                                              or self.coarse_probe < 1):
            raise ConfigError(f"coarse_probe must be None or a positive int, got {self.coarse_probe!r}")
        if self.assignment == "soar" and self.quantizer != "kmeans":
            raise ConfigError(f"assignment='soar' spills k-means lists, not those of quantizer={self.quantizer!r}")

    @property
    def threshold_(self) -> float:
        """The threshold in use (the documented default when ``threshold`` is None)."""
        if self.threshold is not None:
            return float(self.threshold)
        if self.assignment == "soar":
            return 1.0
        return 1.0 / self.nlist if self.quantizer == "gmm" else 1.1

    @property
    def is_trained(self) -> bool:
        return self.quantizer_ is not None

    # -- build ---------------------------------------------------------------------------------
    def train(self, X):
        """Fit the coarse quantizer on ``X`` (a training sample held in memory: an array, tensor,
        path or source); returns self."""
        from ..cluster import GaussianMixture, KMeans

        (x,) = host_arrays(torch.as_tensor(_in_memory(X)))
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) < self.nlist:
            raise ConfigError(f"train needs at least nlist={self.nlist} rows, got {len(x)}")
        if self.metric == "cosine":
            x = unit_rows(x)
        fit_device = self.device if str(self.device).startswith("cuda") else "cpu"
        km = KMeans(self.nlist, metric="cosine" if self.metric == "cosine" else "euclidean", max_iter=self.max_iter,
                    random_state=self.random_state, device=fit_device).fit(x)
        if self.quantizer == "kmeans":
            self.quantizer_ = Quantizer("kmeans", self.metric, {"centroids": km.cluster_centers_})
        else:
            centroids = km.cluster_centers_.astype(np.float64)
            counts = np.bincount(km.labels_, minlength=self.nlist).astype(np.float64)
            weights = np.maximum(counts, 1) / np.maximum(counts, 1).sum()
            gm = GaussianMixture(self.nlist, covariance_type=self.covariance_type, max_iter=self.gmm_iter,
                                 weights_init=weights, means_init=centroids,
                                 precisions_init=cluster_precisions(x, km.labels_, centroids, self.covariance_type),
                                 random_state=self.random_state, device=fit_device, tol=0.0)
            import warnings

            with warnings.catch_warnings():  # a few EM steps from a k-means start: not converged, by design
                warnings.simplefilter("ignore")
                gm.fit(x.astype(np.float64))
            self.quantizer_ = Quantizer("gmm", self.metric, gmm_arrays(gm), probe=self.gmm_probe)
        self.lists_ = InvertedLists(self.nlist, x.shape[1])
        self.ntotal, self._device_lists = 0, None
        return self

    def empty_like(self, **params) -> IVFIndex:
        """A new empty index with this one's trained quantizer and ``params`` changed (say
        ``assignment="multi"``, or another ``threshold``): no training again. The quantizer
        (kind, metric, nlist) cannot change."""
        self._check_trained()
        trained = ("nlist", "quantizer", "metric", "covariance_type", "gmm_probe")
        fixed = {name: params[name] for name in trained if name in params and params[name] != getattr(self, name)}
        if fixed:
            raise ConfigError(f"{sorted(fixed)} belong to the trained quantizer; train a new index to change them")
        index = type(self)(**{**self.get_params(), **params})
        index.quantizer_, index.lists_ = self.quantizer_, InvertedLists(self.nlist, self.quantizer_.dim)
        return index

    def _check_trained(self):
        if self.quantizer_ is None:
            raise ConfigError("the index is not trained: call train(X) first (or load a saved index)")

    def add(self, X, ids=None):
        """Add vectors (arrays, tensors, paths, URIs or a source, streamed block by block) with
        ``ids`` (int64, one per row; None: the source's id column if it has one, else
        consecutive from ``ntotal``). Ids should be unique: search returns each id once.
        Returns self."""
        self._check_trained()
        source = as_source(X, batch_size=self.batch_size)
        if source.dim != self.quantizer_.dim:
            raise DataError(f"vectors of dimension {source.dim} added to an index of dimension {self.quantizer_.dim}")
        if ids is not None:
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(ids) != len(source):
                raise DataError(f"{len(ids)} ids for {len(source)} rows")
        parts, added = [], 0
        for block in source.blocks():
            (v,) = host_arrays(block.vectors)
            v = np.asarray(v, dtype=np.float32)
            lists = self.quantizer_.assign(v, self.assignment, self.max_assign, self.threshold_)
            if ids is not None:
                block_ids = ids[block.ordinals]
            elif source.has_id_column:
                block_ids = np.asarray(block.ids)
            else:
                block_ids = self.ntotal + np.asarray(block.ordinals)
            parts.append((lists, v, block_ids))
            added += len(v)
        self.lists_.extend(parts)
        self.ntotal += added
        self._device_lists = None
        logger.info("IVF: added %d vectors, %d stored rows (%.3f copies each)", added, len(self.lists_),
                    len(self.lists_) / max(self.ntotal, 1))
        return self

    def remove_ids(self, ids) -> int:
        """Remove every copy of ``ids``; returns how many of them were in the index."""
        self._check_trained()
        found = self.lists_.remove(ids)
        self.ntotal -= found
        self._device_lists = None
        return found

    def reconstruct(self, ids) -> np.ndarray:
        """The stored vectors of ``ids`` (an int: one vector; an array: rows). KeyError if absent."""
        self._check_trained()
        out = self.lists_.reconstruct(ids)
        return out[0] if np.ndim(ids) == 0 else out

    @property
    def bytes_per_vector(self) -> float:
        """Bytes held per vector added: its copies (vector + id) in the lists, the offsets and the
        quantizer shared out."""
        self._check_trained()
        quantizer = sum(np.asarray(a).nbytes for a in self.quantizer_.arrays.values())
        return (self.lists_.nbytes() + quantizer) / max(self.ntotal, 1)

    # -- search --------------------------------------------------------------------------------
    def search(self, Q, k=10, nprobe=1, *, return_stats=False, backend="auto"):
        """The ``k`` nearest stored vectors of every query among its ``nprobe`` best lists.

        Returns
        -------
        distances : (n, k) float32, ascending (squared L2, ``1 - cos`` or ``-<q, x>``); inf padding
        ids : (n, k) int64, -1 padding; each id at most once
        stats : SearchStats (with ``return_stats=True``; also kept as ``last_stats_``)
            Numpy arrays for array queries; tensors on the queries' device for tensors.
        """
        self._check_trained()
        if k < 1 or nprobe < 1:
            raise ConfigError(f"k and nprobe must be at least 1, got k={k}, nprobe={nprobe}")
        is_tensor = isinstance(Q, torch.Tensor)
        q = Q if is_tensor else np.asarray(Q)
        if q.ndim != 2 or q.shape[1] != self.quantizer_.dim:
            raise DataError(f"queries of shape {tuple(q.shape)}; the index holds dimension {self.quantizer_.dim}")
        nprobe = min(nprobe, self.nlist)
        cuda = str(self.device).startswith("cuda")
        coarse = np.full(len(q), self.nlist, np.int64)
        if cuda:  # queries from host or device memory; everything after the copy stays there
            qd = torch.as_tensor(q, device=self.device)
            if not torch.isfinite(qd).all():
                raise DataError(f"query row {int((~torch.isfinite(qd).all(1)).nonzero()[0, 0])} is not finite")
            if self.coarse_probe is None:
                probes_d = self.quantizer_.search_torch(qd, nprobe)[1]
            else:  # the grouped search on the host (a few hundred scores a query), the probes moved
                probes, coarse = self._probes(qd.float().cpu().numpy(), nprobe)
                probes_d = torch.as_tensor(probes, device=self.device)
            dev = self._on_device()
            d, i = probe_rerank(qd.float(), probes_d, dev["offsets"], dev["vectors"], dev["ids"], k, metric=self.metric,
                                terms=dev["terms"], dedup=self.assignment != "single", backend=backend)
            probes, d = probes_d.cpu().numpy(), d.float()
        else:
            q_host = np.ascontiguousarray(q.detach().cpu().numpy() if is_tensor else q, dtype=np.float32)
            if not np.isfinite(q_host).all():
                raise DataError(f"query row {int(np.argmax(~np.isfinite(q_host).all(1)))} is not finite")
            probes, coarse = self._probes(q_host, nprobe)
            d, i = probe_rerank(q_host, probes, self.lists_.offsets, self.lists_.vectors, self.lists_.ids, k,
                                metric=self.metric, terms=self.lists_.terms(self.metric),
                                dedup=self.assignment != "single", backend=backend)
        lists = self.lists_
        self.last_stats_ = SearchStats(coarse, np.where(probes >= 0, lists.sizes[np.maximum(probes, 0)], 0).sum(1),
                                       (probes >= 0).sum(1))
        if is_tensor:
            d, i = torch.as_tensor(d, dtype=torch.float32).to(Q.device), torch.as_tensor(i).to(Q.device)
        else:
            d, i = (a.cpu().numpy() if isinstance(a, torch.Tensor) else a for a in (d, i))
            d = np.asarray(d, np.float32)
        return (d, i, self.last_stats_) if return_stats else (d, i)

    def _probes(self, q: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(probes (n, nprobe), coarse distances (n,)) of host queries: flat, or grouped."""
        if self.coarse_probe is None:
            return self.quantizer_.search(q, nprobe)[1], np.full(len(q), self.nlist, np.int64)
        if "group_of" not in self.quantizer_.arrays:
            self._group_lists()
        _, probes, coarse = self.quantizer_.search_grouped(q, nprobe, self.coarse_probe)
        return probes, coarse

    def _group_lists(self):
        """The lists' centroids grouped by a k-means of them (about sqrt(nlist) groups), kept in
        the quantizer's arrays (saved with the index)."""
        from ..cluster import KMeans

        q = self.quantizer_
        c = unit_rows(q.centroids) if self.metric == "cosine" else q.centroids
        n_groups = max(1, min(self.nlist, round(self.nlist ** 0.5)))
        km = KMeans(n_groups, metric="cosine" if self.metric == "cosine" else "euclidean", max_iter=20,
                    random_state=self.random_state).fit(c)
        q.arrays["group_centroids"] = np.asarray(km.cluster_centers_, dtype=np.float32)
        q.arrays["group_of"] = np.asarray(km.labels_, dtype=np.int64)

    def _on_device(self) -> dict:
        """The lists on ``device``, copied once per change."""
        if self._device_lists is None:
            lists = self.lists_
            x_add, x_scale = lists.terms(self.metric)
            self._device_lists = {
                "vectors": torch.as_tensor(np.asarray(lists.vectors), device=self.device),
                "ids": torch.as_tensor(np.asarray(lists.ids), device=self.device),
                "offsets": torch.as_tensor(lists.offsets, device=self.device),
                "terms": (torch.as_tensor(x_add, device=self.device), torch.as_tensor(x_scale, device=self.device)),
            }
        return self._device_lists

    # -- storage -------------------------------------------------------------------------------
    def get_params(self) -> dict:
        return {name: getattr(self, name) for name in ("nlist", "quantizer", "assignment", "max_assign", "coarse_probe",
                                                      "threshold", "metric", "covariance_type", "gmm_probe",
                                                      "max_iter", "gmm_iter", "random_state", "device", "batch_size")}

    def save(self, uri, *, storage_options=None) -> dict:
        """Write the index to a Store (local path or fsspec URI; npy arrays, no pickle)."""
        self._check_trained()
        store = Store(uri, storage_options=storage_options)
        for name, array in self.quantizer_.arrays.items():
            store.put_array(ivf_file("quantizer", name), array)
        for name in IVF_LIST_ARRAYS:
            store.put_array(ivf_file("lists", name), np.asarray(getattr(self.lists_, name)))
        return store.commit(kind="ivf", params=self.get_params(), status="built", ntotal=self.ntotal,
                            quantizer_arrays=sorted(self.quantizer_.arrays), dim=self.quantizer_.dim)

    @classmethod
    def load(cls, uri, *, storage_options=None, device=None) -> IVFIndex:
        """An index written by :meth:`save` (local files are memory-mapped)."""
        store = Store(uri, storage_options=storage_options)
        manifest = store.manifest_of("ivf", "IVF index")
        params = {"gmm_probe": "likelihood", **manifest["params"]}  # saved before the choice: likelihood
        if device is not None:
            params["device"] = device
        index = cls(**params)
        meta = manifest["meta"]
        arrays = {name: store.get_array(ivf_file("quantizer", name)) for name in meta["quantizer_arrays"]}
        index.quantizer_ = Quantizer(index.quantizer, index.metric, arrays, probe=index.gmm_probe)
        lists = {name: store.get_array(ivf_file("lists", name), mmap=True) for name in IVF_LIST_ARRAYS}
        index.lists_ = InvertedLists(index.nlist, meta["dim"], lists["vectors"], lists["ids"], lists["offsets"])
        index.ntotal = int(meta["ntotal"])
        return index


def _in_memory(X):
    """A training sample as one array or tensor (files are read whole)."""
    if isinstance(X, (np.ndarray, torch.Tensor)):
        return X
    source = as_source(X)
    if not hasattr(source, "take"):
        raise DataError("train takes an array, a tensor, or files that fit in memory")
    (v,) = host_arrays(source.take(np.arange(len(source))))
    return v
