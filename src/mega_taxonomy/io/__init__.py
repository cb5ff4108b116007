"""Data in: vectors from parquet, npy, fvecs/bvecs files (any fsspec URI) or arrays, as fixed blocks.

The one thing passes over data depend on is :class:`VectorSource`; see its docstring.
"""

from mega_taxonomy.io.sources import BLOCK_ROWS, Block, Shard, VectorSource, is_source_like

__all__ = ["BLOCK_ROWS", "Block", "Shard", "VectorSource", "is_source_like"]
