"""Data in: vectors from parquet, npy, fvecs/bvecs files (any fsspec URI) or arrays, as fixed blocks.

The one thing passes over data depend on is :class:`VectorSource`; see its docstring. Its jobs
have a module each: ``discovery`` (which files, in which order), ``reader``, ``parquet`` and
``formats`` (decoding: the interface, parquet files, npy / fvecs files and arrays),
``validate`` (judging rows), ``shards`` (global ordinals, shards and blocks), ``cache`` (decoded
blocks kept between passes), ``readahead`` (decoding ahead of the caller), ``sources`` (the
source that wires them).

Every copy between host and device memory is here too, one module a job: ``streaming`` (blocks
onto a device, ahead of their use, the copies overlapping compute), ``device`` (small arrays to a
device without a stall, device results back to the host, a block's vectors as a tensor), and
``transfer`` (the device tensors inside partials and states that cross processes: to the host,
or apart for a device-to-device collective).
"""

from mega_taxonomy.io.shards import BLOCK_ROWS, Block, Shard
from mega_taxonomy.io.sources import VectorSource, is_source_like

__all__ = ["BLOCK_ROWS", "Block", "Shard", "VectorSource", "is_source_like"]
