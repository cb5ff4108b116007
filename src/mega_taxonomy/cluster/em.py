"""EM for Gaussian mixtures as passes of additive float64 partials over a streamed source.

One pass (:class:`EStepTask`) runs the E-step op (``ops/gmm_estep``) on every block: each row's
log-sum-exp of weighted log densities, and the sums r, r x and r x^2 (r x x^T) per component,
never an N x K array. Partials are per block and add up in block order (``runtime/base.py``), so
the fit does not depend on batch size, shard layout or worker count. The M-step
(:func:`estimate_parameters`, :func:`precision_cholesky`) is scikit-learn's
``_estimate_gaussian_parameters`` and ``_compute_precision_cholesky`` written on those sums.

:class:`EM` is a client of the iteration driver (``runtime/iterate.py``); its ``change`` follows
scikit-learn's convergence rule (``abs(lower_bound - previous) < tol``, the lower bound being the
mean log-likelihood under the parameters that the iteration's E-step ran on). Rows on a GPU: the
M-step of a diagonal or spherical mixture follows its pass there, and the next pass is launched
ahead on it (``EM``), the same bits as the M-step on the host.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import linalg

from ..io import BLOCK_ROWS
from ..io.device import as_tensor, host_arrays, host_arrays_later
from ..ops import nearest
from ..ops.exact import ExactSum, exact_sum
from ..ops.gmm_estep import ROW_CHUNK, gmm_estep, gmm_estep_blocks, gmm_stats
from ..runtime import CompositePartial, Deferred, PassClock, Step, Update, iterate

# Blocks whose E-step statistics a whole pass computes at once (``EStepTask.whole``): few launches
# a block, and at most this many blocks' (K, D) sums held.
BLOCKS_AT_ONCE = 16

PRECISION_ERROR = ("Fitting the mixture model failed because some components have ill-defined empirical "
                   "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
                   "number of components, increase reg_covar, or scale the input data.")


@dataclass
class MixtureParams:
    """A mixture's parameters, float64, as scikit-learn stores them (``covariances`` may be None
    where only the precisions were given)."""

    weights: np.ndarray
    means: np.ndarray
    precisions_cholesky: np.ndarray
    covariances: np.ndarray | None = None


@dataclass
class EMPartial(CompositePartial):
    """The additive E-step statistics of some blocks (float64; see ``ops.gmm_estep.EStepStats``):
    exact sums (``ops.exact.ExactSum``) while they are added, plain values once a pass is over
    (``runtime.settled``)."""

    n_rows: int
    log_likelihood: float | ExactSum
    resp_sum: np.ndarray | ExactSum
    x_sum: np.ndarray | ExactSum
    x2_sum: np.ndarray | ExactSum

    def _plus(self, other, add) -> EMPartial:
        return EMPartial(self.n_rows + other.n_rows, add(self.log_likelihood, other.log_likelihood),
                         add(self.resp_sum, other.resp_sum), add(self.x_sum, other.x_sum),
                         add(self.x2_sum, other.x2_sum))

    @classmethod
    def exact(cls, n_rows, log_likelihood, resp_sum, x_sum, x2_sum) -> EMPartial:
        """A block's partial from float64 values (a float and host arrays), its sums made exact."""
        return cls(n_rows, *(ExactSum.of(v) for v in (float(log_likelihood), resp_sum, x_sum, x2_sum)))

    @classmethod
    def of(cls, n_rows, stats) -> EMPartial:
        """From the op's tensors (copied to host numpy float64)."""
        return cls.exact(n_rows, stats.log_likelihood, stats.resp_sum.cpu().numpy(), stats.x_sum.cpu().numpy(),
                         stats.x2_sum.cpu().numpy())


@dataclass(frozen=True)
class EStepState:
    params: MixtureParams
    covariance_type: str


class EStepTask:
    """A block's E-step partial under ``state.params`` (:meth:`__call__`: on a GPU the statistics'
    copies to the host are queued and the partial finished after the next block's kernels,
    ``runtime.Deferred``), or a whole pass's or a run of blocks' in one call (:meth:`whole`: the
    blocks' sums added on the device, and left there or copied once at the end), which
    ``LocalRuntime`` takes on a GPU."""

    def __init__(self):
        self._moved = None  # (state, device, its parameters there, the E-step's operands made of them)

    def __reduce__(self):  # a task sent to a worker moves its own parameters
        return EStepTask, ()

    def _estep(self, x, state: EStepState, block_rows=None):
        """``gmm_estep`` of rows ``x`` under ``state.params`` (``block_rows``: ``gmm_estep_blocks``,
        each block's statistics), moved to ``x``'s device in float64 and prepared for the products
        once per pass rather than per block: a block's copy from host memory waits for the GPU's
        queue, which then idles while the host prepares the next block."""
        if self._moved is None or self._moved[0] is not state or self._moved[1] != x.device:
            p = state.params
            moved = tuple(torch.as_tensor(a, dtype=torch.float64, device=x.device)
                          for a in (p.weights, p.means, p.precisions_cholesky))
            self._moved = (state, x.device, moved, {})
        _, _, params, prepared = self._moved
        if block_rows is not None:
            return gmm_estep_blocks(x, *params, state.covariance_type, block_rows, prepared=prepared)
        return gmm_estep(x, *params, state.covariance_type, prepared=prepared)

    def __call__(self, block, state: EStepState, device) -> EMPartial | Deferred:
        x = as_tensor(block.vectors, device)
        stats = self._estep(x, state)
        later = host_arrays_later(stats.log_likelihood, stats.resp_sum, stats.x_sum, stats.x2_sum)
        n_rows = len(x)

        def finish() -> EMPartial:
            log_likelihood, resp_sum, x_sum, x2_sum = later()
            return EMPartial.exact(n_rows, log_likelihood, resp_sum, x_sum, x2_sum)

        return Deferred(finish) if x.is_cuda else finish()

    @staticmethod
    def takes_whole(state: EStepState) -> bool:
        """Whether :meth:`whole` computes this pass: always (an E-step needs no block alone)."""
        return True

    def whole(self, block, state: EStepState, device, part=False) -> EMPartial:
        """The partial of every block of the source at once (``block``: all its rows, on ``device``
        already; see ``runtime.base.BlockTask``), or of a run of them (``part``: other runs' are
        added to it): each block's E-step as :meth:`__call__` computes it, the blocks' sums added
        exactly where they are, not one wait per block: the bits of the blocks' partials added by
        the runtime. A whole pass's sums are tensors where the rows are (for :class:`EM`'s M-step
        there); a run's, exact sums read on the host once the pass is over."""
        x = block.vectors
        total = shapes = None
        for lo in range(0, len(x), BLOCKS_AT_ONCE * BLOCK_ROWS):  # the blocks' statistics held a few at a time
            stats = self._estep(x[lo:lo + BLOCKS_AT_ONCE * BLOCK_ROWS], state, BLOCK_ROWS)
            fields = (stats.log_likelihood, stats.resp_sum, stats.x_sum, stats.x2_sum)
            flat = torch.cat([v.reshape(len(v), -1) for v in fields], 1)  # a block's four end to end
            shapes = shapes or [v.shape[1:] for v in fields]
            if total is None:
                total = ExactSum.zeros(flat.shape[1:], flat.device)
            total.add_rows(flat)  # block by block
        sums = total.split(shapes, ("float", "numpy", "numpy", "numpy"))
        if part:  # more runs are added to it, exact still, read on the host once the pass is over
            return EMPartial(len(x), *sums)
        # the whole pass: read as tensors where they are (the runtime rounds them there), which the
        # M-step can follow before the host has read anything (``EM``)
        return EMPartial(len(x), *(piece.as_kind("tensor") for piece in sums))


@dataclass(frozen=True)
class InitState:
    """How a start's responsibilities are made per block: one-hot to the nearest of ``centroids``
    (scikit-learn's "kmeans" start), uniform draws normalised per row from ``(seed, block index)``
    ("random"), or none at all (only the row count and, for tied, X^T X)."""

    covariance_type: str
    n_components: int
    centroids: np.ndarray | None = None
    seed: int | None = None


class InitTask:
    """A block's statistics under a start's responsibilities, made ``ROW_CHUNK`` rows at a time
    (a block's responsibilities at once would be BLOCK_ROWS x K)."""

    def __call__(self, block, state: InitState, device) -> EMPartial:
        x = as_tensor(block.vectors, device).to(torch.float64)
        k = state.n_components
        labels = rng = None
        if state.centroids is not None:
            _, labels = nearest(x, torch.as_tensor(state.centroids, dtype=torch.float64, device=x.device))
        elif state.seed is not None:  # per block, so the draws do not depend on batching
            rng = np.random.default_rng([state.seed, block.index])
        total = None
        for start in range(0, len(x), ROW_CHUNK):
            rows = x[start:start + ROW_CHUNK]
            if labels is not None:
                resp = torch.nn.functional.one_hot(labels[start:start + ROW_CHUNK], k).to(torch.float64)
            elif rng is not None:
                draws = rng.uniform(size=(len(rows), k))
                resp = torch.as_tensor(draws / draws.sum(1, keepdims=True), device=x.device)
            else:
                resp = torch.zeros(len(rows), k, dtype=torch.float64, device=x.device)
            part = EMPartial.of(len(rows), gmm_stats(rows, resp, state.covariance_type))
            total = part if total is None else total + part
        if total is None:  # a block whose every row was skipped as invalid
            total = EMPartial.of(0, gmm_stats(x, torch.zeros(0, k, dtype=torch.float64), state.covariance_type))
        return total


def _divided(values, number):
    """``values / number``, the number as a tensor where the values are one: CUDA divides a tensor by
    a number as a product with its inverse, which rounds otherwise than numpy's division."""
    return values / (values.new_tensor(float(number)) if isinstance(values, torch.Tensor) else number)


def estimate_parameters(p: EMPartial, covariance_type: str, reg_covar: float):
    """(nk, means, covariances) from the sums, as scikit-learn's ``_estimate_gaussian_parameters``:
    ``nk = sum r + 10 eps``, means ``sum r x / nk``, covariances plus ``reg_covar`` on the diagonal
    (diagonal and spherical variances of at least ``reg_covar``). numpy, or for diagonal and
    spherical sums on a GPU, torch there (:func:`m_step`)."""
    on_gpu = isinstance(p.resp_sum, torch.Tensor) and p.resp_sum.is_cuda and covariance_type in ("diag", "spherical")
    if isinstance(p.resp_sum, torch.Tensor) and not on_gpu:
        p = EMPartial(p.n_rows, p.log_likelihood, *(v.cpu().numpy() for v in (p.resp_sum, p.x_sum, p.x2_sum)))
    nk = p.resp_sum + 10 * np.finfo(np.float64).eps
    means = p.x_sum / nk[:, None]
    d = means.shape[1]
    if covariance_type == "full":
        # sum r (x - mu)(x - mu)^T = S_xx - S_x mu^T - mu S_x^T + (sum r) mu mu^T
        sx_mu = p.x_sum[:, :, None] * means[:, None, :]
        cov = (p.x2_sum - sx_mu - sx_mu.transpose(0, 2, 1)
               + p.resp_sum[:, None, None] * means[:, :, None] * means[:, None, :]) / nk[:, None, None]
        cov[:, np.arange(d), np.arange(d)] += reg_covar
    elif covariance_type == "tied":
        cov = (p.x2_sum - (nk * means.T) @ means) / nk.sum()
        cov.flat[:: d + 1] += reg_covar
    else:
        # a variance is never below reg_covar: float32 statistics (the GPU's E-step) can round a
        # component of nearly equal rows below zero, where scikit-learn's float64 ones give ~0
        cov = p.x2_sum / nk[:, None] - means * means
        cov = (cov.clamp_min(0.0) if on_gpu else np.maximum(cov, 0.0)) + reg_covar
        if covariance_type == "spherical":
            cov = _divided(exact_sum(cov, 1), d)
    return nk, means, cov


def precision_cholesky(covariances, covariance_type: str, check: bool = True):
    """scikit-learn's ``_compute_precision_cholesky``: the upper factor of each precision.
    Diagonal and spherical covariances may be tensors on a GPU (``check=False``: no look at
    their values, which would wait for the device; the caller checks its copy on the host)."""
    if covariance_type in ("full", "tied"):
        covs = covariances[None] if covariance_type == "tied" else covariances
        out = np.empty_like(covs)
        for k, cov in enumerate(covs):
            try:
                chol = linalg.cholesky(cov, lower=True)
            except linalg.LinAlgError:
                raise ValueError(PRECISION_ERROR) from None
            out[k] = linalg.solve_triangular(chol, np.eye(len(cov)), lower=True).T
        return out[0] if covariance_type == "tied" else out
    if check and bool((covariances <= 0.0).any()):
        raise ValueError(PRECISION_ERROR)
    return 1.0 / (torch.sqrt(covariances) if isinstance(covariances, torch.Tensor) else np.sqrt(covariances))


def m_step(p: EMPartial, covariance_type: str, reg_covar: float, *, n_rows: int | None = None,
           check: bool = True) -> MixtureParams:
    """New parameters from the sums: weights ``nk / sum nk`` (an M-step; the sum exact), or
    ``nk / n_rows`` (a start, as scikit-learn's ``_initialize``).

    Diagonal and spherical sums on a GPU stay there (``EM`` queues this behind a pass; see
    :func:`precision_cholesky` for ``check``): elementwise operations that CUDA rounds as numpy
    does (division and square root correctly rounded; torch's CPU square root is not, hence numpy
    on the host) and exact sums, so the parameters are the same bits on either side."""
    nk, means, cov = estimate_parameters(p, covariance_type, reg_covar)
    weights = nk / exact_sum(nk) if n_rows is None else _divided(nk, n_rows)
    return MixtureParams(weights, means, precision_cholesky(cov, covariance_type, check), cov)


@dataclass
class EMResult:
    params: MixtureParams
    lower_bound: float
    n_iter: int
    converged: bool
    lower_bounds: list = field(default_factory=list)


@dataclass
class EMStep:
    """A pass launched by :class:`EM`: its partial, when it was launched, and where its sums stayed
    on a GPU, the M-step queued there behind it with the copies of what the host needs of it."""

    partial: EMPartial
    launched: float
    queued: MixtureParams | None = None
    later: Any = None


class EM:
    """EM passes as a client of :func:`~mega_taxonomy.runtime.iterate`; the state is a
    :class:`MixtureParams`. See :func:`em` for the parameters.

    Where a pass's sums stay on a GPU (rows there, a diagonal or spherical mixture), its M-step
    is queued behind it, and the next pass is launched on those parameters before the host has
    read anything (``Step.ahead``): the GPU does not wait for the host's turn between passes. The
    M-step is one function on either side (:func:`m_step`, the same bits); a pass ahead of
    convergence is lost, so only behind passes of at most ``LOOK_AHEAD_MAX_SECONDS``
    (``runtime.PassClock``, k-means' rule too)."""

    def __init__(self, source, runtime, *, covariance_type, reg_covar, tol, lower_bound, desc):
        self.source, self.runtime, self.desc = source, runtime, desc
        self.covariance_type, self.reg_covar, self.tol = covariance_type, reg_covar, tol
        self.lower_bound, self.lower_bounds, self.converged = lower_bound, [], False
        self.clock = PassClock()

    def run_pass(self, params, iteration) -> Step:
        launched = time.perf_counter()
        state = EStepState(params, self.covariance_type)
        partial = self.runtime.map_reduce(self.source, EStepTask(), state, desc=f"{self.desc} {iteration}")
        if not isinstance(partial.resp_sum, torch.Tensor):
            return Step(EMStep(partial, launched))
        if self.covariance_type not in ("diag", "spherical"):  # full and tied: scipy's M-step, on the host
            values = host_arrays(partial.log_likelihood, partial.resp_sum, partial.x_sum, partial.x2_sum)
            return Step(EMStep(EMPartial(partial.n_rows, float(values[0]), *values[1:]), launched))
        queued = m_step(partial, self.covariance_type, self.reg_covar, check=False)
        later = host_arrays_later(partial.log_likelihood, queued.weights, queued.means, queued.precisions_cholesky,
                                  queued.covariances)
        return Step(EMStep(partial, launched, queued, later), queued if self.clock.short() else None)

    def update(self, step: Step, params, iteration) -> Update:
        partial, queued = step.result.partial, step.result.queued
        if queued is None:
            log_likelihood = partial.log_likelihood
            updated = m_step(partial, self.covariance_type, self.reg_covar)
        else:
            log_likelihood, weights, means, prec_chol, cov = step.result.later()
            if np.any(cov <= 0.0):  # precision_cholesky's check, on the host's copy
                raise ValueError(PRECISION_ERROR)
            updated = MixtureParams(weights, means, prec_chol, cov)
        self.clock.results(step.result.launched)
        lower_bound = float(log_likelihood) / partial.n_rows
        change = abs(lower_bound - self.lower_bound)
        self.lower_bound = lower_bound
        self.lower_bounds.append(lower_bound)
        self.converged = change < self.tol  # scikit-learn's rule (the driver's own is change <= tol)
        return Update(updated, change, converged=self.converged)

    def finish(self, params, last, change, n_iter) -> EMResult:
        return EMResult(params, self.lower_bound, n_iter, self.converged, self.lower_bounds)


def em(source, params: MixtureParams, runtime, *, covariance_type: str, reg_covar: float = 1e-6,
       tol: float = 1e-3, max_iter: int = 100, lower_bound: float = -math.inf, start_iter: int = 0,
       lower_bounds=(), converged: bool = False, on_iteration=None, desc: str = "em") -> EMResult:
    """Run EM from ``params`` until ``abs(lower bound change) < tol`` or ``max_iter`` iterations.

    Parameters
    ----------
    lower_bound : float, default=-inf
        The lower bound of the fit that ``params`` continue (a warm start, a resumed fit), else -inf.
    start_iter, lower_bounds, converged
        Of a fit resumed after iteration ``start_iter`` (its lower bounds so far, and whether
        that iteration converged: then no iteration is left).
    on_iteration : callable, optional
        ``on_iteration(iteration, EMResult)`` after every M-step (checkpoints); called where
        ``runtime.leader``.

    Returns
    -------
    EMResult
        The parameters after the last M-step, the last lower bound (of the parameters before
        it, as scikit-learn's ``lower_bound_``), iterations run and whether they converged.
    """
    client = EM(source, runtime, covariance_type=covariance_type, reg_covar=reg_covar, tol=tol,
                lower_bound=lower_bound, desc=desc)
    client.lower_bounds, client.converged = list(lower_bounds), converged
    hook = None
    if on_iteration is not None and getattr(runtime, "leader", True):  # a collective fit's hooks: on rank 0
        def hook(iteration, state, change):
            on_iteration(iteration, EMResult(state, client.lower_bound, iteration, client.converged,
                                             list(client.lower_bounds)))
    return iterate(client, params, max_iter=start_iter if converged else max_iter, tol=tol, start_iter=start_iter,
                   on_iteration=hook)


def better(result: EMResult, best: EMResult | None) -> bool:
    """scikit-learn's rule between starts: a higher lower bound, or the first whatever its bound."""
    return best is None or result.lower_bound > best.lower_bound or best.lower_bound == -math.inf


def start_from_sums(source, runtime, covariance_type: str, n_components: int, reg_covar: float, *,
                    centroids=None, seed=None, rows=None) -> MixtureParams:
    """A start as scikit-learn's ``_initialize``: the parameters of one M-step on the given
    responsibilities, weights ``nk / n``. ``rows`` (K, D): one-hot responsibilities on those rows
    alone ("k-means++", "random_from_data"); they add to the sums of a pass with none."""
    state = InitState(covariance_type, n_components, centroids, seed)
    partial = runtime.map_reduce(source, InitTask(), state, desc="em start")
    if rows is not None:
        rows = np.asarray(rows, dtype=np.float64)
        partial.resp_sum = partial.resp_sum + 1.0
        partial.x_sum = partial.x_sum + rows
        if covariance_type == "full":
            partial.x2_sum = partial.x2_sum + rows[:, :, None] * rows[:, None, :]
        elif covariance_type != "tied":
            partial.x2_sum = partial.x2_sum + rows * rows
    return m_step(partial, covariance_type, reg_covar, n_rows=partial.n_rows)
