"""State out: atomic, checksummed files under a local path or fsspec URI, owned by :class:`Store`;
the checkpoints of resumable fits (:class:`Checkpoints`); every file name in ``schema.py``."""

from mega_taxonomy.storage import retry
from mega_taxonomy.storage.checkpoint import Checkpoints, ResumePoint
from mega_taxonomy.storage.store import FORMAT_VERSION, Store

__all__ = ["FORMAT_VERSION", "Checkpoints", "ResumePoint", "Store", "retry"]
