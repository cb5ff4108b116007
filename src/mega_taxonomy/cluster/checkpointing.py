"""The checkpoints of a k-means fit (``KMeans(checkpoint=...)``), through ``storage.Checkpoints``.

One stage (0), one checkpoint per Lloyd iteration: the centroids after it, the shift that decides
convergence and the absolute tol it is held to (so a resumed fit draws no sample again). A fit
that stopped after iteration t goes on with ``lloyd(start_iter=t)``: Lloyd's passes depend only on
the centroids, so it ends with the centroids of a fit that never stopped, bit for bit.
"""

from __future__ import annotations

import hashlib
import logging
from numbers import Integral

import numpy as np

from ..io.device import host_arrays
from ..io.shards import dtype_name
from ..storage import Checkpoints, Store

logger = logging.getLogger(__name__)

# The manifest's kind of a fit's checkpoints; "kmeans" is a saved model (``KMeans.save``).
KIND = "kmeans-fit"


def checkpoint_params(params: dict, source) -> dict:
    """What a resumed fit must share with the fit it resumes (the fingerprint), from the
    estimator's ``get_params()`` and the input's rows, dim and dtype."""
    init = params["init"]
    if hasattr(init, "__array__"):
        init = np.ascontiguousarray(host_arrays(init)[0])  # a tensor on any device too
        init = {"shape": init.shape, "dtype": str(init.dtype), "sha256": hashlib.sha256(init.tobytes()).hexdigest()}
    seed = params["random_state"] if isinstance(params["random_state"], Integral) else None
    return {**{name: params[name] for name in ("n_clusters", "max_iter", "tol", "metric", "sample_size")},
            "init": init, "random_state": seed,
            "input": {"rows": len(source), "dim": source.dim, "dtype": dtype_name(source.dtype)}}


def open_checkpoints(uri, storage_options, params: dict, source) -> Checkpoints:
    """The checkpoints at ``uri`` of a fit with the estimator's ``params`` over ``source``."""
    store = Store(uri, storage_options=storage_options)
    return Checkpoints(store, KIND, checkpoint_params(params, source), where="checkpoint")


def resume(checkpoints: Checkpoints, start, max_iter: int):
    """(centroids, absolute tol, iterations done, max_iter) to run Lloyd from: the last iteration
    committed, or ``start()``'s (centroids, tol), committed as iteration 0. After a converged
    iteration, or a finished fit, only the final pass is left (max_iter = iterations done)."""
    if checkpoints.done:
        n_iter = checkpoints.meta["n_iter"]
        return checkpoints.completed(0, ["centroids"])["centroids"], checkpoints.meta["tol"], n_iter, n_iter
    point = checkpoints.resume_point()
    if point is None:
        centroids, tol = start()
        save_iteration(checkpoints, tol, 0, centroids, None)
        return centroids, tol, 0, max_iter
    tol, shift = point.info["tol"], point.info["shift"]
    logger.info("k-means: resuming after iteration %d", point.iteration)
    converged = shift is not None and shift <= tol
    return point.arrays["centroids"], tol, point.iteration, point.iteration if converged else max_iter


def save_iteration(checkpoints: Checkpoints, tol: float, iteration: int, centroids, shift, penalty=None):
    """Lloyd's ``on_iteration`` hook: commit the centroids after ``iteration``."""
    checkpoints.save(0, iteration, {"centroids": host_arrays(centroids)[0]}, info={"tol": tol, "shift": shift})
