"""Selection of the ``n`` smallest keys of every group: the op under every mergeable "best n per
group" partial (``partials/``: lowest hashes, nearest members, farthest rows with negated
distances).

``smallest_per_group`` is the dispatcher: one pass of per-group bounded heaps, or a selection,
compiled on the CPU (numba, ``select/numba.py``), not a sort of every row. The table kernels
(``push_rows_numba``, ``table_order_numba``: heaps kept across blocks) and ``before_cut_numba``
(rows that can still be selected) have the numba backend only: they serve the host half of the
selections; the device half (``partials.farthest``) is made of torch sorts.
"""

from __future__ import annotations

import numpy as np

from .numba import SELECT_FROM, before_cut_numba, push_rows_numba, smallest_per_group_numba, table_order_numba

__all__ = ["SELECT_FROM", "before_cut_numba", "push_rows_numba", "smallest_per_group", "table_order_numba"]


def smallest_per_group(keys: np.ndarray, ordinals: np.ndarray, n: int,
                       groups: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``n`` smallest keys of every group (equal keys by ordinal), ordered by
    group, then key: the selection of every mergeable "best n per group" partial (lowest
    hashes, nearest members, farthest rows with negated distances). One pass of per-group
    bounded heaps (``select/numba.py``), not a sort of every row."""
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
