"""A taxonomy level trained on a hash sample held in memory, then one pass over all rows.

FAISS trains a quantizer on at most 256 points per centroid and assigns every row once at the
end; Meta's ssl-data-curation reads the raw rows only a few times. A level does the same here
(``TaxonomyEngine(max_train_points_per_centroid=256)``): where its nodes' children times that
many rows are fewer than the rows under the level, its Lloyd iterations run on a sample of
``children x max_train_points_per_centroid`` rows of every node, held in memory, and one pass over
the full data then assigns every row to the final centroids (the level's usual assignment pass,
which also draws the next level's sample). The level's iterations cost no read of the data.

The sample is the one the level above draws anyway for its seeds, only larger: per node the
rows of lowest hash(seed + level, id) (``partials.sampling``), sorted by hash within the node, so
the seeds' sample is its prefix and the seeds do not change. Drawn by hash, it depends on the ids
alone: neither on the worker count nor on how files, shards or blocks are cut. The sample's
passes run on a LocalRuntime of this process with ``reduce_blocks=1``, on the runtime's device
where this process has it (else on the CPU), so the centroids do not depend on the runtime's
``reduce_blocks`` either: a tree whose every level was trained on samples is the same bits on
any runtime of the same device type.

Which levels are trained on samples is decided in two steps, both reproducible on resume: before
the pass that draws the sample, from the parameters, the input's length and the node count of
the level above, whether the sample is drawn (within ``_TRAIN_BYTES`` on the driver, and fewer
rows than the input); and, once the level's nodes are known, whether their children times
``max_train_points_per_centroid`` are fewer than the rows under the level (else the level runs
full-data passes: a sample as large as the data would only copy it into memory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..cluster.lloyd import lloyd
from ..io import BLOCK_ROWS, VectorSource
from ..runtime import CountingRuntime, LocalRuntime

logger = logging.getLogger(__name__)

# A level's training sample (every node's rows, in the centroids' dtype, on the driver and on its
# device) is drawn only within this many bytes: 1,000 children of the root at 1024-d float32 and
# 256 rows a child are 1 GiB; a level of 1e6 children would need 1 TiB and runs full-data passes.
_TRAIN_BYTES = 4 << 30


def train_rows_per_node(max_points: int | None, branching: int, parents: int, row_bytes: int) -> int | None:
    """Rows to draw per node of the level above to train a level of ``branching`` children a node
    on samples (``max_points`` a child), or None where the level is not trained on a sample: no
    ``max_points``, or a sample of ``parents`` nodes (the most there can be) past _TRAIN_BYTES.

    Examples
    --------
    >>> train_rows_per_node(256, 16, 1, 64 * 4)
    4096
    >>> train_rows_per_node(256, 1000, 1000, 1024 * 4) is None  # 256M rows: 1 TB
    True
    >>> train_rows_per_node(None, 16, 1, 256) is None
    True
    """
    if max_points is None:
        return None
    rows = max_points * branching
    return rows if parents * rows * row_bytes <= _TRAIN_BYTES else None


class SeedView:
    """The first ``size`` sampled rows of every node (the seeds' sample) of a larger sample drawn
    for training: what ``levels.seed_children`` reads (``of_group``, ``vectors``)."""

    def __init__(self, sample, size: int):
        self.sample, self.size = sample, size

    @property
    def vectors(self) -> np.ndarray:
        return self.sample.vectors

    def of_group(self, group: int) -> np.ndarray:
        return self.sample.of_group(group)[:self.size]


def sample_device(device) -> torch.device:
    """Where the sample's passes run: the runtime's device, or the CPU where this process has no
    such device (the driver of a cluster of GPU workers, say)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return device


@dataclass
class TrainingSample:
    """A level's training rows in memory: ``source`` (node after node, in hash order within a
    node), ``groups`` (per block of ``source``, each row's node; None at level 0), on ``device``."""

    source: VectorSource
    groups: dict | None
    rows: int
    device: torch.device

    @classmethod
    def of(cls, sample, n_children: np.ndarray, max_points: int, device, level: int,
           rows: int) -> TrainingSample | None:
        """Per node with children, its first ``children x max_points`` sampled rows; None where the
        level's children x ``max_points`` are not fewer than the ``rows`` under it (FAISS's rule:
        the level then reads every row; a sample that holds most of a level's rows, its small
        nodes whole, would copy the data into memory and save little)."""
        if int(np.sum(n_children)) * max_points >= rows:
            return None
        if level == 0:  # the root's sample: all rows, one group
            vectors, groups = sample.vectors[:int(n_children[0]) * max_points], None
        else:
            nodes = np.flatnonzero(n_children)
            parts = [sample.of_group(node)[:int(n_children[node]) * max_points] for node in nodes]
            vectors = np.concatenate(parts)
            labels = np.repeat(nodes, [len(p) for p in parts]).astype(np.int64)
            groups = {b: labels[start:start + BLOCK_ROWS] for b, start in enumerate(range(0, len(labels), BLOCK_ROWS))}
        logger.info("level %d: trained on a sample of %d of %d rows", level, len(vectors), rows)
        device = sample_device(device)
        data = np.ascontiguousarray(vectors) if device.type == "cpu" else torch.as_tensor(vectors, device=device)
        return cls(VectorSource(data), groups, len(vectors), device)

    def fit(self, source, runtime, centroids, *, max_iter, tol, start_iter, on_iteration, keep_labels, sample,
            offsets, groups, metric, desc):
        """The level's Lloyd iterations on the sample, then one pass over ``source`` (through
        ``runtime``, a collective one included) that assigns every row and draws ``sample``.
        Returns (the full pass's LloydResult with the sample's iterations, passes over the sample)."""
        local = CountingRuntime(LocalRuntime(device=self.device, progress=False))
        trained = lloyd(self.source, centroids, local, metric=metric, max_iter=max_iter, tol=tol, offsets=offsets,
                        groups=self.groups, start_iter=start_iter, on_iteration=on_iteration, desc=f"{desc} sample")
        # max_iter=0: no iteration, only lloyd's final pass, which assigns every row to the centroids
        result = runtime.drive(lloyd, source, trained.centroids, metric=metric, max_iter=0, keep_labels=keep_labels,
                               offsets=offsets, groups=groups, sample=sample, desc=desc)
        result.n_iter = trained.n_iter
        return result, local.passes


def train_rows(config, level: int, row_bytes: int, parents: int, rows: int) -> int | None:
    """Rows to draw per node of the ``parents`` nodes above ``level`` to train it on a sample, for
    a fit of ``config`` (a ``FitConfig``) over ``rows`` rows, or None: where the level's nodes'
    children times ``max_train_points_per_centroid`` are not fewer than the rows (a sample as big
    as the data), or past the budget; and for mixtures and size-penalised levels, which read
    every row in every pass (their sizes and responsibilities are of all rows)."""
    if config.clusterer != "kmeans" or config.balancing.mode == "penalty":
        return None
    per_node = train_rows_per_node(config.max_train_points_per_centroid, config.factors[level], parents, row_bytes)
    return None if per_node is None or parents * per_node >= rows else per_node


def rows_under(counts: np.ndarray, n_children: np.ndarray) -> int:
    """Rows under the nodes of the level above that get children (what the level's passes read)."""
    return int(np.asarray(counts)[np.asarray(n_children) > 0].sum())
