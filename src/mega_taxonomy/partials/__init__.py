"""Mergeable selections: partials of a pass that add up (``a + b`` is the selection of the union,
in any order and grouping), so that a pass's blocks, shards and workers reduce to the same rows.

- ``best_per_group.py``: ``BestPerGroup``, per group the ``n`` rows of smallest key (lowest
  hashes, nearest members, farthest rows): the host half, on ``ops.select``'s numba kernels.
- ``farthest.py``: ``FarthestPerGroup``, per group the rows farthest from their centroid, kept on
  the device: the GPU half of the same selection (the same rows in the same order).
- ``lowest.py``: ``LowestPerGroup``, per group the rows of lowest hash, kept on the device: the
  GPU half of a hash sample's selection.
- ``sampling.py``: samples drawn by the lowest hash(seed, id), with the data's moments.
- ``groups.py``: CSR group offsets, the group of every centroid, ranks within groups.

Above ``ops/`` and ``runtime/`` (a partial is a ``runtime.Partial``), below the algorithms
(``cluster/``, ``taxonomy/``), which use these as they are.
"""

from .best_per_group import BestPerGroup
from .farthest import FarthestPerGroup
from .groups import group_of_centroid, offsets_of, rank_in_group
from .lowest import LowestPerGroup
from .sampling import SamplePartial, SampleTask, block_sample, device_block_sample, hash_sample

__all__ = ["BestPerGroup", "FarthestPerGroup", "LowestPerGroup", "SamplePartial", "SampleTask", "block_sample",
           "device_block_sample", "group_of_centroid", "hash_sample", "offsets_of", "rank_in_group"]
