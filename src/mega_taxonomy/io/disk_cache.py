"""Decoded blocks kept on a local disk within a byte budget: the second tier of ``BlockCache``.

Why: past the RAM budget, every pass decodes its blocks again from their files, and at scale
those files are remote (object storage, a DFS): a fit of tens of passes reads the data as many
times over the network and decodes it as many times. A worker's local disk (NVMe) holds much
more than its RAM: after the first read, a block goes there as raw arrays (``.npy``) and later
passes map it back, with no network and no decoding. As in RAM, the first blocks that fit stay
and none is evicted (a scan in block order would evict each block just before it is needed).

A block is three files, ``<index>.ordinals.npy``, ``<index>.ids.npy`` and ``<index>.vectors.npy``,
written to temporary names and renamed, the vectors last: a block is there once its vectors
are, whole, so processes sharing the folder (the workers of one node) never read half a block,
and a block written by one is read by the others. Rows a pass skipped as invalid are absent from
the block as they were from the decoded one. The folder holds one source's blocks: the caller
names it by what identifies the source (``VectorSource``: its files, rows, dim, dtype and column).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid

import numpy as np

from mega_taxonomy.io.shards import Block

PARTS = ("ordinals", "ids", "vectors")  # written in this order: the vectors file marks a whole block


def source_folder(root, identity) -> str:
    """The folder under ``root`` of the source that ``identity`` (JSON-able) describes."""
    return os.path.join(os.fspath(root), hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16])


def default_disk_bytes(folder) -> int:
    """The budget when none is given: half the free space of the folder's disk when it is opened."""
    os.makedirs(folder, exist_ok=True)
    return shutil.disk_usage(folder).free // 2


class DiskCache:
    """Blocks as ``.npy`` files under ``folder``, up to ``budget`` bytes (with those already there).

    Parameters
    ----------
    folder : str or path-like
        A local folder for one source's blocks (made if missing).
    budget : int, optional
        Bytes of blocks kept at most; None: :func:`default_disk_bytes`.
    """

    def __init__(self, folder, budget=None):
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.budget = default_disk_bytes(self.folder) if budget is None else budget
        self._lock = threading.Lock()
        self.used = sum(entry.stat().st_size for entry in os.scandir(self.folder)
                        if entry.name.endswith(".npy") and not entry.name.startswith("."))

    def _path(self, index: int, part: str) -> str:
        return os.path.join(self.folder, f"{index:08d}.{part}.npy")

    def get(self, index: int) -> Block | None:
        """Block ``index`` (its vectors memory-mapped, read-only), or None when it is not here."""
        if not os.path.exists(self._path(index, "vectors")):
            return None
        ordinals, ids, vectors = (np.load(self._path(index, part), mmap_mode="r" if part == "vectors" else None)
                                  for part in PARTS)
        return Block(index, ordinals, ordinals if np.array_equal(ids, ordinals) else ids, vectors)

    def put(self, block: Block) -> bool:
        """Keep ``block`` if the budget allows (and it is not here yet); returns whether it is here."""
        arrays = (block.ordinals, block.ids, np.asarray(block.vectors))
        size = sum(a.nbytes + 128 for a in arrays)  # (128: a .npy header)
        with self._lock:
            if os.path.exists(self._path(block.index, "vectors")):
                return True
            if self.used + size > self.budget:
                return False
            self.used += size
        for part, array in zip(PARTS, arrays):
            tmp = os.path.join(self.folder, f".{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(tmp, self._path(block.index, part))
        return True
