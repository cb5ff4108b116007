"""Groups of rows and of centroids: CSR offsets, the group of every centroid, ranks in a group,
and the per-group tables of the device selections.

A taxonomy level keeps the children of all its parents side by side: the children of group
``g`` are ``offsets[g]:offsets[g + 1]`` (CSR). The selections of this layer, the passes of
``cluster/`` and the walks of ``taxonomy/`` share these few conversions.
"""

from __future__ import annotations

import numpy as np
import torch


def offsets_of(n_children: np.ndarray) -> np.ndarray:
    """CSR offsets (int64, ``len(n_children) + 1``) of groups of ``n_children`` each."""
    return np.concatenate([[0], np.cumsum(n_children)]).astype(np.int64)


def group_of_centroid(offsets: np.ndarray | None, k: int) -> np.ndarray:
    """The group of each of ``k`` centroids laid out by ``offsets`` (all 0 without offsets: one group)."""
    if offsets is None:
        return np.zeros(k, dtype=np.int64)
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def rank_in_group(sorted_groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an already sorted array."""
    n = len(sorted_groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    return np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))


def group_tables(order, sorted_groups, n_rows: int, n: int):
    """For rows ``order`` sorted by group (``sorted_groups``, each in [0, n_rows] where n_rows is
    past the last), a function ``table(values, fill)`` that puts each group's first ``n`` rows into
    row g of an (n_rows, n) tensor, in order, slots no row holds at ``fill``: the device
    selections' tables (``farthest.py``, ``lowest.py``). Rows past a group's n-th, or of group
    n_rows, all go to one spare slot, dropped: no sync to count them."""
    import torch

    rank = torch.arange(len(order), device=sorted_groups.device) - torch.searchsorted(sorted_groups, sorted_groups)
    slot = torch.where((rank < n) & (sorted_groups < n_rows), sorted_groups * n + rank, n_rows * n)

    def table(values, fill):
        out = torch.full((n_rows * n + 1,), fill, dtype=values.dtype, device=values.device)
        out[slot] = values[order]
        return out[:-1].view(n_rows, n)

    return table


def lowest_in_rows(key, ordinal, n: int):
    """Per row of (rows, width) tables, the positions of its ``n`` lowest (key, ordinal), in
    order: by ordinal, then stably by key, the tie rule whatever the order of the columns."""
    order = torch.sort(ordinal, dim=1).indices
    by_key = torch.sort(torch.gather(key, 1, order), dim=1, stable=True).indices[:, :n]
    return torch.gather(order, 1, by_key)
