"""LowestPerGroup: per group, the rows of lowest hash, kept on the device.

A pass that draws the next taxonomy level's hash sample (``sampling.py``) keeps, per cluster, the
rows of lowest hash(seed, id). On the host, :class:`~mega_taxonomy.partials.best_per_group.BestPerGroup`
collects every block's rows and selects among them; on a GPU that means copying each block's labels
out and selecting on the driver thread. Here the selection is a fixed-size table, ``n`` slots per
group, that stays where it was computed, and nothing is read back until the pass is over. A
block's rows wait unsorted beside it; once they are as many as the table's slots, they and the
table's rows are sorted together once, by (group, key, ordinal), and each group's first ``n`` make
the new table. Same rows in the same order as ``BestPerGroup(n, ..., key="hash")``: lowest hash
first, equal hashes by ordinal; rows without a cluster (label -1) in group -1, first.

Measured on an H100 (10M x 1024 float16 pinned rows, 256 clusters, 4,096 rows kept per cluster,
``taxonomy_gpu_pinned.json``): with blocks ranked by two sorts each and tables merged every few
blocks (``FarthestPerGroup``'s way), the pass that drew the sample ran at 0.65 of the copy rate,
where the level's passes without a draw ran at 0.95: its tables of 1M slots were copied whole at
every add and sorted every three blocks. With rows waiting unsorted, sorted once a table's worth:
0.99 (a652027).

Tables are (groups + 1) x n dense: the draw takes this path where that is at most
``MAX_SLOTS`` (a table of 64 MiB, and at most as many rows pending), else the host's.
"""

from __future__ import annotations

import numpy as np
import torch

from .best_per_group import BestPerGroup
from .groups import group_tables

SIGN = -(2**63)  # hash ^ SIGN: int64 whose signed order is the hashes' unsigned order
_EMPTY = torch.iinfo(torch.int64).max  # the key and ordinal of a slot no row holds: after every row
MAX_SLOTS = 1 << 22


class LowestPerGroup:
    """Per group, the ``n`` rows of lowest (key, ordinal) among those added, key = hash ^ SIGN:
    a table of those selected so far (``key``, ``ordinal``: (groups + 1, n), the last row group
    -1's; None before the first selection) and the rows added since (``pending``: flat (key,
    ordinal, group) chunks, group -1 as ``groups``). ``a + b`` holds the table and pending rows
    of both; the pending rows are selected with the table in one sort once they are as many as
    its slots, and when the columns are read. It reads like ``BestPerGroup`` (columns "hash",
    "ordinal", "group"), adds to one, and crosses processes as one."""

    MIN_MERGE_ROWS = 1 << 20  # a small table still takes rows a million at a time: fewer sorts

    def __init__(self, n_groups: int, n: int, key=None, ordinal=None, pending=()):
        self.n_groups, self.n = n_groups, n
        self.key, self.ordinal = key, ordinal
        self.pending = tuple(pending)
        self._columns = None

    @staticmethod
    def fits(n_groups: int, n: int) -> bool:
        return (n_groups + 1) * n <= MAX_SLOTS

    @classmethod
    def of_block(cls, hashes: torch.Tensor, ordinals: torch.Tensor, groups: torch.Tensor, n_groups: int,
                 n: int, keep: torch.Tensor | None = None) -> LowestPerGroup:
        """A block's rows as candidates: ``hashes`` the int64 bits of uint64 hashes, ``groups`` in
        [0, n_groups) or -1; ``keep``: where False, the row is no candidate. Nothing is sorted
        until enough blocks have been added."""
        groups = torch.where(groups >= 0, groups, n_groups)
        if keep is not None:  # a group past group -1's row: dropped when selected
            groups = torch.where(keep, groups, n_groups + 1)
        return cls(n_groups, n, pending=[(hashes ^ SIGN, ordinals, groups)])

    def __add__(self, other):
        if not isinstance(other, LowestPerGroup):
            return self._as_parts() + other
        tables = [t for t in (self, other) if t.key is not None]
        pending = self.pending + other.pending
        if len(tables) == 2:  # the other table's rows are candidates like any
            pending += (tables[1]._flat(),)
        key, ordinal = (tables[0].key, tables[0].ordinal) if tables else (None, None)
        both = LowestPerGroup(self.n_groups, self.n, key, ordinal, pending)
        return both.selected() if both._pending_rows() >= max(self._slots(), self.MIN_MERGE_ROWS) else both

    def selected(self) -> LowestPerGroup:
        """The table of the ``n`` lowest rows of each group among all held, none pending."""
        if not self.pending:
            return self
        parts = list(self.pending) + ([self._flat()] if self.key is not None else [])
        key, ordinal, group = (torch.cat(columns) for columns in zip(*parts))
        # (group, key, ordinal) ascending: by ordinal, then stably by key, then by group
        order = torch.sort(ordinal).indices
        order = order[torch.sort(key[order], stable=True).indices]
        g, by_group = torch.sort(group[order], stable=True)
        table = group_tables(order[by_group], g, self.n_groups + 1, self.n)
        return LowestPerGroup(self.n_groups, self.n, table(key, _EMPTY), table(ordinal, _EMPTY))

    def _flat(self):
        """The table's slots as candidates (key, ordinal, group); empty slots sort after every row."""
        width = self.key.shape[1]
        group = torch.arange(self.n_groups + 1, device=self.key.device).repeat_interleave(width)
        return self.key.reshape(-1), self.ordinal.reshape(-1), group

    def _slots(self) -> int:
        return (self.n_groups + 1) * self.n

    def _pending_rows(self) -> int:
        return sum(len(k) for k, _, _ in self.pending)

    def columns(self) -> dict:
        """The selected rows' columns, ordered by group (-1 first), then hash and ordinal."""
        if self._columns is None:
            table = self.selected()
            if table.key is None:  # nothing was added
                table = LowestPerGroup(self.n_groups, self.n, torch.full((self.n_groups + 1, self.n), _EMPTY),
                                       torch.full((self.n_groups + 1, self.n), _EMPTY))
            ordinal = table.ordinal.cpu().reshape(-1).numpy()
            held = ordinal != _EMPTY
            groups = np.repeat(np.arange(self.n_groups + 1), self.n)[held]
            groups[groups == self.n_groups] = -1
            order = np.argsort(groups, kind="stable")  # group -1's rows, last in the table, first
            columns = {"hash": (table.key.cpu() ^ SIGN).reshape(-1).numpy().view(np.uint64)[held],
                       "ordinal": ordinal[held], "group": groups}
            self._columns = {name: v[order] for name, v in columns.items()}
        return self._columns

    def __getitem__(self, column: str) -> np.ndarray:
        return self.columns()[column]

    def __len__(self):
        return len(self.columns()["ordinal"])

    def _as_parts(self) -> BestPerGroup:
        """The same selection on the host (what ``BestPerGroup.__add__`` takes of its operand)."""
        return _on_host(self.n, self.columns())

    def __reduce__(self):  # crosses processes as the host selection
        return _on_host, (self.n, self.columns())


def _on_host(n: int, columns: dict) -> BestPerGroup:
    return BestPerGroup(n, dict(columns), key="hash", selected=True)
