"""Lloyd's k-means as passes of additive partial sums over a streamed source.

One pass assigns every row to its nearest centroid and sums, per centroid, the rows (float64),
their count and their squared distances. Partials are per block and add up in block order
(runtime/), so the centroids do not depend on shard layout, batch size or worker count. The
driver turns the sums into new centroids, relocating empty clusters to the rows farthest from
their centroid as scikit-learn's Lloyd does.

The same pass fits a whole taxonomy level at once (grouped k-means): centroids are then the
children of all parents side by side (CSR ``offsets``), each row is compared only with the
children of its own parent (``groups``), and an empty child is refilled from its own parent's
farthest rows. Flat k-means is the case of one group.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..ops import OperandCache, grouped_nearest, nearest, normalize_rows
from ..ops.device import HostCopy, host_arrays, host_arrays_later, kept_on_device, to_device
from ..ops.grouped_assign import MAX_CHILDREN, grouped_nearest_bounded
from ..ops.update import centroids_from_sums, cluster_counts, cluster_stats
from ..partials import BestPerGroup, FarthestPerGroup, SamplePartial, block_sample
from ..partials.groups import group_of_centroid
from ..runtime import CompositePartial, Deferred, in_block_order
from .balance import size_penalty

logger = logging.getLogger(__name__)

# Farthest rows kept per group (and per block) to refill empty clusters without another pass.
MAX_FAR_ROWS = 1024


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

    counts: np.ndarray  # (K,) int64
    inertia: np.ndarray  # (K,) float64: sum of distances to the assigned centroid
    sums: np.ndarray | None = None  # (K, d) float64 sum of assigned rows (normalized for cosine)
    far: BestPerGroup | FarthestPerGroup | None = None  # farthest rows: columns "distance", "ordinal", "label", "group"
    far_per_group: int = MAX_FAR_ROWS
    labels: dict = field(default_factory=dict)  # block index -> (labels, distances), when kept
    sample: SamplePartial | None = None  # per cluster, when asked for
    bounds: dict = field(default_factory=dict)  # block index -> (labels, lower bounds, distances), when tracked

    def _plus(self, other, add) -> LloydPartial:
        out = LloydPartial(self.counts + other.counts, self.inertia + other.inertia,
                           far_per_group=self.far_per_group, labels={**self.labels, **other.labels},
                           bounds={**self.bounds, **other.bounds})
        if self.sample is not None:
            out.sample = add(self.sample, other.sample)
        if self.sums is not None:
            out.sums = self.sums + other.sums
        if self.far is not None:
            out.far = add(self.far, other.far)
        return out

    @property
    def total_inertia(self) -> float:
        return float(self.inertia.sum())

    def ordered_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Every kept row's label and distance, in block order."""
        return in_block_order(self.labels)


def as_tensor(vectors, device) -> torch.Tensor:
    """A block's vectors as a tensor on ``device`` (no copy when already there).

    Blocks of files are read-only (memory maps, shared cache entries); torch warns about those
    because it cannot protect them, but nothing here writes to a block's tensor.
    """
    if isinstance(vectors, np.ndarray) and not vectors.flags.writeable:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.as_tensor(vectors).to(device, non_blocking=True)
    return torch.as_tensor(vectors).to(device, non_blocking=True)


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
            operands = self.operands
            dist, labels = with_penalty(lambda x, c, metric: nearest(x, c, metric=metric, cache=operands), x, c,
                                        state.penalty, state.metric)
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
        if stats is None and state.update:
            stats = cluster_stats(normalize_rows(x) if state.metric == "cosine" else x, labels, dist, k)
        elif stats is None:
            stats = (None, *cluster_counts(labels, dist, k))
        sums, counts, inertia = stats
        far = block_farthest(dist, labels, block.ordinals, groups, state) if state.far else None
        out = {"counts": counts, "inertia": inertia, "sums": sums}
        if x.is_cuda and state.device_sums:  # all stay on the device, added there: no sync per block
            outgoing = {}
        else:
            outgoing = {name: t for name, t in out.items() if t is not None}
        if state.keep_labels or state.sample is not None:
            outgoing["labels"] = labels
        if state.keep_labels:
            outgoing["dist"] = dist

        def finish(arrived: dict) -> LloydPartial:
            values = {**out, **arrived}
            sums = values["sums"] if state.update else None
            partial = LloydPartial(values["counts"], values["inertia"], sums, far=far,
                                   far_per_group=state.far_per_group)
            if state.keep_labels:
                partial.labels = {block.index: (values["labels"], values["dist"])}
            if state.track_bounds:
                partial.bounds = {block.index: (labels.numpy(), lower, dist.numpy())}
            if state.sample is not None:
                size, seed = state.sample
                # Rows without a cluster (under a leaf) fall in group -1, which nobody reads.
                partial.sample = block_sample(block, size, seed, groups=values["labels"], moments=False)
            return partial

        if x.is_cuda and outgoing:
            copies = HostCopy(outgoing)
            return Deferred(lambda: finish(copies.arrays()))
        return finish({name: t.cpu().numpy() for name, t in outgoing.items()})


def with_penalty(assign, x: torch.Tensor, c: torch.Tensor, penalty: np.ndarray | None, metric: str):
    """``assign(x, c, metric) -> (distances, indices)`` choosing the centroid of least ``distance +
    penalty[centroid]`` (the plain assignment when ``penalty`` is None); distances stay the true ones.

    The penalty rides on one more coordinate, 0 for rows and ``sqrt(penalty)`` for centroids
    (penalties shifted to be >= 0, which changes no argmin), so every assignment op serves as it
    is (squared L2 of normalized rows is twice the cosine distance).
    """
    if penalty is None:
        return assign(x, c, metric)
    p = torch.as_tensor(penalty - penalty.min(initial=0.0), dtype=torch.float64, device=c.device)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa, ca, scale = x.to(dtype), c.to(dtype), 1.0
    if metric == "cosine":
        xa, ca, scale = normalize_rows(xa), normalize_rows(ca), 2.0
    xa = torch.cat([xa, xa.new_zeros(xa.shape[0], 1)], 1)
    ca = torch.cat([ca, (scale * p).sqrt().to(dtype)[:, None]], 1)
    dist, index = assign(xa, ca, "euclidean")
    dist = dist / scale - p.to(dist.dtype)[index.clamp_min(0)]
    return dist.clamp_min_(0.0), index


def block_farthest(distances: torch.Tensor, labels: torch.Tensor, ordinals: np.ndarray, groups,
                   state: LloydState) -> BestPerGroup | FarthestPerGroup:
    """The ``state.far_per_group`` rows of a block farthest from their centroid, per group
    (largest distance first, equal distances by ordinal); rows labelled -1 (no cluster) left out.
    ``groups``: every row's group, None for one. On a GPU the selection stays there
    (:class:`FarthestPerGroup`; ``groups`` may be on the device already); on the CPU it is a
    host table."""
    n = state.far_per_group
    if distances.is_cuda:
        device = distances.device
        if len(ordinals) and ordinals[-1] - ordinals[0] == len(ordinals) - 1:  # ascending: a range
            ordinals = torch.arange(int(ordinals[0]), int(ordinals[-1]) + 1, device=device)
        if state.offsets is None:  # one group: its ids are made there, not copied
            groups = torch.zeros(len(labels), dtype=torch.int64, device=device)
        return FarthestPerGroup.of_block(distances, labels, to_device(ordinals, device), to_device(groups, device),
                                         state.n_groups, n)
    valid = (labels >= 0).numpy()
    distances, labels, ordinals = distances[valid].double(), labels[valid], ordinals[valid]
    groups = np.zeros(len(ordinals), dtype=np.int64) if groups is None else np.asarray(groups)[valid]
    if state.offsets is None and len(ordinals) > n:
        # One group: an O(n) top-k first, so that only n rows are sorted. Rows tied with the n-th
        # distance all stay candidates, so the tie rule (by ordinal) is exact.
        cut = distances.topk(n, sorted=False).values.min()
        pre = torch.nonzero(distances >= cut).squeeze(1).numpy()
    else:
        pre = np.arange(len(ordinals))
    far = {"distance": distances.numpy()[pre], "ordinal": ordinals[pre], "label": labels.numpy()[pre],
           "group": groups[pre]}
    return BestPerGroup(n, far, key="distance", largest=True)


def new_centroids(partial: LloydPartial, old, source, metric: str, offsets: np.ndarray | None = None):
    """Centroids from a pass's sums, after relocating empty clusters; returns (centroids, counts,
    shift), ``shift`` the sum of their squared differences from ``old`` (float64; a 0-d tensor
    where the sums are).

    Each empty cluster takes the row farthest from its centroid among its group (largest first,
    as scikit-learn's ``_relocate_empty_clusters_dense``), which leaves the row's old cluster.
    The farthest rows come from a pass with ``LloydState.far``; without them, empty clusters keep
    their centroid. Sums left on a device are turned into centroids there (a tensor, in the
    dtype of ``old``): a GPU loop then moves no (K, d) array through the host.
    """
    on_device = isinstance(partial.sums, torch.Tensor)
    sums = partial.sums if on_device else torch.from_numpy(partial.sums)  # copied before a relocation
    counts = partial.counts.copy()
    group_of = group_of_centroid(offsets, len(old))
    empty = np.flatnonzero(counts == 0)
    if len(empty) and partial.far is not None:  # without far rows, empty clusters keep their centroid
        far = partial.far
        moves = []  # (empty cluster, position in far)
        for group in np.unique(group_of[empty]):
            candidates = np.flatnonzero(far["group"] == group)  # largest distance first
            targets = empty[group_of[empty] == group]
            moves += list(zip(targets, candidates))  # zip stops where the group has no rows left
        if moves:
            take = np.array([pos for _, pos in moves])
            rows = source.take(far["ordinal"][take])
            rows = torch.as_tensor(rows.cpu() if isinstance(rows, torch.Tensor) else np.asarray(rows)).double()
            if metric == "cosine":
                rows = normalize_rows(rows)
            rows, sums = rows.to(sums.device), sums.clone()
            for (cluster, pos), row in zip(moves, rows):
                previous = far["label"][pos]
                sums[previous] -= row
                counts[previous] -= 1
                sums[cluster] = row
                counts[cluster] = 1
        if len(moves) < len(empty):
            logger.info("%d empty clusters had no row left to take", len(empty) - len(moves))
        logger.debug("relocated %d empty clusters", len(moves))
    # counts: pinned and asynchronous, no sync
    centroids, shift = centroids_from_sums(sums, to_device(counts, sums.device), torch.as_tensor(old),
                                           normalize=metric == "cosine")
    return (centroids, counts, shift) if on_device else (centroids.numpy(), counts, float(shift))


def counts_on_host(partial: LloydPartial) -> LloydPartial:
    """A pass's counts and inertia as arrays (left on the device by ``device_sums``): one sync
    per pass rather than per block."""
    partial.counts, partial.inertia = host_arrays(partial.counts, partial.inertia)
    return partial


# Per-row bounds cost 20 bytes a row (a label, a float64 bound and a float32 distance): kept up
# to this many bytes.
_BOUNDS_BYTES = 1 << 30


def passes_here_on_cpu(runtime) -> bool:
    """Whether ``runtime``'s passes run in this process, on the CPU: per-row state then goes from
    one pass to the next (or to the output pass) at no transfer cost, computed by the compiled CPU
    kernels that routing shares bit for bit."""
    return runtime.in_process and torch.device(runtime.device).type == "cpu"


def use_bounds(runtime, n_rows: int, k: int, offsets, metric: str, penalized: bool) -> bool:
    """Whether passes keep Hamerly's bounds: every row's label and a lower bound on its distance
    to the other children of its group, from one pass to the next. A row whose distance to its
    child stays below that bound (less the farthest any child of its group moved) keeps its
    child without the others being computed; labels and distances are those of full passes, so
    the bits do not change. For the compiled CPU kernel (euclidean, groups of at most
    ``MAX_CHILDREN``, no size penalties) in this process, within ``_BOUNDS_BYTES``."""
    if not passes_here_on_cpu(runtime) or metric != "euclidean" or penalized:
        return False
    widest = k if offsets is None else int(np.diff(offsets).max(initial=0))
    return widest <= MAX_CHILDREN and 20 * n_rows <= _BOUNDS_BYTES


def group_drift(new: np.ndarray, old: np.ndarray, offsets) -> np.ndarray:
    """Per group, the farthest (L2) any of its centroids moved from ``old`` to ``new``."""
    shift = np.sqrt(((np.asarray(new, dtype=np.float64) - old) ** 2).sum(1))
    group_of = group_of_centroid(offsets, len(shift))
    drift = np.zeros(1 if offsets is None else len(offsets) - 1)
    np.maximum.at(drift, group_of, shift)
    return drift


def reuse_frozen(partial: LloydPartial, before: LloydPartial, frozen: np.ndarray, offsets) -> None:
    """Fill in the statistics that a pass left out: the clusters of its ``frozen`` groups, taken
    from the pass ``before``. No child of those groups moved between the two passes, so their
    rows have the same labels and distances, and a cluster's sums hold only its own group's rows,
    added in the same order: these are the bits the pass would have computed. A group stays
    frozen until the level ends (its centroids come out of these same sums), so that, with
    ``tol=0``, a level's passes compute only the rows of the nodes still moving."""
    clusters = frozen[group_of_centroid(offsets, len(partial.counts))]
    partial.counts[clusters] = before.counts[clusters]
    partial.inertia[clusters] = before.inertia[clusters]
    if partial.sums is not None:
        partial.sums[clusters] = before.sums[clusters]


def rows_per_group(source, groups, n_groups: int) -> np.ndarray:
    """Rows of every group (``groups``: block index -> group of each row; None: one group)."""
    if groups is None:
        return np.array([len(source)])
    return sum(np.bincount(np.asarray(g), minlength=n_groups) for g in groups.values())


def rows_computed(group_rows: np.ndarray | None, frozen: np.ndarray | None) -> int:
    """Rows that a pass read (those outside frozen groups), for the logs; -1 when not counted."""
    if group_rows is None:
        return -1
    return int(group_rows.sum() if frozen is None else group_rows[~frozen].sum())


@dataclass
class LloydResult:
    centroids: np.ndarray
    counts: np.ndarray
    inertia: float
    n_iter: int
    partial: LloydPartial  # of the final assignment (labels per block when kept)
    penalty: np.ndarray | None = None  # the final assignment's, with size penalties


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
    penalty : (K,) array, optional
        Size-penalised assignment: rows go to the centroid of least ``distance + penalty``
        (distances and inertia stay the true ones). This is the first pass's.
    penalty_strength : float
        When > 0, every pass's penalties follow from the sizes of the pass before
        (``cluster.balance.size_penalty``); the result holds the last ones.
    look_ahead : bool, optional
        Launch every pass before the counts of the one before are back, on the centroids of its
        update (which stands unless a cluster went empty: the pass ahead is then dropped, and no
        pass is launched ahead in the rest of the fit). The same passes, the same bits; the GPU
        then never idles while the host turns one pass into the next (H200, 2 workers, N = 1M:
        see ``benchmarks/results/ray_gpu.json``). None (default): where the update is queued on a
        GPU; True: also on the host (a pass is wasted at the end; for tests); False: never. Not
        with penalties that follow the sizes, nor with bounds (their passes depend on the last).

    Notes
    -----
    As in scikit-learn, when the loop stops on ``max_iter`` or ``tol`` with centroids that still
    moved, one more pass assigns the rows to the final centroids, so that labels, counts and
    inertia describe the centroids returned.
    """
    if not isinstance(centroids, torch.Tensor):  # a tensor stays where it is (on the pass's device)
        centroids = np.ascontiguousarray(centroids)
    n_groups = 1 if offsets is None else len(offsets) - 1
    far_per_group = max(4, MAX_FAR_ROWS // n_groups)
    if offsets is not None:  # a group never needs more rows than it has children
        far_per_group = min(far_per_group, max(1, int(np.diff(offsets).max(initial=1))))
    # The farthest rows cost a selection in every block, and are needed only when a cluster went
    # empty: they are first found by one more pass over the same centroids (the same labels and
    # distances, so the same rows), then gathered in every pass of this fit.
    far = False
    track = use_bounds(runtime, len(source), len(centroids), offsets, metric, penalty is not None or penalty_strength > 0)
    bounds = drift = frozen = None
    group_rows = rows_per_group(source, groups, n_groups) if track and logger.isEnabledFor(logging.DEBUG) else None
    # With a sample to draw, the final assignment pass always runs and gives the labels: the
    # iterations' passes need not copy them out (two syncs a block on a GPU).
    labels_in_loop = keep_labels and sample is None
    partial, shift, n_iter = None, np.inf, start_iter
    # Without sizes that steer the next pass (penalties, bounds, frozen groups), the next pass is
    # launched before this one's counts come back: it runs on the update queued here, which
    # stands unless a cluster went empty. A GPU then never waits for the host's turn.
    looking_ahead = look_ahead is not False and not track and penalty_strength == 0
    ahead = None  # (partial, queued update) of the next pass, launched before this one was checked
    operands = OperandCache()  # the centroids prepared for the kernels, shared by this fit's passes

    def launch(pass_centroids, pass_number):
        """Run a pass over ``pass_centroids``, and queue its update where its sums are: on a GPU, the
        update runs behind the pass (the host then waits once an iteration, for the counts and the
        shift); on the host, only when looking ahead."""
        state = LloydState(pass_centroids, metric, True, far, labels_in_loop, offsets, groups, far_per_group,
                           penalty=penalty, device_sums=True, bounds=bounds, drift=drift, track_bounds=track,
                           frozen=frozen)
        partial = runtime.map_reduce(source, LloydTask(operands), state, desc=f"{desc} {pass_number}")
        # (Frozen groups, whose sums are filled in afterwards, come from passes on the host only.)
        on_device = isinstance(partial.sums, torch.Tensor)
        if frozen is not None or not (on_device or look_ahead):
            return partial, None
        queued = centroids_from_sums(torch.as_tensor(partial.sums), torch.as_tensor(partial.counts),
                                     torch.as_tensor(pass_centroids), normalize=metric == "cosine")
        if on_device:
            operands.prepare_ahead(queued[0])
            return partial, queued
        return partial, (queued[0].numpy(), queued[1])

    for n_iter in range(start_iter + 1, max_iter + 1):
        before = partial
        if ahead is None:
            partial, queued = launch(centroids, n_iter)
        else:
            (partial, queued), ahead = ahead, None
        counts_later = host_arrays_later(partial.counts, partial.inertia, None if queued is None else queued[1])
        # Once a cluster went empty, it may again: the passes ahead would be wasted.
        if (looking_ahead and queued is not None and not far and n_iter < max_iter
                and (look_ahead or isinstance(queued[0], torch.Tensor))):
            ahead = launch(queued[0], n_iter + 1)
        partial.counts, partial.inertia, queued_shift = counts_later()
        if frozen is not None:  # (never with a pass ahead: frozen groups need bounds)
            reuse_frozen(partial, before, frozen, offsets)
        if track:
            bounds, partial.bounds = partial.bounds, {}
        emptied = not partial.counts.all()  # a cluster to refill: the update queued does not stand
        if emptied:
            ahead = None
        if emptied and not far:
            far = True
            state = LloydState(centroids, metric, False, far, False, offsets, groups, far_per_group,
                               penalty=penalty, device_sums=True)
            partial.far = runtime.map_reduce(source, LloydTask(operands), state, desc=f"{desc} {n_iter} far").far
        if queued is None or emptied:  # on the host, or empty clusters to refill
            updated, _, shift = new_centroids(partial, centroids, source, metric, offsets)
        else:
            updated, shift = queued[0], queued_shift
        shift = float(shift)
        if track:
            computed = rows_computed(group_rows, frozen)
            drift = group_drift(updated, centroids, offsets)
            frozen = drift == 0
            logger.debug("%s %d: %d rows computed; next pass: %d of %d groups frozen", desc, n_iter,
                         computed, frozen.sum(), len(frozen))
        logger.debug("%s %d: inertia %.6g, shift %.3g", desc, n_iter, partial.total_inertia, shift)
        centroids = updated
        if penalty_strength > 0:
            penalty = size_penalty(partial.counts, partial.inertia, offsets, penalty, penalty_strength)
        if on_iteration is not None:
            on_iteration(n_iter, centroids, shift, penalty)
        if shift <= tol:
            break
    if partial is None or shift != 0 or sample is not None:
        state = LloydState(centroids, metric, False, False, keep_labels, offsets, groups, sample=sample,
                           penalty=penalty, device_sums=True, bounds=bounds, drift=drift, frozen=frozen)
        before, partial = partial, counts_on_host(runtime.map_reduce(source, LloydTask(operands), state,
                                                                     desc=f"{desc} assign"))
        if frozen is not None:
            reuse_frozen(partial, before, frozen, offsets)
            logger.debug("%s assign: %d rows computed", desc, rows_computed(group_rows, frozen))
    return LloydResult(host_arrays(centroids)[0], partial.counts, partial.total_inertia, n_iter, partial, penalty)
