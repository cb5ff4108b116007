"""GaussianMixture: scikit-learn's estimator over arrays, tensors and streamed sources."""

from __future__ import annotations

import logging
import math
import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._estimator import as_source
from .._sklearn_compat import Interval, StrOptions, _fit_context
from ..errors import ConfigError
from ..io.device import as_tensor
from ..ops.gmm_estep import COVARIANCE_TYPES, gmm_log_resp, gmm_predict, gmm_score_samples
from ..runtime import finished, get_runtime, settled
from ..storage import Store
from ..storage.schema import MIXTURE_ARRAYS, assignments_file, assignments_table, level_file
from .em import EStepState, EStepTask, MixtureParams, better, em, m_step
from .gmm_checkpointing import fit_with_checkpoints
from .gmm_init import covariances_of, initial_params

logger = logging.getLogger(__name__)


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM over arrays, tensors, or files of any size.

    scikit-learn's ``GaussianMixture`` (the same parameters, starts, M-step, ``reg_covar`` and
    convergence rule), with EM as passes of additive float64 statistics per block of rows (see
    ``cluster/em.py``): the E-step never holds the N x K responsibilities, and the same data
    give the same bits for any batch size or runtime.

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        EM stops once the mean log-likelihood per row changes by less than ``tol``.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance.
    max_iter : int, default=100
    n_init : int, default=1
        Starts run; the one of highest lower bound is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        As scikit-learn; "kmeans" runs our :class:`~mega_taxonomy.cluster.KMeans`, "random"
        draws per block of rows (so not scikit-learn's draws), "k-means++" seeds on all rows up
        to 2^24 values, else on a hash sample.
    weights_init, means_init, precisions_init : array-like, default=None
    random_state : int, RandomState instance or None, default=None
    warm_start : bool, default=False
        ``fit`` starts from the last fit's parameters (one start).
    verbose : int, default=0
    device : str, default="auto"
    runtime : Runtime or None, default=None
    batch_size : int, default=65536
        Rows read at a time when ``X`` is a path or URI (never a change of result).
    checkpoint : str or None, default=None
        A Store (local path or fsspec URI) where ``fit`` commits the parameters after every EM
        iteration of every start (``cluster/gmm_checkpointing.py``). A fit run again with the
        same parameters and input goes on from the last iteration committed and ends with the
        same parameters, bit for bit; other parameters there raise ConfigError. Not with
        ``warm_start`` once fitted.
    storage_options : dict or None, default=None
        fsspec options for ``checkpoint`` and for paths and URIs given as ``X``.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : ndarray
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
    lower_bounds_ : list of float
    n_features_in_ : int
    totals_ : EMPartial
        The running statistics of :meth:`partial_fit` (absent after ``fit`` alone).
    n_steps_ : int
        Steps of :meth:`partial_fit`.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=np.float64)
    >>> gm = GaussianMixture(n_components=2, random_state=0, device="cpu").fit(X)
    >>> sorted(gm.means_.round(6).tolist())
    [[1.0, 2.0], [10.0, 2.0]]
    >>> bool(gm.predict(np.array([[0.0, 0.0]]))[0] == gm.predict(X[:1])[0])
    True
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "random", "random_from_data", "k-means++"})],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "device": [str, torch.device],
        "runtime": [None, StrOptions({"local"}), object],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "checkpoint": [None, str, os.PathLike],
        "storage_options": [None, dict],
    }

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6, max_iter=100,
                 n_init=1, init_params="kmeans", weights_init=None, means_init=None, precisions_init=None,
                 random_state=None, warm_start=False, verbose=0, device="auto", runtime=None, batch_size=65_536,
                 checkpoint=None, storage_options=None):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.device = device
        self.runtime = runtime
        self.batch_size = batch_size
        self.checkpoint = checkpoint
        self.storage_options = storage_options

    def _source(self, X, *, reset):
        return as_source(X, self, reset=reset, batch_size=self.batch_size, storage_options=self.storage_options)

    def _params(self) -> MixtureParams:
        return MixtureParams(self.weights_, self.means_, self.precisions_cholesky_, self.covariances_)

    def _set(self, params: MixtureParams):
        self.weights_, self.means_ = params.weights, params.means
        self.precisions_cholesky_ = params.precisions_cholesky
        self.covariances_ = (params.covariances if params.covariances is not None
                             else covariances_of(params.precisions_cholesky, self.covariance_type))
        pc = self.precisions_cholesky_
        if self.covariance_type == "full":
            self.precisions_ = pc @ pc.transpose(0, 2, 1)
        elif self.covariance_type == "tied":
            self.precisions_ = pc @ pc.T
        else:
            self.precisions_ = pc ** 2

    # -- fit ---------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Estimate the parameters with EM: ``n_init`` starts, the best lower bound kept.

        Parameters
        ----------
        X : {array-like, tensor} of shape (n_samples, n_features), VectorSource, path or URI
        y : Ignored

        Returns
        -------
        self
        """
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        source = self._source(X, reset=do_init)
        runtime = get_runtime(self.runtime, self.device)
        random_state = check_random_state(self.random_state)
        if self.checkpoint is not None:
            if not do_init:
                raise ConfigError("checkpoint= resumes a fit from its own starts: not with a warm start")
            best = fit_with_checkpoints(self, source, runtime, random_state)
        else:
            best = None
            for init in range(self.n_init if do_init else 1):
                start = initial_params(self, source, runtime, random_state) if do_init else self._params()
                result = runtime.drive(em, source, start, covariance_type=self.covariance_type,
                                       reg_covar=self.reg_covar, tol=self.tol, max_iter=self.max_iter,
                                       lower_bound=-math.inf if do_init else self.lower_bound_, desc="em")
                if self.verbose:
                    logger.info("gmm start %d: %d iterations, lower bound %.6g", init, result.n_iter,
                                result.lower_bound)
                if better(result, best):
                    best = result
        if not best.converged and self.max_iter > 0:
            warnings.warn("Best performing initialization did not converge. Try different init parameters, or "
                          "increase max_iter, tol, or check for degenerate data.", ConvergenceWarning)
        self._set(best.params)
        self.converged_, self.n_iter_ = best.converged, best.n_iter
        self.__dict__.pop("totals_", None)  # the running totals of partial_fit describe another fit
        self.lower_bound_, self.lower_bounds_ = best.lower_bound, best.lower_bounds
        return self

    def partial_fit(self, X, y=None):
        """Online EM: one step per block of ``X`` (``BLOCK_ROWS`` rows; one per call for less).

        A step runs the E-step of the block under the current parameters, adds its statistics
        (sum r, r x, r x^2 or r x x^T, float64) to the running totals of every row seen so far,
        and runs the M-step on those totals: incremental EM whose step sizes are the rows' share
        of all rows seen, as ``KMeans.partial_fit`` moves a centroid to the mean of all rows it
        was ever given. The first call of an unfitted estimator starts as ``fit`` does (from
        ``X``, one start). After ``fit``, the first step's E-step runs on the fitted parameters
        but its M-step sees that block's totals alone (``fit`` keeps no totals).
        ``lower_bound_`` is the mean log-likelihood of the last block under the parameters its
        E-step ran on; ``n_steps_`` counts steps.

        Returns
        -------
        self
        """
        first = not hasattr(self, "means_")
        if first:
            self._validate_params()
        source = self._source(X, reset=first)
        runtime = get_runtime(self.runtime, self.device)
        if first:
            self._set(initial_params(self, source, runtime, check_random_state(self.random_state)))
            self.converged_, self.n_iter_, self.lower_bounds_ = False, 0, []
        totals = getattr(self, "totals_", None)
        for block in source.blocks():
            exact = finished(EStepTask()(block, EStepState(self._params(), self.covariance_type), runtime.device))
            totals = exact if totals is None else totals + exact
            step = settled(exact)
            self._set(m_step(settled(totals), self.covariance_type, self.reg_covar))
            self.lower_bound_ = step.log_likelihood / step.n_rows
            self.n_steps_ = getattr(self, "n_steps_", 0) + 1
        self.totals_ = totals
        return self

    def fit_predict(self, X, y=None):
        """Fit, then the component of every row (scikit-learn's final E-step)."""
        return self.fit(X).predict(X)

    # -- use ---------------------------------------------------------------------------------
    def _per_block(self, X, op):
        """``op(x, *parameters)`` on every block of ``X``, joined in row order (X's type out)."""
        check_is_fitted(self)
        source = self._source(X, reset=False)
        device = get_runtime(self.runtime, self.device).device
        args = (self.weights_, self.means_, self.precisions_cholesky_, self.covariance_type)
        out = [op(as_tensor(b.vectors, device), *args).cpu() for b in source.blocks()]
        out = torch.cat(out) if out else torch.zeros(0)
        return out.to(X.device) if isinstance(X, torch.Tensor) else out.numpy()

    def score_samples(self, X):
        """Log-likelihood of every row, shape (n_samples,)."""
        return self._per_block(X, gmm_score_samples)

    def score(self, X, y=None):
        """Mean log-likelihood per row."""
        return float(np.mean(np.asarray(self.score_samples(X).cpu() if isinstance(X, torch.Tensor)
                                        else self.score_samples(X))))

    def predict(self, X):
        """Component of highest responsibility of every row, shape (n_samples,)."""
        return self._per_block(X, gmm_predict)

    def predict_proba(self, X):
        """Responsibilities, shape (n_samples, n_components): the only output of size N x K,
        because it is asked for."""
        return self._per_block(X, lambda *a: torch.exp(gmm_log_resp(*a)))

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        cov = {"full": k * d * (d + 1) / 2.0, "diag": k * d, "tied": d * (d + 1) / 2.0, "spherical": k}
        return int(cov[self.covariance_type] + k * d + k - 1)

    def bic(self, X):
        """Bayesian information criterion of ``X`` (lower is better)."""
        n = len(self._source(X, reset=False))
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion of ``X`` (lower is better)."""
        n = len(self._source(X, reset=False))
        return -2 * self.score(X) * n + 2 * self._n_parameters()

    def sample(self, n_samples=1):
        """``n_samples`` rows drawn from the mixture, and their components, as scikit-learn draws them.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples}. The sampling requires at least one sample.")
        _, d = self.means_.shape
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        if self.covariance_type == "full":
            X = np.vstack([rng.multivariate_normal(m, c, int(s)) for m, c, s in zip(self.means_, self.covariances_, counts)])
        elif self.covariance_type == "tied":
            X = np.vstack([rng.multivariate_normal(m, self.covariances_, int(s)) for m, s in zip(self.means_, counts)])
        else:
            X = np.vstack([m + rng.standard_normal(size=(s, d)) * np.sqrt(c)
                           for m, c, s in zip(self.means_, self.covariances_, counts)])
        y = np.concatenate([np.full(s, j, dtype=int) for j, s in enumerate(counts)])
        return X, y

    # -- storage -----------------------------------------------------------------------------
    def _json_params(self) -> dict:
        params = self.get_params()
        for name in ("weights_init", "means_init", "precisions_init"):  # the start, not the model
            params[name] = None
        for name in ("checkpoint", "storage_options"):  # where a fit ran, not what it fitted
            params.pop(name)
        params["runtime"] = None if params["runtime"] in (None, "local") else repr(params["runtime"])
        params["device"] = str(params["device"])
        params["random_state"] = params["random_state"] if isinstance(params["random_state"], Integral) else None
        return params

    def save(self, uri, *, storage_options=None, assignments=None) -> dict:
        """Write the fitted mixture to a Store: means as ``levels/00/centroids.npy``, the other
        arrays beside them (``schema.MIXTURE_ARRAYS``). Returns the committed manifest.

        ``assignments`` (a source, optional): also write every row's ``(id, path=[component],
        distance)`` under ``assignments/``, as ``KMeans.save`` does: the component of highest
        responsibility and the squared distance to its mean."""
        check_is_fitted(self)
        store = Store(uri, storage_options=storage_options)
        store.put_array(level_file(0, "centroids"), self.means_)
        for name in MIXTURE_ARRAYS:
            store.put_array(level_file(0, name), getattr(self, name + "_"))
        if assignments is not None:
            source = self._source(assignments, reset=False)
            device = get_runtime(self.runtime, self.device).device
            means = torch.as_tensor(self.means_, device=device)
            for block in source.blocks():
                x = as_tensor(block.vectors, device).to(torch.float64)
                labels = gmm_predict(x, self.weights_, self.means_, self.precisions_cholesky_, self.covariance_type)
                dist = ((x - means[labels]) ** 2).sum(1)
                store.put_table(assignments_file(block.index),
                                assignments_table(block.ids, labels.cpu().numpy(), dist.cpu().numpy()))
        return store.commit(kind="gmm", params=self._json_params(), status="fitted", n_iter=self.n_iter_,
                            converged=bool(self.converged_), lower_bound=float(self.lower_bound_),
                            n_features_in=self.n_features_in_)

    @classmethod
    def load(cls, uri, *, storage_options=None) -> GaussianMixture:
        """A fitted GaussianMixture from a Store written by :meth:`save`."""
        store = Store(uri, storage_options=storage_options)
        manifest = store.manifest_of("gmm", "Gaussian mixture")
        gm = cls(**manifest["params"])
        arrays = {name: np.asarray(store.get_array(level_file(0, name))) for name in MIXTURE_ARRAYS}
        gm._set(MixtureParams(arrays["weights"], np.asarray(store.get_array(level_file(0, "centroids"))),
                              arrays["precisions_cholesky"], arrays["covariances"]))
        meta = manifest["meta"]
        gm.n_iter_, gm.converged_, gm.lower_bound_ = meta["n_iter"], meta["converged"], meta["lower_bound"]
        gm.n_features_in_ = meta["n_features_in"]
        return gm

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
