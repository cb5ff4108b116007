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

from ..ops.hashing import hash_ids
from ..ops.select_numba import before_cut_numba, smallest_per_group_numba
from ..ops.update_numba import column_moments


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
    hashes, nearest members, farthest rows with negated distances). One pass of per-group
    bounded heaps (``ops/select_numba.py``), not a sort of every row."""
    keys = np.ascontiguousarray(keys)
    ordinals = np.ascontiguousarray(ordinals, dtype=np.int64)
    if len(ordinals) != len(keys) or (groups is not None and len(groups) != len(keys)):
        raise ValueError(f"{len(keys)} keys need as many ordinals and groups")  # the kernel reads them unchecked
    if groups is None or len(keys) == 0:
        groups, lowest, n_groups = np.zeros(len(keys), dtype=np.int64), 0, 1
    else:
        groups = np.asarray(groups, dtype=np.int64)
        lowest = int(groups.min())  # rows of no group (-1) form a group of their own
        n_groups = int(groups.max()) - lowest + 1
        groups = groups - lowest if lowest else np.ascontiguousarray(groups)
    return smallest_per_group_numba(keys, ordinals, groups, n, n_groups)


# Rows a BestPerGroup may hold unselected: it sorts again only when it holds twice as many as
# after its last selection, or as this.
_UNSELECTED_ROWS = 1 << 16


class BestPerGroup:
    """A mergeable table of the ``n`` rows of smallest ``key`` per ``group`` (equal keys by the
    "ordinal" column), among all rows added to it: ``a + b`` is the selection of the union.

    Adding only collects the parts; the selection (one concatenation and a pass of per-group
    heaps) runs when the rows have doubled since the last one and it would at least halve them,
    and when the columns are read. A reduction over many blocks then selects O(log) times, not
    once per block, and not while every group still keeps all its rows (a sample of 1024 rows per
    node, 4096 nodes), with the same result whatever the schedule: the n smallest of a union are
    the n smallest among the n smallest of its parts.

    Once a selection has run, every group it filled has a worst kept row; rows added later that
    come after it can never be selected, and are dropped as they arrive (a vectorised test). A
    sample of 32 rows in each of 4096 groups, 16 rows a group per block, otherwise kept every
    block's rows and selected every other block: 21 ms a merge on 2 cores.

    Examples
    --------
    >>> a = BestPerGroup(1, {"key": np.array([3.0, 1.0]), "ordinal": np.array([0, 1]),
    ...                      "group": np.array([0, 0])})
    >>> b = BestPerGroup(1, {"key": np.array([2.0]), "ordinal": np.array([2]), "group": np.array([1])})
    >>> (a + b)["ordinal"]
    array([1, 2])
    """

    def __init__(self, n: int, columns: dict, *, key="key", group="group", largest=False, selected=False):
        self.n, self.key, self.group, self.largest = n, key, group, largest
        self._parts = [columns]  # column dicts not selected together yet
        self._rows = len(columns[key])
        # Rows right after the last selection (None: rows were added since).
        self._selected = self._rows if selected else None
        # Rows when a selection last ran or was found not to halve them: merges look again at twice as many.
        self._checked = self._rows if selected else 0
        # The worst kept row of every group the last selection filled (``_worst_kept``), or None.
        self._cut = self._worst_kept() if selected else None

    def __len__(self):
        return self._rows

    def selected(self) -> BestPerGroup:
        if self._selected is None:
            parts = self._parts
            columns = {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
            keep = smallest_per_group(self._keys(columns), columns["ordinal"], self.n, columns[self.group])
            self._parts = [{name: v[keep] for name, v in columns.items()}]
            self._rows = self._selected = self._checked = len(keep)
            self._cut = self._worst_kept()
        return self

    def _keys(self, columns) -> np.ndarray:
        """The key column, negated when the largest are kept: smaller is always better."""
        return -columns[self.key] if self.largest else columns[self.key]

    def _worst_kept(self):
        """Of a selection (one part, ordered by group, then key), the last row of every full
        group: ``(first, full, key, ordinal)``, the last three indexed by group id - ``first``
        (a lookup per row, not a search: the group ids of a level are dense)."""
        part = self._parts[0]
        groups, keys = part[self.group], self._keys(part)
        if not len(groups):
            return None
        ends = np.flatnonzero(np.r_[groups[1:] != groups[:-1], True])
        last = ends[np.diff(np.r_[-1, ends]) == self.n]
        first = int(groups[0])
        span = int(groups[-1]) - first + 1
        full = np.zeros(span, dtype=bool)
        key = np.zeros(span, dtype=keys.dtype)
        ordinal = np.zeros(span, dtype=np.int64)
        at = groups[last] - first
        full[at], key[at], ordinal[at] = True, keys[last], part["ordinal"][last]
        return first, full, key, ordinal

    def _drop_unselectable(self, columns: dict, cut) -> dict:
        """``columns`` less the rows that come after the worst kept row of their group in ``cut``."""
        kept = before_cut_numba(self._keys(columns), columns["ordinal"], columns[self.group], *cut)
        if len(kept) == len(columns["ordinal"]):
            return columns
        return {name: v[kept] for name, v in columns.items()}

    def compact(self) -> BestPerGroup:
        """Select now if that at least halves the rows (counted without sorting), else leave the
        selection to the merges: a block's partial is small to send, and no sort is spent on a
        block whose groups all keep every row."""
        if self._selected is None and self._rows:
            groups = np.concatenate([p[self.group] for p in self._parts])
            kept = int(np.minimum(np.bincount(groups - groups.min()), self.n).sum())
            if 2 * kept <= len(groups):
                self.selected()
        self._checked = self._rows
        return self

    def __getitem__(self, column) -> np.ndarray:
        """A column of the selection (ordered by group, then key)."""
        return self.selected()._parts[0][column]

    def __add__(self, other: BestPerGroup) -> BestPerGroup:
        both = BestPerGroup(self.n, self._parts[0], key=self.key, group=self.group, largest=self.largest)
        mine, theirs = self._parts, other._parts
        if self._cut is not None:  # the worst rows a part of the union keeps bound the union's
            theirs = [self._drop_unselectable(p, self._cut) for p in theirs]
        elif other._cut is not None:
            mine = [self._drop_unselectable(p, other._cut) for p in mine]
        both._parts = mine + theirs
        both._rows = sum(len(p[self.key]) for p in both._parts)
        both._cut = self._cut if self._cut is not None else other._cut
        both._checked = max(self._checked, other._checked)
        if both._rows > 2 * max(both._checked, _UNSELECTED_ROWS):
            both.compact()
        return both

    def __getstate__(self):  # what crosses processes is the selection, never a pending union
        self.selected()
        return self.__dict__


@dataclass
class SamplePartial:
    """Per group, the ``size`` rows of lowest hash seen so far (columns "hash", "ordinal",
    "group"); and moments of all rows (for tol). Passes carry no vectors: :meth:`with_vectors`
    reads the selected rows from the source once the pass is over (from its block cache when
    it has them), so a block whose every row is still a candidate sends no vectors anywhere."""

    size: int
    rows: BestPerGroup
    count: int
    total: np.ndarray | torch.Tensor  # float64 sum of rows (on the GPU that summed them, until read)
    total_sq: np.ndarray | torch.Tensor  # float64 sum of squared rows
    _vectors: np.ndarray | None = None

    def __add__(self, other: SamplePartial) -> SamplePartial:
        return SamplePartial(self.size, self.rows + other.rows, self.count + other.count,
                             self.total + other.total, self.total_sq + other.total_sq)

    def with_vectors(self, source) -> SamplePartial:
        """Read the sampled rows' vectors from ``source`` (the one the pass ran over)."""
        vectors = source.take(self.ordinals)
        self._vectors = np.ascontiguousarray(vectors.cpu().numpy() if isinstance(vectors, torch.Tensor) else vectors)
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


def block_sample(block, size: int, seed: int, groups: np.ndarray | None = None, moments: bool = True) -> SamplePartial:
    """The sample partial of one block (``groups``: the group of each of its rows; ``moments``:
    also sum the rows and their squares, else zeros). Its rows are selected when partials merge,
    or before the partial crosses a process (``BestPerGroup.__getstate__``), not here: once the
    merged partial has full groups, most of a block's rows are dropped by one compiled pass
    against its worst kept rows, where a selection here ran a heap pass over all of them (a
    root sample of 16384 rows: 1.4 ms a block of 65536 rows against 5.5 ms on this machine)."""
    x = block.vectors
    hashes = hash_ids(block.ids, seed)
    groups = np.zeros(len(hashes), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    total = total_sq = np.zeros(x.shape[1])
    if moments and isinstance(x, torch.Tensor) and x.is_cuda:
        # summed and added up on the device, read once at the end: a copy back per block waited
        # for the block's transfer and sums, and the host sat idle meanwhile
        x64 = x.double()
        total, total_sq = x64.sum(0), (x64 * x64).sum(0)
    elif moments:
        if isinstance(x, torch.Tensor):
            x = (x if x.dtype in (torch.float32, torch.float64) else x.float()).numpy()
        total, total_sq = column_moments(x if x.dtype in (np.float32, np.float64) else x.astype(np.float32))
    rows = {"hash": hashes, "ordinal": block.ordinals, "group": groups}
    return SamplePartial(size, BestPerGroup(size, rows, key="hash"), len(hashes), total, total_sq)


@dataclass(frozen=True)
class SampleTask:
    """Block task of :class:`SamplePartial` over all rows: ``state`` is ``(size, seed)``."""

    def __call__(self, block, state, device) -> SamplePartial:
        size, seed = state
        return block_sample(block, size, seed)


def hash_sample(source, size: int, seed: int, runtime) -> SamplePartial:
    """One pass over ``source``: the ``size`` rows of lowest hash(seed, id), in hash order,
    and the moments of the data."""
    return runtime.map_reduce(source, SampleTask(), (size, seed), desc="sample").with_vectors(source)
