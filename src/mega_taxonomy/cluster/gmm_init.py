"""How a Gaussian mixture's EM starts, as scikit-learn's ``GaussianMixture`` starts it.

``init_params`` gives responsibilities ("kmeans": one-hot to the nearest centroid of our
:class:`~mega_taxonomy.cluster.KMeans`; "random": uniform draws normalised per row;
"random_from_data": one-hot on ``n_components`` rows drawn without replacement;
"k-means++": one-hot on the rows that k-means++ seeds with), and one M-step on them gives the
start (weights ``nk / n``). ``weights_init``, ``means_init`` and ``precisions_init`` replace what
they give; with all three, no responsibilities are computed at all.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from sklearn.cluster import kmeans_plusplus

from ..errors import ConfigError
from ..io.device import host_arrays
from ..partials import hash_sample
from .em import MixtureParams, start_from_sums
from .kmeans import KMeans

# Up to this many values, k-means++ seeds on all rows (as scikit-learn); beyond, on a hash
# sample of max(50 K, 10 000) rows (one streaming pass).
KMEANS_PLUSPLUS_ALL_ROWS = 1 << 24


def check_inits(weights, means, precisions, covariance_type, n_components, n_features):
    """The given starts as float64 arrays, checked as scikit-learn checks them (ValueError)."""
    weights, means, precisions = host_arrays(weights, means, precisions)  # tensors on any device too
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (n_components,):
            raise ValueError(f"The parameter 'weights' should have the shape of ({n_components},), "
                             f"but got {weights.shape}")
        if weights.min() < 0 or weights.max() > 1:
            raise ValueError("The parameter 'weights' should be in the range [0, 1]")
        if not np.allclose(np.abs(1.0 - weights.sum()), 0.0):
            raise ValueError(f"The parameter 'weights' should be normalized, but got sum(weights) = {weights.sum():.5f}")
    if means is not None:
        means = np.asarray(means, dtype=np.float64)
        if means.shape != (n_components, n_features):
            raise ValueError(f"The parameter 'means' should have the shape of {(n_components, n_features)}, "
                             f"but got {means.shape}")
    if precisions is not None:
        precisions = np.asarray(precisions, dtype=np.float64)
        shape = {"full": (n_components, n_features, n_features), "tied": (n_features, n_features),
                 "diag": (n_components, n_features), "spherical": (n_components,)}[covariance_type]
        if precisions.shape != shape:
            raise ValueError(f"The parameter '{covariance_type} precision' should have the shape of {shape}, "
                             f"but got {precisions.shape}")
        if covariance_type in ("diag", "spherical") and np.any(precisions <= 0.0):
            raise ValueError(f"'{covariance_type} precision' should be positive")
    return weights, means, precisions


def cholesky_of_precisions(precisions, covariance_type):
    """scikit-learn's ``_compute_precision_cholesky_from_precisions``: lower factors (full, tied)."""
    try:
        if covariance_type == "full":
            return np.array([linalg.cholesky(p, lower=True) for p in precisions])
        if covariance_type == "tied":
            return linalg.cholesky(precisions, lower=True)
    except linalg.LinAlgError:
        raise ValueError(f"'{covariance_type} precision' should be symmetric, positive-definite") from None
    return np.sqrt(precisions)


def covariances_of(prec_chol, covariance_type):
    """The covariances of precision Cholesky factors (where only precisions were given)."""
    if covariance_type == "full":
        return np.linalg.inv(prec_chol @ prec_chol.transpose(0, 2, 1))
    if covariance_type == "tied":
        return np.linalg.inv(prec_chol @ prec_chol.T)
    return 1.0 / prec_chol ** 2


def _seed_rows(source, runtime, init_params, n_components, random_state):
    """The rows that "random_from_data" and "k-means++" put all responsibility on."""
    n = len(source)
    if init_params == "random_from_data":
        return host_arrays(source.take(random_state.choice(n, size=n_components, replace=False)))[0]
    if n * source.dim <= KMEANS_PLUSPLUS_ALL_ROWS:
        rows = host_arrays(source.take(np.arange(n)))[0]
    else:
        seed = int(random_state.randint(np.iinfo(np.int32).max))
        rows = hash_sample(source, max(50 * n_components, 10_000), seed, runtime).vectors
    centers, _ = kmeans_plusplus(np.asarray(rows, dtype=np.float64), n_components, random_state=random_state)
    return centers


def initial_params(gm, source, runtime, random_state) -> MixtureParams:
    """The start of one EM run of the estimator ``gm`` over ``source``."""
    ctype, k = gm.covariance_type, gm.n_components
    weights, means, precisions = check_inits(gm.weights_init, gm.means_init, gm.precisions_init, ctype, k, source.dim)
    if len(source) < k:
        raise ConfigError(f"n_samples={len(source)} should be >= n_components={k}.")
    if weights is not None and means is not None and precisions is not None:
        prec_chol = cholesky_of_precisions(precisions, ctype)
        return MixtureParams(weights, means, prec_chol, covariances_of(prec_chol, ctype))
    kwargs = {}
    if gm.init_params == "kmeans":
        km = KMeans(n_clusters=k, random_state=random_state, device=gm.device, runtime=gm.runtime,
                    batch_size=gm.batch_size).fit(source)
        kwargs["centroids"] = km.cluster_centers_
    elif gm.init_params == "random":
        kwargs["seed"] = int(random_state.randint(np.iinfo(np.int32).max))
    else:
        kwargs["rows"] = _seed_rows(source, runtime, gm.init_params, k, random_state)
    start = start_from_sums(source, runtime, ctype, k, gm.reg_covar, **kwargs)
    if weights is not None:
        start.weights = weights
    if means is not None:
        start.means = means
    if precisions is not None:
        start.precisions_cholesky = cholesky_of_precisions(precisions, ctype)
        start.covariances = covariances_of(start.precisions_cholesky, ctype)
    return start
