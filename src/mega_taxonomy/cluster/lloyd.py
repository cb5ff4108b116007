"""Lloyd's k-means as passes of additive partial sums over a streamed source.

One pass (``cluster/lloyd_pass.py``) assigns every row to its nearest centroid and sums, per
centroid, the rows (float64), their count and their squared distances. Partials are per block
and add up in block order (runtime/), so the centroids do not depend on shard layout, batch size
or worker count. The update turns the sums into new centroids, relocating empty clusters to the
rows farthest from their centroid as scikit-learn's Lloyd does (``cluster/relocate.py``).

The same pass fits a whole taxonomy level at once (grouped k-means): centroids are then the
children of all parents side by side (CSR ``offsets``), each row is compared only with the
children of its own parent (``groups``), and an empty child is refilled from its own parent's
farthest rows. Flat k-means is the case of one group.

:class:`Lloyd` is a client of the iteration driver (``runtime/iterate.py``): the driver owns the
loop, convergence and the pass launched ahead; the client owns what k-means adds to it: the
update queued on the device behind its pass, empty clusters, Hamerly's bounds
(``cluster/bounds.py``) and size penalties (``cluster/balance.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..ops import OperandCache
from ..io.device import host_arrays, host_arrays_later
from ..ops.update import centroids_from_sums
from ..runtime import PassClock, Step, Update, iterate
from . import bounds
from .balance import size_penalty
from .lloyd_pass import LloydPartial, LloydState, LloydTask
from .relocate import MAX_FAR_ROWS, counts_on_host, new_centroids

logger = logging.getLogger(__name__)


@dataclass
class LloydResult:
    centroids: np.ndarray
    counts: np.ndarray
    inertia: float
    n_iter: int
    partial: LloydPartial  # of the final assignment (labels per block when kept)
    penalty: np.ndarray | None = None  # the final assignment's, with size penalties


@dataclass
class LloydStep:
    """A launched pass: its partial, the update queued behind it (centroids, shift; None where
    the update waits for the host), and the wait for its counts and inertia."""

    partial: LloydPartial
    queued: tuple | None
    counts_later: object
    launched: float  # time.perf_counter() at its launch


class Lloyd:
    """Lloyd passes as a client of :func:`~mega_taxonomy.runtime.iterate`; the state handed
    around is the centroids (an array, or a tensor on the passes' device). See :func:`lloyd`
    for the parameters."""

    def __init__(self, source, runtime, *, metric, keep_labels, offsets, groups, sample, penalty,
                 penalty_strength, look_ahead, n_rows_hint, k, desc):
        self.source, self.runtime, self.metric, self.desc = source, runtime, metric, desc
        self.offsets, self.groups, self.sample = offsets, groups, sample
        self.keep_labels, self.penalty, self.penalty_strength = keep_labels, penalty, penalty_strength
        self.look_ahead = look_ahead
        n_groups = 1 if offsets is None else len(offsets) - 1
        self.far_per_group = max(4, MAX_FAR_ROWS // n_groups)
        if offsets is not None:  # a group never needs more rows than it has children
            self.far_per_group = min(self.far_per_group, max(1, int(np.diff(offsets).max(initial=1))))
        # The farthest rows cost a selection in every block, and are needed only when a cluster
        # went empty: they are first found by one more pass over the same centroids (the same
        # labels and distances, so the same rows), then gathered in every pass of this fit.
        self.far = False
        self.track = bounds.use_bounds(runtime, n_rows_hint, k, offsets, metric,
                                       penalty is not None or penalty_strength > 0)
        self.bounds = self.drift = self.frozen = None
        self.group_rows = (bounds.rows_per_group(source, groups, n_groups)
                           if self.track and logger.isEnabledFor(logging.DEBUG) else None)
        # With a sample to draw, the final assignment pass always runs and gives the labels: the
        # iterations' passes need not copy them out (two syncs a block on a GPU).
        self.labels_in_loop = keep_labels and sample is None
        # Without sizes that steer the next pass (penalties, bounds, frozen groups), the next pass
        # is launched before this one's counts come back: it runs on the update queued here,
        # which stands unless a cluster went empty. A GPU then never waits for the host's turn.
        self.looking_ahead = look_ahead is not False and not self.track and penalty_strength == 0
        self.partial = None  # of the last pass
        self.clock = PassClock()  # of the last pass, until its counts are on the host
        self.operands = OperandCache()  # the centroids prepared for the kernels, shared by this fit's passes

    def _state(self, centroids, **changes) -> LloydState:
        fields = dict(metric=self.metric, update=True, far=self.far, keep_labels=self.labels_in_loop,
                      offsets=self.offsets, groups=self.groups, far_per_group=self.far_per_group,
                      penalty=self.penalty, device_sums=True, bounds=self.bounds, drift=self.drift,
                      track_bounds=self.track, frozen=self.frozen)
        return LloydState(centroids, **{**fields, **changes})

    def run_pass(self, centroids, iteration) -> Step:
        """A pass over ``centroids``, and its update queued where its sums are: on a GPU, the
        update runs behind the pass (the host then waits once an iteration, for the counts and the
        shift); on the host, only when looking ahead. The copies of its counts are queued before
        any pass launched after it."""
        launched = time.perf_counter()
        partial = self.runtime.map_reduce(self.source, LloydTask(self.operands), self._state(centroids),
                                          desc=f"{self.desc} {iteration}")
        # (Frozen groups, whose sums are filled in afterwards, come from passes on the host only.)
        on_device = isinstance(partial.sums, torch.Tensor)
        queued = None
        if self.frozen is None and (on_device or self.look_ahead):
            queued = centroids_from_sums(torch.as_tensor(partial.sums), torch.as_tensor(partial.counts),
                                         torch.as_tensor(centroids), normalize=self.metric == "cosine")
            if on_device:
                self.operands.prepare_ahead(queued[0])
            else:
                queued = (queued[0].numpy(), queued[1])
        counts_later = host_arrays_later(partial.counts, partial.inertia, None if queued is None else queued[1])
        # Not ahead of a fit's first pass: clusters empty mostly there (seeds drawn from a sample,
        # copies among them), and the pass ahead was then wasted (an H200's pinned taxonomy fit lost
        # a pass at levels 1 and 2, 0.74 s, to save a host turn of milliseconds). Once a cluster
        # went empty, it may again: no pass ahead for the rest of the fit. By default only where
        # the update is queued on a GPU and the last pass was short (LOOK_AHEAD_MAX_SECONDS).
        short = self.clock.short()
        ahead = (queued is not None and self.looking_ahead and not self.far and self.partial is not None
                 and (self.look_ahead or isinstance(queued[0], torch.Tensor) and short))
        return Step(LloydStep(partial, queued, counts_later, launched), queued[0] if ahead else None)

    def update(self, step: Step, centroids, iteration) -> Update:
        """New centroids from the pass's sums: the update queued behind it, or, where a cluster
        went empty (or the sums are on the host), the relocation and update here."""
        partial, queued = step.result.partial, step.result.queued
        before, self.partial = self.partial, partial
        partial.counts, partial.inertia, queued_shift = step.result.counts_later()
        self.clock.results(step.result.launched)
        if self.frozen is not None:  # (never with a pass ahead: frozen groups need bounds)
            bounds.reuse_frozen(partial, before, self.frozen, self.offsets)
        if self.track:
            self.bounds, partial.bounds = partial.bounds, {}
        emptied = not partial.counts.all()  # a cluster to refill: the update queued does not stand
        if emptied and not self.far:
            self.far = True
            state = self._state(centroids, update=False, keep_labels=False, bounds=None, drift=None,
                                track_bounds=False, frozen=None)
            partial.far = self.runtime.map_reduce(self.source, LloydTask(self.operands), state,
                                                  desc=f"{self.desc} {iteration} far").far
        if queued is None or emptied:  # on the host, or empty clusters to refill
            updated, _, shift = new_centroids(partial, centroids, self.source, self.metric, self.offsets)
        else:
            updated, shift = queued[0], queued_shift
        shift = float(shift)
        if self.track:
            computed = bounds.rows_computed(self.group_rows, self.frozen)
            self.drift = bounds.group_drift(updated, centroids, self.offsets)
            self.frozen = self.drift == 0
            logger.debug("%s %d: %d rows computed; next pass: %d of %d groups frozen", self.desc, iteration,
                         computed, self.frozen.sum(), len(self.frozen))
        logger.debug("%s %d: inertia %.6g, shift %.3g", self.desc, iteration, partial.total_inertia, shift)
        if self.penalty_strength > 0:
            self.penalty = size_penalty(partial.counts, partial.inertia, self.offsets, self.penalty,
                                        self.penalty_strength)
        return Update(updated, shift, stands=not emptied)

    def finish(self, centroids, last, shift, n_iter) -> LloydResult:
        """As in scikit-learn, when the loop stopped with centroids that still moved, one more pass
        assigns the rows to the final centroids (and draws the sample), so that labels, counts and
        inertia describe the centroids returned."""
        partial = self.partial
        if partial is None or shift != 0 or self.sample is not None:
            state = self._state(centroids, update=False, far=False, keep_labels=self.keep_labels,
                                far_per_group=MAX_FAR_ROWS, sample=self.sample, track_bounds=False)
            final = self.runtime.map_reduce(self.source, LloydTask(self.operands), state, desc=f"{self.desc} assign")
            before, partial = partial, counts_on_host(final)
            if self.frozen is not None:
                bounds.reuse_frozen(partial, before, self.frozen, self.offsets)
                logger.debug("%s assign: %d rows computed", self.desc,
                             bounds.rows_computed(self.group_rows, self.frozen))
        return LloydResult(host_arrays(centroids)[0], partial.counts, partial.total_inertia, n_iter, partial,
                           self.penalty)


def lloyd(source, centroids: np.ndarray, runtime, *, metric="euclidean", max_iter=300, tol=0.0,
          keep_labels=False, offsets=None, groups=None, start_iter=0, on_iteration=None,
          sample=None, penalty=None, penalty_strength=0.0, look_ahead=None, desc="lloyd") -> LloydResult:
    """Run Lloyd passes from ``centroids`` until the squared centroid shift is ``<= tol``.

    Parameters
    ----------
    tol : float
        Absolute bound on the sum of squared centroid shifts (scikit-learn scales its ``tol``
        by the mean variance of the data before this).
    offsets, groups : optional
        Grouped k-means (see ``LloydState``).
    start_iter : int
        Iterations already done (resuming from a checkpoint of ``centroids``).
    sample : (size, seed), optional
        The final assignment pass also draws a hash sample of every cluster (the seeds of the
        next taxonomy level), in ``result.partial.sample`` (its vectors: ``with_vectors``).
    on_iteration : callable, optional
        ``on_iteration(iteration, centroids, shift, penalty)`` after every update (checkpoints,
        logs); ``centroids`` is a tensor on the device when the sums were left there (``host``
        turns it into an array); ``penalty`` is what the next pass will use (None without penalties).
        Called where ``runtime.leader``: on a collective runtime, by rank 0 alone.
    penalty : (K,) array, optional
        Size-penalised assignment: rows go to the centroid of least ``distance + penalty``
        (distances and inertia stay the true ones). This is the first pass's.
    penalty_strength : float
        When > 0, every pass's penalties follow from the sizes of the pass before
        (``cluster.balance.size_penalty``); the result holds the last ones.
    look_ahead : bool, optional
        Launch every pass after the first before the counts of the one before are back, on the
        centroids of its update (which stands unless a cluster went empty: the pass ahead is then
        dropped, and no pass is launched ahead in the rest of the fit). The same passes, the same
        bits; the GPU then never idles while the host turns one pass into the next (H200, 2
        workers, N = 1M: see ``benchmarks/results/ray_gpu.json``). None (default): where the
        update is queued on a GPU and the pass before took at most ``LOOK_AHEAD_MAX_SECONDS``
        (a pass of a tenth of a second saves little and may be lost); True: always, also on the
        host (a pass is wasted at the end; for tests); False: never. Not with penalties that
        follow the sizes, nor with bounds (their passes depend on the last).
    """
    if not isinstance(centroids, torch.Tensor):  # a tensor stays where it is (on the pass's device)
        centroids = np.ascontiguousarray(centroids)
    client = Lloyd(source, runtime, metric=metric, keep_labels=keep_labels, offsets=offsets, groups=groups,
                   sample=sample, penalty=penalty, penalty_strength=penalty_strength, look_ahead=look_ahead,
                   n_rows_hint=len(source), k=len(centroids), desc=desc)
    hook = None
    if on_iteration is not None and getattr(runtime, "leader", True):  # a collective fit's hooks: on rank 0
        def hook(iteration, state, shift):
            on_iteration(iteration, state, shift, client.penalty)
    return iterate(client, centroids, max_iter=max_iter, tol=tol, start_iter=start_iter, on_iteration=hook)
