"""A taxonomy level as Gaussian mixtures (``TaxonomyEngine(clusterer="gmm")``): the children of
every node are a diagonal mixture fitted on the node's rows, all nodes of the level in the same
passes.

The level's k-means (its Lloyd passes) gives the start: means at the centroids, weights the
children's shares of their parent's rows, every variance the child's mean squared distance per
dimension (plus ``REG_COVAR``). EM then runs as passes of additive float64 partials
(``ops.gmm_estep.grouped``: each row against its own parent's children only), with scikit-learn's
M-step and convergence rule (the mean log-likelihood per row changing by less than ``TOL``), and
a last pass gives every row the child of highest responsibility, and draws the next level's
sample from those children. Like every pass, partials are per block and added in block order: the
same level for any worker count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..cluster.em import EMPartial, estimate_parameters
from ..io.device import as_tensor
from ..ops.gmm_estep.grouped import grouped_best, grouped_stats
from ..partials import SamplePartial, block_sample, group_of_centroid
from ..runtime import CompositePartial

logger = logging.getLogger(__name__)

REG_COVAR = 1e-6  # scikit-learn's default: added to every variance
TOL = 1e-3  # scikit-learn's default: EM stops when the mean log-likelihood moves less


@dataclass
class Mixtures:
    """A level's mixtures: per child its weight within its parent, mean and diagonal variances."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    variances: np.ndarray  # (K, D)


@dataclass
class AssignPartial(CompositePartial):
    """Each child's row count, and per block every row's child and cost (when kept); a sample."""

    counts: np.ndarray
    labels: dict = field(default_factory=dict)
    sample: SamplePartial | None = None

    def _plus(self, other, add):
        sample = None if self.sample is None else add(self.sample, other.sample)
        return AssignPartial(self.counts + other.counts, {**self.labels, **other.labels}, sample)


@dataclass(frozen=True)
class MixtureState:
    mixtures: Mixtures
    offsets: np.ndarray  # CSR children per group (an empty group last, for rows under a leaf)
    groups: dict | None  # block index -> each row's group; None: one group (level 0)
    assign: bool = False  # the final pass: labels, counts, sample
    keep_labels: bool = False
    sample: tuple[int, int] | None = None


def _block_groups(state: MixtureState, block) -> np.ndarray:
    if state.groups is None:
        return np.zeros(len(block.ordinals), dtype=np.int64)
    return np.asarray(state.groups[block.index], dtype=np.int64)


class MixtureTask:
    """A block's E-step statistics, or (``state.assign``) its rows' children."""

    def __call__(self, block, state: MixtureState, device):
        x = as_tensor(block.vectors, device)
        groups = _block_groups(state, block)
        m = state.mixtures
        if not state.assign:
            ll, resp, xs, x2s = (t.cpu().numpy() for t in grouped_stats(x, groups, state.offsets, m.weights,
                                                                         m.means, m.variances))
            scored = int((np.diff(state.offsets)[groups] > 0).sum())  # rows under a leaf: no mixture
            return EMPartial.exact(scored, ll, resp, xs, x2s)
        cost, child = grouped_best(x, groups, state.offsets, m.weights, m.means, m.variances)
        labels, cost = child[:, 0].cpu().numpy(), cost[:, 0].cpu().numpy()
        out = AssignPartial(np.bincount(labels[labels >= 0], minlength=len(m.weights)))
        if state.keep_labels:
            out.labels = {block.index: (labels, cost)}
        if state.sample is not None:
            size, seed = state.sample
            out.sample = block_sample(block, size, seed, groups=labels, moments=False)
        return out


def start_from_kmeans(centroids, counts, inertia, offsets, dim: int) -> Mixtures:
    """The EM start of a level from its k-means: means at the centroids, weights the children's
    shares of their parent's rows, every variance the child's mean squared distance per dimension."""
    counts = np.asarray(counts, dtype=np.float64)
    variances = np.asarray(inertia, dtype=np.float64) / np.maximum(counts, 1) / dim + REG_COVAR
    return Mixtures(_within_parent(counts + 10 * np.finfo(np.float64).eps, offsets),
                    np.asarray(centroids, dtype=np.float64), np.repeat(variances[:, None], dim, 1))


def _within_parent(nk: np.ndarray, offsets) -> np.ndarray:
    """``nk`` normalised to sum 1 over each group's children."""
    offsets = np.asarray(offsets)
    group = group_of_centroid(offsets, len(nk))
    return nk / np.bincount(group, weights=nk, minlength=len(offsets) - 1)[group]


def m_step(p: EMPartial, offsets) -> Mixtures:
    """GaussianMixture's diagonal M-step (scikit-learn's, a variance never below REG_COVAR) on the
    sums, the weights within each parent."""
    nk, means, variances = estimate_parameters(p, "diag", REG_COVAR)
    return Mixtures(_within_parent(nk, offsets), means, variances)


def fit_mixtures(source, runtime, start: Mixtures, offsets, groups, *, max_iter: int, keep_labels: bool,
                 sample, dtype, desc: str, tol: float = TOL):
    """EM from ``start`` until the mean log-likelihood per row moves by less than ``tol`` (or
    ``max_iter`` iterations), then the assignment pass: ``(mixtures, AssignPartial, n_iter,
    lower_bound)``. The means end rounded to ``dtype``, as the tree keeps them, before the
    assignment pass: routing a row later gives the child the fit gave it."""
    mixtures, lower_bound, n_iter = start, -np.inf, 0
    for n_iter in range(1, max_iter + 1):
        p = runtime.map_reduce(source, MixtureTask(), MixtureState(mixtures, offsets, groups),
                               desc=f"{desc} EM {n_iter}")
        previous, lower_bound = lower_bound, p.log_likelihood / max(p.n_rows, 1)
        mixtures = m_step(p, offsets)
        logger.debug("%s EM %d: lower bound %.8g", desc, n_iter, lower_bound)
        if abs(lower_bound - previous) < tol:
            break
    mixtures.means = mixtures.means.astype(dtype).astype(np.float64)
    state = MixtureState(mixtures, offsets, groups, assign=True, keep_labels=keep_labels, sample=sample)
    assigned = runtime.map_reduce(source, MixtureTask(), state, desc=f"{desc} assign")
    return mixtures, assigned, n_iter, lower_bound
