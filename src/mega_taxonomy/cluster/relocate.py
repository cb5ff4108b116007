"""Empty clusters refilled as scikit-learn's Lloyd does: each takes the row farthest from its centroid.

The farthest rows of every group are a mergeable selection gathered during a pass
(``LloydState.far``), so a refill needs no pass of its own once they are kept; an empty cluster
takes the farthest row of its own group (largest distance first), which leaves its old cluster.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..ops import normalize_rows
from ..io.device import host_arrays, to_device
from ..ops.update import centroids_from_sums
from ..partials import BestPerGroup, FarthestPerGroup, group_of_centroid

logger = logging.getLogger(__name__)

# Farthest rows kept per group (and per block) to refill empty clusters without another pass.
MAX_FAR_ROWS = 1024


def block_farthest(distances: torch.Tensor, labels: torch.Tensor, ordinals: np.ndarray, groups,
                   state) -> BestPerGroup | FarthestPerGroup:
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


def new_centroids(partial, old, source, metric: str, offsets: np.ndarray | None = None):
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


def counts_on_host(partial):
    """A pass's counts and inertia as arrays (left on the device by ``device_sums``): one sync
    per pass rather than per block."""
    partial.counts, partial.inertia = host_arrays(partial.counts, partial.inertia)
    return partial
