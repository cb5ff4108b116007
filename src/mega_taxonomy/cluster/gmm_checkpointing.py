"""The checkpoints of a Gaussian mixture's fit (``GaussianMixture(checkpoint=...)``), through
``storage.Checkpoints``.

Stage ``s`` is the ``s``-th start of ``n_init``; one checkpoint per EM iteration: the parameters
after its M-step, its lower bounds so far and whether it converged, and the random state as it
was after the start was drawn (EM itself draws nothing, so the later starts are drawn from it as
a fit that never stopped draws them). A start that finished is completed with its parameters, and
its lower bound, iterations and convergence go in the manifest's meta. A fit run again with the
same parameters and input goes on from there and ends with the same parameters, bit for bit:
EM's passes depend only on the parameters.
"""

from __future__ import annotations

import hashlib
import logging
from numbers import Integral

import numpy as np

from ..io.device import host_arrays
from ..io.shards import dtype_name
from ..storage import Checkpoints, Store
from .em import EMResult, MixtureParams, better, em
from .gmm_init import initial_params

logger = logging.getLogger(__name__)

KIND = "gmm-fit"  # a saved model is "gmm" (``GaussianMixture.save``)
ARRAYS = ("weights", "means", "precisions_cholesky", "covariances")
FINGERPRINT = ("n_components", "covariance_type", "tol", "reg_covar", "max_iter", "n_init", "init_params")


def _digest(array):
    if array is None:
        return None
    array = np.ascontiguousarray(host_arrays(array)[0], dtype=np.float64)  # a tensor on any device too
    return {"shape": array.shape, "sha256": hashlib.sha256(array.tobytes()).hexdigest()}


def open_checkpoints(gm, source) -> Checkpoints:
    """The checkpoints of ``gm``'s fit over ``source`` (its fingerprint: the parameters that
    change the result, the starts given, and the input's rows, dim and dtype)."""
    params = gm.get_params()
    seed = params["random_state"] if isinstance(params["random_state"], Integral) else None
    fingerprint = {**{name: params[name] for name in FINGERPRINT}, "random_state": seed,
                   **{name: _digest(params[name]) for name in ("weights_init", "means_init", "precisions_init")},
                   "input": {"rows": len(source), "dim": source.dim, "dtype": dtype_name(source.dtype)}}
    return Checkpoints(Store(gm.checkpoint, storage_options=gm.storage_options), KIND, fingerprint,
                       where="checkpoint")


def _rng_arrays(random_state) -> tuple[dict, dict]:
    _, keys, pos, has_gauss, cached = random_state.get_state()
    return {"rng_keys": keys}, {"rng": [int(pos), int(has_gauss), float(cached)]}


def _set_rng(random_state, keys, info):
    pos, has_gauss, cached = info["rng"]
    random_state.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _arrays(params: MixtureParams) -> dict:
    return {name: getattr(params, name) for name in ARRAYS}


def _run_start(gm, source, runtime, random_state, checkpoints, stage, point):
    """One start's EM: from the resume point of ``stage`` where there is one, else drawn now."""
    if point is not None and point.stage == stage:
        logger.info("gmm start %d: resuming after iteration %d", stage, point.iteration)
        _set_rng(random_state, point.arrays["rng_keys"], point.info)
        params = MixtureParams(*(point.arrays[name] for name in ARRAYS))
        info = point.info
        resumed = {"lower_bound": info["lower_bound"], "start_iter": point.iteration,
                   "lower_bounds": info["lower_bounds"], "converged": info["converged"]}
    else:
        params = initial_params(gm, source, runtime, random_state)
        resumed = {}
    rng_arrays, rng_info = _rng_arrays(random_state)

    def save(iteration, result: EMResult):
        checkpoints.save(stage, iteration, {**_arrays(result.params), **rng_arrays},
                         info={**rng_info, "lower_bound": result.lower_bound, "lower_bounds": result.lower_bounds,
                               "converged": result.converged})

    return runtime.drive(em, source, params, covariance_type=gm.covariance_type, reg_covar=gm.reg_covar, tol=gm.tol,
                         max_iter=gm.max_iter, on_iteration=save, desc=f"em {stage}", **resumed)


def fit_with_checkpoints(gm, source, runtime, random_state) -> EMResult:
    """The best of ``gm.n_init`` starts, each start's iterations checkpointed; starts completed
    before are read back, the one interrupted goes on."""
    checkpoints = open_checkpoints(gm, source)
    starts = list(checkpoints.meta.get("starts", []))
    point = checkpoints.resume_point()
    if starts and point is None and not checkpoints.done:  # the next start's draws follow the last one's
        last = checkpoints.completed(len(starts) - 1, ["rng_keys"])["rng_keys"]
        _set_rng(random_state, last, starts[-1])
    for stage in range(len(starts), gm.n_init):
        result = _run_start(gm, source, runtime, random_state, checkpoints, stage, point)
        checkpoints.refresh()  # the hooks may have committed elsewhere (a collective fit's rank 0)
        rng_arrays, rng_info = _rng_arrays(random_state)
        starts.append({**rng_info, "lower_bound": result.lower_bound, "n_iter": result.n_iter,
                       "converged": result.converged, "lower_bounds": result.lower_bounds})
        checkpoints.complete(stage, {**_arrays(result.params), **rng_arrays},
                             status="done" if stage + 1 == gm.n_init else "fitting", starts=starts)
    best = None
    for stage, summary in enumerate(starts):
        result = EMResult(None, summary["lower_bound"], summary["n_iter"], summary["converged"],
                          summary["lower_bounds"])
        if better(result, best):
            best, best_stage = result, stage
    arrays = checkpoints.completed(best_stage, ARRAYS)
    best.params = MixtureParams(*(arrays[name] for name in ARRAYS))
    return best
