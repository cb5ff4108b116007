"""State out: atomic, checksummed files under a local path or fsspec URI, owned by :class:`Store`."""

from mega_taxonomy.storage import retry
from mega_taxonomy.storage.store import FORMAT_VERSION, Store

__all__ = ["FORMAT_VERSION", "Store", "retry"]
