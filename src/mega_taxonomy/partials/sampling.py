"""Samples drawn by the lowest hash(seed, id), over all rows or per group of rows.

A sample chosen by hash does not depend on the order rows are streamed in, on how files are
cut, or on how many workers read them: the same ids and seed give the same sample everywhere
(the Contracts' determinism). It is also mergeable: the n lowest hashes of a union are among
the n lowest of each part, so the partials of any parts add up to the sample of the whole.
Groups (a taxonomy's nodes) each keep their own n lowest, so one pass samples every node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..io.device import host_arrays, to_device
from ..ops.exact import ExactSum
from ..ops.hashing import hash_ids, hash_ids_torch
from ..ops.update import column_moments
from ..runtime import CompositePartial
from .best_per_group import BestPerGroup
from .lowest import SIGN, LowestPerGroup


@dataclass
class SamplePartial(CompositePartial):
    """Per group, the ``size`` rows of lowest hash seen so far (columns "hash", "ordinal",
    "group"); and moments of all rows (for tol). Passes carry no vectors: :meth:`with_vectors`
    reads the selected rows from the source once the pass is over (from its block cache when
    it has them), so a block whose every row is still a candidate sends no vectors anywhere."""

    size: int
    rows: BestPerGroup
    count: int
    # exact sums while partials are added, float64 once the pass is over (``runtime.settled``)
    total: np.ndarray | torch.Tensor | ExactSum  # float64 sum of rows (on the GPU that summed them, until read)
    total_sq: np.ndarray | torch.Tensor | ExactSum  # float64 sum of squared rows
    _vectors: np.ndarray | None = None

    def _plus(self, other, add) -> SamplePartial:
        return SamplePartial(self.size, add(self.rows, other.rows), self.count + other.count,
                             add(self.total, other.total), add(self.total_sq, other.total_sq))

    def with_vectors(self, source) -> SamplePartial:
        """Read the sampled rows' vectors from ``source`` (the one the pass ran over)."""
        (vectors,) = host_arrays(source.take(self.ordinals))
        self._vectors = np.ascontiguousarray(vectors)
        return self

    @property
    def hashes(self) -> np.ndarray:
        return self.rows["hash"]

    @property
    def ordinals(self) -> np.ndarray:
        return self.rows["ordinal"]

    @property
    def groups(self) -> np.ndarray:
        return self.rows["group"]

    @property
    def vectors(self) -> np.ndarray:
        """The sampled rows, in the order of ``ordinals`` (after :meth:`with_vectors`)."""
        if self._vectors is None:
            raise RuntimeError("the sample's vectors are read by with_vectors(source) after the pass")
        return self._vectors

    @property
    def mean_variance(self) -> float:
        """Mean over dimensions of the per-dimension variance of all rows (scikit-learn's tol scale)."""
        total, total_sq = (t.cpu().numpy() if isinstance(t, torch.Tensor) else t for t in (self.total, self.total_sq))
        mean = total / self.count
        return float(np.mean(np.maximum(total_sq / self.count - mean * mean, 0.0)))

    def of_group(self, group: int) -> np.ndarray:
        """The sampled rows of one group, in hash order."""
        lo, hi = np.searchsorted(self.groups, [group, group + 1])
        return self.vectors[lo:hi]


def block_sample(block, size: int, seed: int, groups: np.ndarray | None = None, moments: bool = True,
                 below: int | None = None) -> SamplePartial:
    """The sample partial of one block (``groups``: the group of each of its rows; ``moments``:
    also sum the rows and their squares, else zeros). Its rows are selected when partials merge,
    or before the partial crosses a process (``BestPerGroup.__getstate__``), not here: once the
    merged partial has full groups, most of a block's rows are dropped by one compiled pass
    against its worst kept rows, where a selection here ran a heap pass over all of them (a
    root sample of 16384 rows: 1.4 ms a block of 65536 rows against 5.5 ms on this machine).
    ``below``: only rows of hash at most this are candidates (see :func:`hash_sample`)."""
    x = block.vectors
    hashes = hash_ids(block.ids, seed)
    groups = np.zeros(len(hashes), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    ordinals = block.ordinals
    if below is not None:
        keep = hashes <= np.uint64(below)
        hashes, ordinals, groups = hashes[keep], ordinals[keep], groups[keep]
    total = total_sq = np.zeros(x.shape[1])
    if moments and isinstance(x, torch.Tensor) and x.is_cuda:
        total, total_sq = _device_moments(x)
    elif moments:
        if isinstance(x, torch.Tensor):
            x = (x if x.dtype in (torch.float32, torch.float64) else x.float()).numpy()
        total, total_sq = column_moments(x if x.dtype in (np.float32, np.float64) else x.astype(np.float32))
    rows = {"hash": hashes, "ordinal": ordinals, "group": groups}
    return SamplePartial(size, BestPerGroup(size, rows, key="hash"), len(block.ordinals), ExactSum.of(total),
                         ExactSum.of(total_sq))


def device_block_sample(block, size: int, seed: int, groups: torch.Tensor | None, n_groups: int,
                        moments: bool = False, below: int | None = None) -> SamplePartial | None:
    """:func:`block_sample`'s partial of a block on a GPU, its rows selected there
    (:class:`LowestPerGroup`): ``groups`` (on the GPU, in [0, n_groups) or -1; None: every row in
    group 0 of ``n_groups`` = 1) stay there, and the pass's driver neither copies anything out
    nor selects. None where its tables would not fit."""
    if not LowestPerGroup.fits(n_groups, size):
        return None
    device = block.vectors.device if groups is None else groups.device
    ordinals, ids = _ids_on(block, device)
    hashes = hash_ids_torch(ids, seed)
    groups = torch.zeros_like(ordinals) if groups is None else groups.long()
    keep = None if below is None else (hashes ^ SIGN) <= below + SIGN  # the hashes' unsigned order
    rows = LowestPerGroup.of_block(hashes, ordinals, groups, n_groups, size, keep=keep)
    total = total_sq = np.zeros(block.vectors.shape[1])
    if moments:
        total, total_sq = _device_moments(block.vectors)
    return SamplePartial(size, rows, len(block.ordinals), ExactSum.of(total), ExactSum.of(total_sq))


def _device_moments(x: torch.Tensor):
    """float64 sums of a block's rows and squared rows, left on its GPU: added up there and read
    once at the end, where a copy back per block waited for the block's transfer and sums."""
    x64 = x.double()
    return x64.sum(0), (x64 * x64).sum(0)


def _ids_on(block, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's (ordinals, ids) on ``device``: made there where the ordinals are a range and the
    ids are the ordinals (no id column, no row skipped: two copies a block saved), else copied."""
    o = np.asarray(block.ordinals)
    if len(o) and int(o[-1]) - int(o[0]) + 1 == len(o) and (block.ids is o or np.array_equal(block.ids, o)):
        ordinals = torch.arange(int(o[0]), int(o[-1]) + 1, device=device)
        return ordinals, ordinals
    ordinals = to_device(o.astype(np.int64), device)
    return ordinals, ordinals if block.ids is o else to_device(np.asarray(block.ids, dtype=np.int64), device)


@dataclass(frozen=True)
class SampleTask:
    """Block task of :class:`SamplePartial` over all rows: ``state`` is ``(size, seed)`` or
    ``(size, seed, below)``."""

    def __call__(self, block, state, device) -> SamplePartial:
        size, seed, *below = state
        below = below[0] if below else None
        if isinstance(block.vectors, torch.Tensor) and block.vectors.is_cuda:
            # hashed and selected on the GPU: the host's draw kept the driver thread busy for
            # the whole pass
            sample = device_block_sample(block, size, seed, None, 1, moments=True, below=below)
            if sample is not None:
                return sample
        return block_sample(block, size, seed, below=below)


# Candidates a pass keeps, as a multiple of the sample's size expected below the hash bound.
CANDIDATES_PER_ROW = 4


def hash_bound(size: int, n_rows: int) -> int | None:
    """A hash below which about ``CANDIDATES_PER_ROW * size`` of ``n_rows`` rows fall (hashes are
    uniform): the rows above it are dropped where they are read. None where that is every row."""
    fraction = CANDIDATES_PER_ROW * size / max(n_rows, 1)
    return None if fraction >= 0.5 else int(fraction * 2.0**64)


def hash_sample(source, size: int, seed: int, runtime) -> SamplePartial:
    """One pass over ``source``: the ``size`` rows of lowest hash(seed, id), in hash order,
    and the moments of the data.

    Only rows of hash below :func:`hash_bound` travel: about 4 times the sample, where every
    dispatched item sent its own ``size`` lowest (at 200B rows, 190,735 items of 256,000 rows
    each: 1.2 TB to the driver; ``benchmarks/bench_control_traffic.py``). Where fewer than
    ``size`` rows fall below it (for 4 x 1,000 expected, a chance under 1e-500), the pass runs
    again without it. Either way the sample is the same rows."""
    below = hash_bound(size, len(source))
    if below is not None:
        sample = runtime.map_reduce(source, SampleTask(), (size, seed, below), desc="sample")
        if len(sample.rows) >= size:
            return sample.with_vectors(source)
    return runtime.map_reduce(source, SampleTask(), (size, seed), desc="sample").with_vectors(source)
