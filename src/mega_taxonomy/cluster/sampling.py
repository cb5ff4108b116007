"""Samples drawn by the lowest hash(seed, id), over all rows or per group of rows.

A sample chosen by hash does not depend on the order rows are streamed in, on how files are
cut, or on how many workers read them: the same ids and seed give the same sample everywhere
(the Contracts' determinism). It is also mergeable: the n lowest hashes of a union are among
the n lowest of each part, so every block keeps its own n lowest and the partials add up.
Groups (a taxonomy's nodes) each keep their own n lowest, so one pass samples every node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash_ids(ids: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of ``id + (seed + 1) * golden``: uint64 hashes, well mixed for sequential ids."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.int64).view(np.uint64) + np.uint64(seed + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def rank_in_group(sorted_groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an already sorted array."""
    n = len(sorted_groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    return np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))


def smallest_per_group(keys: np.ndarray, ordinals: np.ndarray, n: int,
                       groups: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``n`` smallest keys of every group (equal keys by ordinal), ordered by
    group, then key: the selection of every mergeable "best n per group" partial (lowest
    hashes, nearest members, farthest rows with negated distances)."""
    if groups is None:
        groups = np.zeros(len(keys), dtype=np.int64)
    order = np.lexsort((ordinals, keys, groups))
    return order[rank_in_group(groups[order]) < n]


@dataclass
class SamplePartial:
    """Per group, the ``size`` rows of lowest hash seen so far; and moments of all rows (for tol)."""

    size: int
    hashes: np.ndarray
    ordinals: np.ndarray
    groups: np.ndarray
    vectors: np.ndarray
    count: int
    total: np.ndarray  # float64 sum of rows
    total_sq: np.ndarray  # float64 sum of squared rows

    def __add__(self, other: SamplePartial) -> SamplePartial:
        hashes = np.concatenate([self.hashes, other.hashes])
        ordinals = np.concatenate([self.ordinals, other.ordinals])
        groups = np.concatenate([self.groups, other.groups])
        keep = smallest_per_group(hashes, ordinals, self.size, groups)
        return SamplePartial(
            self.size, hashes[keep], ordinals[keep], groups[keep],
            np.concatenate([self.vectors, other.vectors])[keep],
            self.count + other.count, self.total + other.total, self.total_sq + other.total_sq,
        )

    @property
    def mean_variance(self) -> float:
        """Mean over dimensions of the per-dimension variance of all rows (scikit-learn's tol scale)."""
        mean = self.total / self.count
        return float(np.mean(np.maximum(self.total_sq / self.count - mean * mean, 0.0)))

    def of_group(self, group: int) -> np.ndarray:
        """The sampled rows of one group, in hash order."""
        lo, hi = np.searchsorted(self.groups, [group, group + 1])
        return self.vectors[lo:hi]


def block_sample(block, size: int, seed: int, groups: np.ndarray | None = None) -> SamplePartial:
    """The sample partial of one block (``groups``: the group of each of its rows)."""
    x = block.vectors
    hashes = hash_ids(block.ids, seed)
    groups = np.zeros(len(hashes), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    keep = smallest_per_group(hashes, block.ordinals, size, groups)
    if isinstance(x, torch.Tensor) and x.is_cuda:  # moments on the device: only the sample comes back
        x64 = x.double()
        rows = x[torch.from_numpy(keep).to(x.device)].cpu().numpy()
        return SamplePartial(size, hashes[keep], block.ordinals[keep], groups[keep], rows, len(x),
                             x64.sum(0).cpu().numpy(), (x64 * x64).sum(0).cpu().numpy())
    if isinstance(x, torch.Tensor):
        x = x.cpu().numpy()
    x64 = x.astype(np.float64)
    return SamplePartial(
        size, hashes[keep], block.ordinals[keep], groups[keep], np.ascontiguousarray(x[keep]),
        len(x), x64.sum(0), (x64 * x64).sum(0),
    )


@dataclass(frozen=True)
class SampleTask:
    """Block task of :class:`SamplePartial` over all rows: ``state`` is ``(size, seed)``."""

    def __call__(self, block, state, device) -> SamplePartial:
        size, seed = state
        return block_sample(block, size, seed)


def hash_sample(source, size: int, seed: int, runtime) -> SamplePartial:
    """One pass over ``source``: the ``size`` rows of lowest hash(seed, id), in hash order,
    and the moments of the data."""
    return runtime.map_reduce(source, SampleTask(), (size, seed), desc="sample")
