"""FarthestPerGroup: per group, the rows farthest from their centroid, kept on the device.

An empty cluster takes the row farthest from its centroid within its group (``cluster.relocate.new_centroids``).
On the host, :class:`~mega_taxonomy.partials.best_per_group.BestPerGroup` collects candidate rows and
selects among them; on a GPU that means copying every block's candidates out, with a sync or more
per block, which made the grouped passes that look for those rows the slowest of a taxonomy fit
(twice a plain pass). Here the selection is a fixed-size table, ``n`` slots per group, that stays
where it was computed: a block's rows are ranked within their group by sorts, tables merge by
sorts of each group's candidates a few blocks at a time, and nothing is read back until the
update reads the columns. Same rows in the same order as ``BestPerGroup(n, ..., key="distance", largest=True)``:
largest distance first, equal distances by ordinal.
"""

from __future__ import annotations

import numpy as np
import torch

from .groups import group_tables, lowest_in_rows

_EMPTY = float("-inf")  # the distance of a slot no row holds: sorts after every row
# One group of more rows than this many times the selection: a top-k before the sorts. A block
# (65,536 rows, 1,024 kept) is sorted whole; a whole pass's millions of rows are not.
_TOPK_FIRST = 64


class FarthestPerGroup:
    """(groups, width) tables of candidate rows' distance, ordinal and label; of each group's
    candidates the ``n`` farthest are the selection (largest distance first, equal distances by
    ordinal). Slots no row holds have distance ``-inf``.

    ``a + b`` holds the candidates of both, side by side; they are selected down to ``n`` per
    group once there are ``MERGE_WIDTH`` times as many, and when the columns are read, so that a
    pass's blocks are sorted together a few at a time. The tables may be tensors on any device or
    numpy arrays (what ``io.transfer.to_host`` makes of them).
    """

    MERGE_WIDTH = 4

    def __init__(self, distance, ordinal, label, n: int | None = None):
        self.distance, self.ordinal, self.label = distance, ordinal, label
        self.n = distance.shape[1] if n is None else n
        self._columns = None

    @classmethod
    def of_block(cls, distances: torch.Tensor, labels: torch.Tensor, ordinals: torch.Tensor,
                 groups: torch.Tensor, n_groups: int, n: int) -> FarthestPerGroup:
        """The ``n`` farthest rows per group among a block's (rows labelled -1 have no cluster
        and are left out). ``ordinals`` must ascend with position, as a block's do."""
        if n_groups == 1 and len(distances) > _TOPK_FIRST * n:
            # Many rows in one group (a whole pass): those at or past the n-th largest distance
            # first (a top-k and one sync), so that a few thousand rows are sorted rather than
            # millions; rows tied with the n-th all stay, so the tie rule by ordinal holds.
            d = torch.where(labels >= 0, distances, _EMPTY)
            keep = torch.nonzero(d >= d.topk(n, sorted=False).values.min()).squeeze(1)
            distances, labels, ordinals, groups = (t[keep] for t in (distances, labels, ordinals, groups))
        valid = labels >= 0
        d = torch.where(valid, distances.double(), _EMPTY)
        if distances.dtype == torch.float32:
            # One stable sort, on (group, distance descending) packed in an int64: a float32's
            # bits, the negative ones' low 31 flipped, order as its values (-0.0 is made 0.0: they
            # tie). Rows without a cluster form a group past the last. Two sorts a block (by
            # distance, then group) cost 0.2 ms of host time each on an H200's host, in every
            # pass that gathers these rows.
            bits = torch.where(distances == 0, 0.0, distances).view(torch.int32).to(torch.int64)
            ascending = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)  # in [0, 2**32)
            g = torch.where(valid, groups, n_groups)
            order = torch.sort((g << 32) | ((1 << 32) - 1 - ascending), stable=True).indices
            g = g[order]
        else:
            order = torch.sort(-d, stable=True).indices  # equal distances keep the ordinals' order
            g, by_group = torch.sort(torch.where(valid, groups, n_groups)[order], stable=True)
            order = order[by_group]
        table = group_tables(order, g, n_groups, n)  # rows without a cluster (group n_groups) dropped
        return cls(table(d, _EMPTY), table(ordinals, -1), table(labels, -1))

    def __add__(self, other: FarthestPerGroup) -> FarthestPerGroup:
        both = FarthestPerGroup(*(torch.cat([torch.as_tensor(a), torch.as_tensor(b)], 1)
                                  for a, b in ((self.distance, other.distance), (self.ordinal, other.ordinal),
                                               (self.label, other.label))), n=self.n)
        return both.selected() if both.distance.shape[1] >= self.MERGE_WIDTH * self.n else both

    def selected(self) -> FarthestPerGroup:
        """The tables cut to the ``n`` farthest candidates of each group, in order."""
        distance, ordinal, label = (torch.as_tensor(t) for t in (self.distance, self.ordinal, self.label))
        # Largest distance first, equal ones by ordinal. Empty slots end last; their order does
        # not matter, they are never read.
        order = lowest_in_rows(-distance, ordinal, self.n)
        return FarthestPerGroup(*(torch.gather(t, 1, order) for t in (distance, ordinal, label)))

    def __getitem__(self, column: str) -> np.ndarray:
        """A column ("distance", "ordinal", "label", "group") of the selected rows, ordered by
        group, then largest distance."""
        if self._columns is None:
            table = self.selected() if self.distance.shape[1] > self.n else self
            distance = torch.as_tensor(table.distance).cpu()
            n_groups, n = distance.shape
            held = (distance > _EMPTY).reshape(-1).numpy()
            self._columns = {"distance": distance.reshape(-1).numpy()[held],
                             "ordinal": torch.as_tensor(table.ordinal).cpu().reshape(-1).numpy()[held],
                             "label": torch.as_tensor(table.label).cpu().reshape(-1).numpy()[held],
                             "group": np.repeat(np.arange(n_groups), n)[held]}
        return self._columns[column]

    def __getstate__(self):
        return {**self.__dict__, "_columns": None}
