"""LowestPerGroup: per group, the rows of lowest hash, kept on the device.

A pass that draws the next taxonomy level's hash sample (``sampling.py``) keeps, per cluster, the
rows of lowest hash(seed, id). On the host, :class:`~mega_taxonomy.partials.best_per_group.BestPerGroup`
collects every block's rows and selects among them; on a GPU that means copying each block's labels
out and selecting on the driver thread. Here the selection is ``FarthestPerGroup``'s fixed-size
table, ``n`` slots per group, that stays where it was computed: a block's rows are ranked within
their group by sorts, tables merge by sorts a few blocks at a time, and nothing is read back until
the pass is over. Same rows in the same order as ``BestPerGroup(n, ..., key="hash")``: lowest hash
first, equal hashes by ordinal; rows without a cluster (label -1) in group -1, first.

Measured on an H100 (4M x 1024 float16 pinned rows, 256 clusters, 4,096 rows kept per cluster): the
pass ran at 0.40 of the copy rate with the host's selection, 0.43 with this one, 0.96 without a
sample. What else binds it is not found yet (docs/benchmarks.md, ``taxonomy_gpu``, pinned).

Tables are (groups + 1) x n dense: the draw takes this path where that is at most
``MAX_SLOTS`` (a partial of 64 MiB), else the host's.
"""

from __future__ import annotations

import numpy as np
import torch

from .best_per_group import BestPerGroup
from .groups import group_tables, lowest_in_rows

SIGN = -(2**63)  # hash ^ SIGN: int64 whose signed order is the hashes' unsigned order
_EMPTY = torch.iinfo(torch.int64).max  # the key and ordinal of a slot no row holds: after every row
MAX_SLOTS = 1 << 22


class LowestPerGroup:
    """(groups + 1, width) tables of candidate rows' key (hash ^ SIGN) and ordinal; of each
    group's candidates the ``n`` of lowest (key, ordinal) are the selection. The last table row
    is group -1's. ``a + b`` holds the candidates of both, side by side; they are selected down
    to ``n`` per group once there are ``MERGE_WIDTH`` times as many, and when the columns are
    read. It reads like ``BestPerGroup`` (columns "hash", "ordinal", "group"), adds to one, and
    crosses processes as one."""

    MERGE_WIDTH = 4

    def __init__(self, key: torch.Tensor, ordinal: torch.Tensor, n: int | None = None):
        self.key, self.ordinal = key, ordinal
        self.n = key.shape[1] if n is None else n
        self._columns = None

    @staticmethod
    def fits(n_groups: int, n: int) -> bool:
        return (n_groups + 1) * n <= MAX_SLOTS

    @classmethod
    def of_block(cls, hashes: torch.Tensor, ordinals: torch.Tensor, groups: torch.Tensor, n_groups: int,
                 n: int) -> LowestPerGroup:
        """The ``n`` rows of lowest hash per group among a block's: ``hashes`` the int64 bits of
        uint64 hashes, ``groups`` in [0, n_groups) or -1. ``ordinals`` must ascend with position,
        as a block's do (the stable sorts then break ties by ordinal)."""
        key = hashes ^ SIGN
        order = torch.sort(key, stable=True).indices
        g, by_group = torch.sort(torch.where(groups >= 0, groups, n_groups)[order], stable=True)
        order = order[by_group]
        table = group_tables(order, g, n_groups + 1, n)  # group -1's rows in the last table row
        return cls(table(key, _EMPTY), table(ordinals, _EMPTY), n)

    def __add__(self, other):
        if not isinstance(other, LowestPerGroup):
            return self._as_parts() + other
        both = LowestPerGroup(torch.cat([self.key, other.key], 1), torch.cat([self.ordinal, other.ordinal], 1), self.n)
        return both.selected() if both.key.shape[1] >= self.MERGE_WIDTH * self.n else both

    def selected(self) -> LowestPerGroup:
        """The tables cut to the ``n`` lowest candidates of each group, in order."""
        order = lowest_in_rows(self.key, self.ordinal, self.n)
        return LowestPerGroup(torch.gather(self.key, 1, order), torch.gather(self.ordinal, 1, order), self.n)

    def columns(self) -> dict:
        """The selected rows' columns, ordered by group (-1 first), then hash and ordinal."""
        if self._columns is None:
            table = self.selected() if self.key.shape[1] > self.n else self
            ordinal = table.ordinal.cpu().reshape(-1).numpy()
            n_groups = table.ordinal.shape[0] - 1
            held = ordinal != _EMPTY
            groups = np.repeat(np.arange(n_groups + 1), table.n)[held]
            groups[groups == n_groups] = -1
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
