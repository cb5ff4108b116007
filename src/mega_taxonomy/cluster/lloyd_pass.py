"""One Lloyd pass: its state, its additive partial, and the task that computes a block's partial.

A pass assigns every row of a block to its nearest centroid (each row against the children of
its own group in grouped k-means) and sums, per centroid, the rows (float64), their count and
their squared distances; on demand it also keeps the farthest rows of every group (to refill
empty clusters), every row's label, per-row bounds for the next pass, or a hash sample of every
cluster. ``cluster/lloyd.py`` runs passes until the centroids settle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..io import BLOCK_ROWS
from ..io.device import HostCopy, as_tensor, host_arrays, kept_on_device
from ..ops import OperandCache, grouped_nearest, nearest, normalize_rows
from ..ops.exact import ExactSum
from ..ops.grouped_assign import grouped_nearest_bounded
from ..ops.update import cluster_counts, cluster_stats
from ..partials import BestPerGroup, FarthestPerGroup, SamplePartial, block_sample, device_block_sample
from ..runtime import CompositePartial, Deferred, in_block_order
from .balance import with_penalty
from .relocate import MAX_FAR_ROWS, block_farthest


@dataclass(frozen=True)
class LloydState:
    """What a pass needs: the centroids, the grouping, and what to compute."""

    centroids: np.ndarray | torch.Tensor  # (K, d) in the compute dtype (a tensor: on the pass's device)
    metric: str = "euclidean"
    update: bool = True  # sums, for new centroids
    far: bool = False  # the farthest rows of every group, to refill empty clusters
    keep_labels: bool = False  # return every row's label and distance, per block
    offsets: np.ndarray | None = None  # (n_groups + 1,) CSR children per group; None: one group
    groups: Mapping | None = None  # block index -> group of each row of the block
    far_per_group: int = MAX_FAR_ROWS
    sample: tuple[int, int] | None = None  # (size, seed): draw a hash sample of each cluster
    penalty: np.ndarray | None = None  # (K,) cost added to each centroid's distance when assigning
    device_sums: bool = False  # on CUDA, leave sums, counts and inertia on the device (added there, in block order)
    # block index -> (labels, lower bounds, distances) of the pass before (see ``use_bounds``)
    bounds: Mapping | None = None
    drift: np.ndarray | None = None  # per group: the farthest any of its children moved since that pass
    track_bounds: bool = False  # return every row's label, lower bound and distance, for the next pass
    frozen: np.ndarray | None = None  # per group: no child moved since that pass (see ``reuse_frozen``)

    @property
    def n_groups(self) -> int:
        return 1 if self.offsets is None else len(self.offsets) - 1


@dataclass
class LloydPartial(CompositePartial):
    """Per-centroid statistics of some blocks."""

    # Float sums are exact (ExactSum) while the runtime adds the blocks' partials, in whatever order
    # and grouping it likes; a pass gives them back as float64 arrays (``runtime.settled``).
    counts: np.ndarray  # (K,) int64
    inertia: np.ndarray | ExactSum  # (K,) float64: sum of distances to the assigned centroid
    sums: np.ndarray | ExactSum | None = None  # (K, d) float64 sum of assigned rows (normalized for cosine)
    far: BestPerGroup | FarthestPerGroup | None = None  # farthest rows: columns "distance", "ordinal", "label", "group"
    far_per_group: int = MAX_FAR_ROWS
    labels: dict = field(default_factory=dict)  # block index -> (labels, distances), when kept
    sample: SamplePartial | None = None  # per cluster, when asked for
    bounds: dict = field(default_factory=dict)  # block index -> (labels, lower bounds, distances), when tracked

    def _plus(self, other, add) -> LloydPartial:
        out = LloydPartial(self.counts + other.counts, add(self.inertia, other.inertia),
                           far_per_group=self.far_per_group, labels={**self.labels, **other.labels},
                           bounds={**self.bounds, **other.bounds})
        if self.sample is not None:
            out.sample = add(self.sample, other.sample)
        if self.sums is not None:
            out.sums = add(self.sums, other.sums)
        if self.far is not None:
            out.far = add(self.far, other.far)
        return out

    @property
    def total_inertia(self) -> float:
        return float(self.inertia.sum())

    def ordered_labels(self) -> tuple:
        """Every kept row's label and distance, in block order: arrays, or tensors on the device
        where one pass kept them there for all blocks at once (``LloydTask.whole``)."""
        if len(self.labels) == 1:
            (pair,) = self.labels.values()
            return pair
        return in_block_order(self.labels)


def pass_sums(x, labels, dist, state: LloydState, block_rows=None):
    """(sums, counts, inertia) of a pass's rows (sums None where the pass does not update; rows
    normalized for cosine); ``block_rows``: of blocks of that many rows at once (see
    ``ops.update.cluster_stats``)."""
    k = state.centroids.shape[0]
    if state.update:
        return cluster_stats(normalize_rows(x) if state.metric == "cosine" else x, labels, dist, k,
                             block_rows=block_rows)
    return (None, *cluster_counts(labels, dist, k, block_rows=block_rows))


class LloydTask:
    """Block task of one Lloyd pass (picklable; the centroids travel in the state). ``operands``:
    the centroids prepared for the kernels, kept from block to block (given by the driver, which
    prepares the next pass's ahead; else made at the first block)."""

    def __init__(self, operands: OperandCache | None = None):
        if operands is not None:
            self._operands = operands

    def __getstate__(self):
        return {}  # the cached centroids and operands stay behind

    @property
    def operands(self) -> OperandCache:
        if "_operands" not in self.__dict__:
            self._operands = OperandCache()
        return self._operands

    def _centroids(self, state, device):
        """The pass's centroids on ``device``, moved once per pass rather than once per block (a
        level of 65536 children is 256 MiB of float32)."""
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] is not state.centroids or cached[1] != device:
            self._cached = (state.centroids, device, torch.as_tensor(state.centroids, device=device))
        return self._cached[2]

    def _nearest(self, x, c, state):
        """(distance, label) of every row's nearest centroid (one group), size penalties added."""
        operands = self.operands
        return with_penalty(lambda x, c, metric: nearest(x, c, metric=metric, cache=operands), x, c, state.penalty,
                            state.metric)

    @staticmethod
    def takes_whole(state: LloydState) -> bool:
        """Whether :meth:`whole` computes this pass: not what needs the blocks one by one."""
        return not (state.offsets is not None or state.sample is not None or state.track_bounds
                    or state.bounds is not None)

    def whole(self, block, state: LloydState, device, part=False) -> LloydPartial | None:
        """The partial of every block of the source at once (``block``: all its rows, on ``device``
        already; see ``runtime.base.BlockTask``), or of a run of them (``part``: other runs' are
        added to it): one assignment over all rows, whose labels and distances are those of the
        blocks one by one (a row's do not depend on its neighbours), and each block's sums added
        exactly (``cluster_stats(block_rows=)``): the bits of the blocks' partials added by the
        runtime; the farthest rows are the blocks' selections merged (one order: distance, then
        ordinal). Labels stay on the device. None for what needs the blocks one by one: groups,
        samples, bounds."""
        if not self.takes_whole(state):
            return None
        x = block.vectors
        dist, labels = self._nearest(x, self._centroids(state, x.device), state)
        sums, counts, inertia = pass_sums(x, labels, dist, state, block_rows=BLOCK_ROWS)  # exact sums
        if not state.device_sums:  # read on the host once the pass is over
            (counts,) = host_arrays(counts)
            if part:  # more runs are added to it: exact still, its digits left where they are
                inertia = inertia.as_kind("numpy")
                sums = None if sums is None else sums.as_kind("numpy")
            else:  # the whole pass: rounded now, nothing more is added to it
                inertia = ExactSum.of(host_arrays(inertia.value())[0])
                sums = None if sums is None else ExactSum.of(host_arrays(sums.value())[0])
        far = block_farthest(dist, labels, block.ordinals, None, state) if state.far else None
        partial = LloydPartial(counts, inertia, sums, far=far, far_per_group=state.far_per_group)
        if state.keep_labels:
            partial.labels = {block.index: (labels, dist)}
        return partial

    def __call__(self, block, state: LloydState, device) -> LloydPartial:
        k = state.centroids.shape[0]
        x = as_tensor(block.vectors, device)
        c = self._centroids(state, torch.device(device))
        # one group: its ids (zeros) are made only where a step needs them
        groups = None if state.offsets is None else np.asarray(state.groups[block.index], dtype=np.int64)
        stats = None
        if state.track_bounds or state.bounds is not None:  # see use_bounds: one fused step
            if groups is None:
                groups = np.zeros(len(block.ordinals), dtype=np.int64)
            previous = None if state.bounds is None else state.bounds.get(block.index)
            bounds = frozen = None
            if previous is not None:
                labels_before, lower_before, dist_before = previous
                bounds = (labels_before, lower_before, state.drift)
                frozen = None if state.frozen is None else (dist_before, state.frozen)
            dist, labels, lower, stats = grouped_nearest_bounded(
                x, groups, c, [0, k] if state.offsets is None else state.offsets, bounds,
                track=state.track_bounds, stats=True, frozen=frozen)
        elif state.offsets is None:
            dist, labels = self._nearest(x, c, state)
        else:
            # kept there for the level's next passes; offsets stay on the host: the kernel's launch reads them
            groups = kept_on_device(groups, device)
            operands = self.operands
            dist, labels = with_penalty(
                lambda x, c, metric: grouped_nearest(x, groups, c, state.offsets, metric=metric, cache=operands),
                x, c, state.penalty, state.metric)
        # Rows whose parent is a leaf have no children here (label -1): they take no part. On CUDA
        # a sort + segmented reduction (no atomics), on the CPU a compiled loop in row order
        # (ops/update/): the same bits every run.
        sums, counts, inertia = pass_sums(x, labels, dist, state) if stats is None else stats
        far = block_farthest(dist, labels, block.ordinals, groups, state) if state.far else None
        out = {"counts": counts, "inertia": inertia, "sums": sums}
        if x.is_cuda and state.device_sums:  # all stay on the device, added there: no sync per block
            outgoing = {}
        else:
            outgoing = {name: t for name, t in out.items() if t is not None}
        # On a GPU the sample is selected there (where its tables fit): the labels stay
        sample = None if state.sample is None or not x.is_cuda else device_block_sample(block, *state.sample, labels, k)
        if state.keep_labels or (state.sample is not None and sample is None):
            outgoing["labels"] = labels
        if state.keep_labels:
            outgoing["dist"] = dist

        def finish(arrived: dict) -> LloydPartial:
            values = {**out, **arrived}
            sums = ExactSum.of(values["sums"]) if state.update else None
            partial = LloydPartial(values["counts"], ExactSum.of(values["inertia"]), sums, far=far,
                                   far_per_group=state.far_per_group)
            if state.keep_labels:
                partial.labels = {block.index: (values["labels"], values["dist"])}
            if state.track_bounds:
                partial.bounds = {block.index: (labels.numpy(), lower, dist.numpy())}
            if sample is not None:
                partial.sample = sample
            elif state.sample is not None:
                size, seed = state.sample
                # Rows without a cluster (under a leaf) fall in group -1, which nobody reads.
                partial.sample = block_sample(block, size, seed, groups=values["labels"], moments=False)
            return partial

        if x.is_cuda and outgoing:
            copies = HostCopy(outgoing)
            return Deferred(lambda: finish(copies.arrays()))
        return finish({name: t.cpu().numpy() for name, t in outgoing.items()})
