"""BestPerGroup: per group, the ``n`` rows of smallest key among all rows added to it.

The mergeable selection behind a pass's hash samples (lowest hashes per node), nearest members
and farthest rows: ``a + b`` is the selection of the union, whatever the order and grouping of
the sums, because the n smallest of a union are the n smallest among the n smallest of its
parts. Two representations give the same rows in the same order (a sort by group, key, ordinal,
cut to n per group):

- **Parts**, for any sum. Adding only collects the parts; they are selected together
  (``smallest_per_group``) when they have doubled since the last selection and it would at least
  halve them. Rows that come after a full group's worst kept row are dropped as they arrive.
- **A table of heaps**, for the running total of a pass (``total += part``, as the runtime adds
  blocks). Every group keeps its best rows so far in a max-heap of ``n`` slots, updated in place
  block by block. A row costs one comparison with its group's worst kept row; the few that beat
  it cost a sift of log n. No selection runs again.
"""

from __future__ import annotations

import copy

import numpy as np

from ..ops.select import SELECT_FROM, before_cut_numba, push_rows_numba, smallest_per_group, table_order_numba


# Rows a BestPerGroup may hold unselected: it sorts again only when it holds twice as many as
# after its last selection, or as this.
_UNSELECTED_ROWS = 1 << 16

# A running total moves into a table of heaps once the table's slots (groups x n, held also
# for groups with fewer rows) are at most this many times the rows it holds.
TABLE_SLOTS_PER_ROW = 2

# Group ids spanning more than this many times the rows of a selection: no index of its worst
# kept rows (see ``_worst_kept``).
SPARSE_SPAN = 4


class BestPerGroup:
    """A mergeable table of the ``n`` rows of smallest ``key`` per ``group`` (equal keys by the
    "ordinal" column), among all rows added to it: ``a + b`` is the selection of the union, and
    ``a += b`` too, updating ``a`` in place (the runtime's running total of a pass).

    Parts are selected when the rows have doubled since the last selection and it would at least
    halve them, and when the columns are read: a reduction over many blocks then selects O(log)
    times, not once per block, and not while every group still keeps all its rows. Once a
    selection has run, every group it filled has a worst kept row; rows added later that come
    after it can never be selected, and are dropped as they arrive (one compiled pass).

    A running total moves into a table of heaps once that table has at most
    ``TABLE_SLOTS_PER_ROW`` slots per row it holds, for fewer than ``SELECT_FROM`` rows per
    group. Bigger heaps are scattered over memory: in a CPU replay of 153 blocks of 65,536 rows
    with 1024 rows kept in each of 4096 groups, 15 ms a block in heaps against 6 ms as parts. In
    the pinned GPU benchmark, level 1's final assignment, which draws a sample of 32 rows in each
    of 4096 groups, took 0.431 s with a table against 0.495 s as parts (0.378 s of copies;
    selections of 8 ms every 20 to 30 blocks stalled them). Pushes on a background thread made
    it slower (0.487-0.521 s): that thread and the driver's took turns with the GIL.

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
        groups = columns[group]
        self._groups = (int(groups.min()), int(groups.max())) if len(groups) else None  # lowest, highest
        # Rows right after the last selection (None: rows were added since).
        self._selected = self._rows if selected else None
        # Rows when a selection last ran or was found not to halve them: merges look again at twice as many.
        self._checked = self._rows if selected else 0
        # The worst kept row of every group the last selection filled (``_worst_kept``), or None.
        self._cut = self._worst_kept() if selected else None
        self._table = None  # a _Heaps holding every row, once this is a running total that fits one

    def __len__(self):
        return self._rows if self._table is None else self._table.rows

    def selected(self) -> BestPerGroup:
        if self._table is None and self._selected is None:
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
        (a lookup per row, not a search: the group ids of a level are dense). None where the
        groups are sparse among their ids (a block's rows over a deep level's 1e8 nodes): there
        the index would be larger than the rows, and few groups are full."""
        part = self._parts[0]
        groups, keys = part[self.group], self._keys(part)
        if not len(groups):
            return None
        first = int(groups[0])
        span = int(groups[-1]) - first + 1
        if span > SPARSE_SPAN * len(groups):
            return None
        ends = np.flatnonzero(np.r_[groups[1:] != groups[:-1], True])
        last = ends[np.diff(np.r_[-1, ends]) == self.n]
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
        if self._table is None and self._selected is None and self._rows:
            groups = np.concatenate([p[self.group] for p in self._parts])
            low, span = groups.min(), groups.max() - groups.min() + 1
            counts = np.bincount(groups - low) if span <= SPARSE_SPAN * len(groups) else np.unique(
                groups, return_counts=True)[1]  # (not a bincount as long as the ids' span)
            kept = int(np.minimum(counts, self.n).sum())
            if 2 * kept <= len(groups):
                self.selected()
        self._checked = self._rows
        return self

    def __getitem__(self, column) -> np.ndarray:
        """A column of the selection (ordered by group, then key)."""
        if self._table is not None:
            return self._table.columns()[column]
        return self.selected()._parts[0][column]

    def __add__(self, other: BestPerGroup) -> BestPerGroup:
        both = self._copy()
        if self._table is not None:
            both._table = self._table.copy()
            both += other
            return both
        other = other._as_parts()
        mine, theirs = self._parts, other._parts
        if self._cut is not None:  # the worst rows a part of the union keeps bound the union's
            theirs = [self._drop_unselectable(p, self._cut) for p in theirs]
        elif other._cut is not None:
            mine = [self._drop_unselectable(p, other._cut) for p in mine]
        both._parts = mine + theirs
        both._rows = sum(len(p[self.key]) for p in both._parts)
        both._groups = _union(self._groups, other._groups)
        both._selected = None
        both._cut = self._cut if self._cut is not None else other._cut
        both._checked = max(self._checked, other._checked)
        if both._rows > 2 * max(both._checked, _UNSELECTED_ROWS):
            both.compact()
        return both

    def __iadd__(self, other: BestPerGroup):
        """``self + other``, in place: ``self`` is a running total that nobody else reads."""
        if self._table is None:
            both = self + other
            if both._groups is not None and self.n < SELECT_FROM:
                lowest, highest = both._groups
                if (highest - lowest + 1) * self.n <= TABLE_SLOTS_PER_ROW * both._rows:
                    both._table = _Heaps(self.n, lowest, highest, both._parts[0][self.key].dtype)
                    both._push(both._parts, both._groups)
                    both._parts = both._cut = None
            return both
        other = other._as_parts()
        if other._groups is not None:
            self._push(other._parts, other._groups)
        return self

    def _copy(self) -> BestPerGroup:
        """A shallow copy (``copy.copy`` would go through ``__getstate__``, which selects)."""
        out = object.__new__(BestPerGroup)
        out.__dict__.update(self.__dict__)
        return out

    def _push(self, parts, groups):
        self._table.widen(*groups)
        for part in parts:
            self._table.push(part, self._keys(part), part["ordinal"], part[self.group])

    def _as_parts(self) -> BestPerGroup:
        """This selection as one part (itself, unless it holds a table)."""
        if self._table is None:
            return self
        return BestPerGroup(self.n, self._table.columns(), key=self.key, group=self.group, largest=self.largest,
                            selected=True)

    def __getstate__(self):
        """What crosses processes is the selection, never a pending union or a table, nor the
        worst kept rows' index (rebuilt on arrival: it is as long as the groups' id span)."""
        return {**self._as_parts().selected().__dict__, "_cut": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cut = self._worst_kept()


def _union(a, b):
    """The (lowest, highest) group ids of two ranges, either None when empty."""
    if a is None or b is None:
        return b if a is None else a
    return min(a[0], b[0]), max(a[1], b[1])


class _Heaps:
    """Per group of ``[first, first + span)``, a max-heap of ``n`` slots over key, ordinal and
    position columns, and the worst kept row of every full one (``ops.select``'s table
    kernels). A position is the row's place in ``log``: the column parts of the rows that
    entered, in order."""

    _SLOTS, _GROUPS = ("keys", "ordinals", "positions"), ("size", "worst_keys", "worst_ordinals")

    def __init__(self, n: int, lowest: int, highest: int, key_dtype):
        self.n, self.first, span = n, lowest, highest - lowest + 1
        self.keys, self.worst_keys = np.empty(span * n, key_dtype), np.empty(span, key_dtype)
        self.ordinals, self.positions = np.empty(span * n, np.int64), np.empty(span * n, np.int64)
        self.size, self.worst_ordinals = np.zeros(span, np.int64), np.empty(span, np.int64)
        self.log, self.logged = [], 0
        self._columns = None  # the selection's columns, until the next push

    @property
    def rows(self) -> int:
        return int(self.size.sum())

    def copy(self) -> _Heaps:
        out = copy.copy(self)
        for name in self._SLOTS + self._GROUPS:
            setattr(out, name, getattr(self, name).copy())
        out.log = list(self.log)  # its parts are never changed in place
        return out

    def widen(self, lowest: int, highest: int):
        """Make room for the groups ``lowest`` to ``highest``."""
        span = len(self.size)
        first, end = min(lowest, self.first), max(highest + 1, self.first + span)
        if first == self.first and end == self.first + span:
            return
        at = self.first - first
        for name in self._SLOTS + self._GROUPS:
            old = getattr(self, name)
            per = self.n if name in self._SLOTS else 1
            new = np.zeros((end - first) * per, old.dtype)
            new[at * per:at * per + len(old)] = old
            setattr(self, name, new)
        self.first = first

    def push(self, columns: dict, keys, ordinals, groups):
        """Offer rows (their columns; groups within the table's) to the heaps."""
        if (dtype := np.promote_types(self.keys.dtype, keys.dtype)) != self.keys.dtype:
            self.keys, self.worst_keys = self.keys.astype(dtype), self.worst_keys.astype(dtype)  # float32, then float64
        entered = push_rows_numba(self.keys, self.ordinals, self.positions, self.size, self.worst_keys,
                                  self.worst_ordinals, self.n, self.first,
                                  *(np.ascontiguousarray(a, dtype) for a, dtype in
                                    ((keys, self.keys.dtype), (ordinals, np.int64), (groups, np.int64))),
                                  self.logged)
        if len(entered):
            self.log.append({name: v[entered] for name, v in columns.items()})
            self.logged += len(entered)
            self._columns = None
            if self.logged > 4 * max(self.rows, _UNSELECTED_ROWS):
                self._drop_pushed_out()

    def _joined_log(self) -> dict:
        if len(self.log) > 1:
            self.log = [{name: np.concatenate([p[name] for p in self.log]) for name in self.log[0]}]
        return self.log[0]

    def _drop_pushed_out(self):
        """Keep in the log only the rows the heaps hold (rows pushed out again pile up)."""
        live = np.arange(self.n) < self.size[:, None]  # (span, n): the slots in use
        positions = self.positions.reshape(-1, self.n)
        held = positions[live]
        self.log = [{name: v[held] for name, v in self._joined_log().items()}]
        positions[live] = np.arange(len(held))
        self.logged = len(held)

    def columns(self) -> dict:
        """The held rows' columns, by group, then (key, ordinal)."""
        if self._columns is None:
            order = table_order_numba(self.keys, self.ordinals, self.positions, self.size, self.n)
            self._columns = {name: v[order] for name, v in self._joined_log().items()}
        return self._columns
