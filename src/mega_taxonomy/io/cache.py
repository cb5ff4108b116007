"""Decoded blocks kept in RAM within a byte budget, so that repeated passes do not decode again.

Why a cache that never evicts: a fit makes tens of passes and decoding parquet costs far more
than the arithmetic, so decoded blocks are kept in RAM within a budget. Passes scan blocks in
order, and an LRU cache smaller than the data would evict every block just before it is needed
again; keeping the first blocks that fit and re-reading the rest gives hits on every pass.
Random access (``VectorSource.take``) reads the rows of cached blocks from here too.
"""

import os
import threading

import numpy as np

from mega_taxonomy.io.shards import BLOCK_ROWS


def default_cache_bytes():
    """The budget when none is given: a quarter of the RAM, 8 GiB at most."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume a small machine
        ram = 8 << 30
    return min(ram // 4, 8 << 30)


class BlockCache:
    """Decoded blocks within a byte budget: the first blocks that fit stay, none is ever evicted;
    past the budget, on ``disk`` (a ``disk_cache.DiskCache``) where there is one.

    Blocks of in-memory data are views of it: caching them costs only their ordinals, and saves
    validating the same rows again on every pass.
    """

    def __init__(self, budget, views=False, disk=None):
        self.budget, self.used, self.views, self.disk = budget, 0, views, disk
        self._blocks = {}
        self._lock = threading.Lock()

    def get(self, index):
        block = self._blocks.get(index)
        if block is None and self.disk is not None:
            block = self.disk.get(index)
            if block is not None:
                self._keep(block)  # (a block another process wrote, while RAM has room)
        return block

    def put(self, block):
        """Keep ``block`` in RAM if it fits, else on the disk tier if there is one and it fits."""
        if not self._keep(block) and self.disk is not None:
            self.disk.put(block)

    def _keep(self, block) -> bool:
        size = (0 if self.views else block.vectors.nbytes) + block.ordinals.nbytes
        size += block.ids.nbytes if block.ids is not block.ordinals else 0
        with self._lock:
            if block.index in self._blocks:
                return True
            if self.used + size <= self.budget:
                self._blocks[block.index] = block
                self.used += size
                return True
            return False

    def take(self, ordinals, keep, dim, dtype):
        """(out, positions left to read): the rows at ``ordinals`` that cached blocks hold, copied
        into ``out`` of shape (len(ordinals), dim); rows a cached block lacks were skipped as
        invalid, and are marked False in ``keep``."""
        out = np.empty((len(ordinals), dim), dtype)
        blocks = ordinals // BLOCK_ROWS
        from_cache = np.zeros(len(ordinals), bool)
        for b in np.unique(blocks).tolist():
            block = self.get(b)
            if block is None:
                continue
            where = np.flatnonzero(blocks == b)
            at = np.minimum(np.searchsorted(block.ordinals, ordinals[where]), max(len(block.ordinals) - 1, 0))
            found = block.ordinals[at] == ordinals[where] if len(block.ordinals) else np.zeros(len(where), bool)
            out[where[found]] = block.vectors[at[found]]
            keep[where[~found]] = False
            from_cache[where] = True
        return out, np.flatnonzero(~from_cache)
