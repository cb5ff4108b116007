"""VectorSource: files (or one in-memory array) seen as one sequence of rows, read in fixed blocks.

Why blocks: every pass over data computes partial sums per block of BLOCK_ROWS global ordinals
and reduces them in block order, so results do not depend on how the data is cut into files,
row groups, batches or workers (DESIGN.md, Contracts: Determinism). This module wires the jobs
together: ``discovery.py`` finds and opens the files, ``formats.py`` decodes each format,
``validate.py`` judges every row, ``shards.py`` maps files to global ordinals, shards and
blocks, ``cache.py`` keeps decoded blocks between passes and ``readahead.py`` decodes the next
row groups while the caller computes. What stays here is the source itself: its metadata, the
stream of blocks (from the cache, else from the files), random access by ordinal, and the count
of rows skipped as invalid.
"""

import collections
import contextlib
import functools
import logging
import os
import threading

import numpy as np
import torch

from mega_taxonomy.errors import ConfigError, DataError
from mega_taxonomy.io import validate
from mega_taxonomy.io.cache import BlockCache, default_cache_bytes
from mega_taxonomy.io.discovery import find_files, open_readers
from mega_taxonomy.io.disk_cache import DiskCache, source_folder
from mega_taxonomy.io.formats import ArrayReader
from mega_taxonomy.io.readahead import put_unless, read_ahead
from mega_taxonomy.io.shards import (
    BLOCK_ROWS,
    SHARD_ROWS,
    TORCH_DTYPES,
    Block,
    Shard,
    cut_blocks,
    join_rows,
    read_parts,
    select_rows,
    shard_cuts,
)

# Re-exported: defined here before the split, and imported from here by callers.
__all__ = ["BLOCK_ROWS", "SHARD_ROWS", "Block", "Shard", "VectorSource", "is_source_like", "put_unless"]

logger = logging.getLogger(__name__)


def is_source_like(data) -> bool:
    """Paths, URIs (or lists of them) and sources stream; everything else is an in-memory array."""
    if isinstance(data, (VectorSource, str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and len(data) > 0 and all(isinstance(x, (str, os.PathLike)) for x in data)


def _rebuild(data, options):
    return VectorSource(data, **options)


class VectorSource:
    """Vectors from files or memory, read as a stream of fixed blocks of global row ordinals.

    Parameters
    ----------
    data : str, path, list of them, ndarray of shape (n, dim) or torch.Tensor of shape (n, dim)
        A path, glob, directory or fsspec URI (``s3://``, ``memory://``...), or a list of them, of
        ``.parquet``, ``.npy``, ``.fvecs`` and ``.bvecs`` files (a directory: all such files
        under it, recursively, skipping names starting with "." or "_"). The global ordinal of
        a row is its position in the concatenation of the files in sorted URI order. Or an
        array: float16/32/64 (integers are served as float32), never copied; or a tensor on
        any device, served as tensor slices on that device (bfloat16 tensors too).
    column : str, default=None
        Parquet vector column (list, large_list or fixed_size_list of numbers). None: the only
        float-list column of the first parquet file.
    id_column : str, default=None
        Parquet integer column of row ids (a null id always raises). None: the ids are the
        global ordinals.
    batch_size : int, default=65_536
        Rows decoded at a time; memory is O(batch_size * dim + BLOCK_ROWS * dim).
    on_invalid : {"raise", "skip"}, default="raise"
        What a bad row (NaN/Inf, null vector or value, wrong number of values) does: raise
        DataError naming its file, row and column, or be left out of its block and counted in
        ``skipped`` (with a logged warning at the end of the pass that met it).
    dim : int, default=None
        Expected dimension; None: that of the first non-empty file.
    storage_options : dict, default=None
        Passed to fsspec (credentials: never logged, never in the repr).
    cache_bytes : int, default=None
        RAM budget for decoded blocks of files, so that repeated passes do not decode again;
        blocks past it are re-read. None: min(25% of RAM, 8 GiB). Arrays are never cached.
    disk_cache : str or path-like, default=None
        A local folder for decoded blocks past the RAM budget (``io/disk_cache.py``): after the
        first read, later passes map them from there instead of reading and decoding their files
        again (remote files above all). Blocks of this source go to a subfolder named by its
        files, rows, dim, dtype and column; a folder can be shared by the processes of a node.
        A file rewritten in place with as many rows is not noticed: clear the folder then.
    disk_cache_bytes : int, default=None
        The disk tier's budget; None: half the folder's free space.

    Attributes
    ----------
    dim : int
    dtype : numpy.dtype or torch.dtype
        float16, float32 or float64 (the widest among the files); ``torch.bfloat16`` for a
        bfloat16 tensor, which numpy cannot name.
    uris : list of str
        The files, in ordinal order ("<array>" for an array).
    shards : list of Shard
        The files; files over about a million rows are split at row-group boundaries.
    n_blocks : int
        ceil(len / BLOCK_ROWS).
    skipped : dict of str to int
        Rows skipped as invalid so far, per file (each row counted once).

    Raises
    ------
    DataError
        Unreadable, empty, corrupt or ill-typed input, naming the file, row and column.

    Notes
    -----
    Construction reads metadata only (parquet footers, npy/fvecs headers, and the first rows
    of a list<float> file to learn its dimension); rows are decoded and validated by
    :meth:`blocks` and :meth:`take`.

    Examples
    --------
    >>> import fsspec, pyarrow as pa, pyarrow.parquet as pq
    >>> table = pa.table({"id": [7, 8, 9], "emb": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]})
    >>> with fsspec.open("memory://docs/part-0.parquet", "wb") as f:
    ...     pq.write_table(table, f)
    >>> source = VectorSource("memory://docs/*.parquet", id_column="id")
    >>> source
    VectorSource('memory://docs/*.parquet', files=1, rows=3, dim=2, dtype=float64)
    >>> block = next(source.blocks())
    >>> block.ordinals, block.ids
    (array([0, 1, 2]), array([7, 8, 9]))
    >>> source.take([2, 0])
    array([[4., 5.],
           [0., 1.]])
    >>> VectorSource(np.ones((5, 3), np.float32)).n_blocks
    1
    """

    def __init__(
        self,
        data,
        *,
        column=None,
        id_column=None,
        batch_size=65_536,
        on_invalid="raise",
        dim=None,
        storage_options=None,
        cache_bytes=None,
        disk_cache=None,
        disk_cache_bytes=None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, not {batch_size!r}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ConfigError(f"dim must be a positive int or None, not {dim!r}")
        self.on_invalid = validate.check_on_invalid(on_invalid)
        self.batch_size = batch_size
        self._options = dict(
            column=column,
            id_column=id_column,
            batch_size=batch_size,
            on_invalid=on_invalid,
            dim=dim,
            storage_options=storage_options,
            cache_bytes=cache_bytes,
            disk_cache=disk_cache,
            disk_cache_bytes=disk_cache_bytes,
        )
        self._in_memory = isinstance(data, (np.ndarray, torch.Tensor))
        self._array = data if self._in_memory else None  # the in-memory array or tensor itself
        if self._in_memory:
            if id_column is not None:
                raise DataError(f"an in-memory array has no id column {id_column!r}", file=ArrayReader.uri)
            self._readers = [ArrayReader(data)]
            self._origin = f"<{type(data).__name__} {tuple(data.shape)}>"
        else:
            self._readers = open_readers(find_files(data, dict(storage_options or {})), column, id_column)
            self._origin = repr(os.fspath(data)) if isinstance(data, (str, os.PathLike)) else repr(data)
        self._id_column = id_column
        self.uris = [reader.uri for reader in self._readers]
        slow = [reader.uri for reader in self._readers if reader.slow_encoding]
        if slow:
            logger.warning("%d of %d files store their float16 vectors dictionary-encoded (%s%s), which pyarrow "
                           "decodes about 6x slower than plain: write them with pyarrow.parquet.write_table(..., "
                           "use_dictionary=False)", len(slow), len(self.uris), slow[0],
                           f" and {len(slow) - 1} more" if len(slow) > 1 else "")
        self._starts = np.cumsum([0] + [reader.num_rows for reader in self._readers], dtype=np.int64)
        self._len = int(self._starts[-1])
        if not self._len:
            more = f" and {len(self.uris) - 3} more" if len(self.uris) > 3 else ""
            names = ", ".join(self.uris[:3]) + more
            raise DataError("the source has no rows", file=names)
        self.dim = validate.source_dimension(self._readers, dim)
        self.dtype = self._readers[0].dtype if self._in_memory else np.result_type(*(r.dtype for r in self._readers))
        self.shards = []
        for reader, start in zip(self._readers, self._starts.tolist()):
            if reader.num_rows:
                cuts = shard_cuts(reader.boundaries(), reader.num_rows)
                self.shards += [Shard(reader.uri, lo, hi, start + lo) for lo, hi in zip(cuts[:-1], cuts[1:])]
        self.n_blocks = -(-self._len // BLOCK_ROWS)
        budget = default_cache_bytes() if cache_bytes is None else cache_bytes
        disk = None
        if disk_cache is not None and not self._in_memory:
            identity = [self.uris, [int(r.num_rows) for r in self._readers], self.dim, str(self.dtype), column,
                        id_column, self.on_invalid]
            disk = DiskCache(source_folder(disk_cache, identity), disk_cache_bytes)
        self._cache = BlockCache(budget, views=self._in_memory, disk=disk)
        self._skipped = {}
        self._whole = None  # all rows as one block, once checked (whole_block)
        self._all_ordinals = None  # of in-memory rows (_ordinals)
        self._lock = threading.Lock()
        logger.debug("opened %r", self)

    @classmethod
    def of(cls, data, **kw):
        """``data`` itself if it is a VectorSource (``kw`` are then ignored), else ``cls(data, **kw)``."""
        return data if isinstance(data, VectorSource) else cls(data, **kw)

    @property
    def has_id_column(self) -> bool:
        """Whether ids come from a column of the files (else they are the row ordinals)."""
        return self._id_column is not None

    def __len__(self):
        return self._len

    def __repr__(self):
        return (
            f"VectorSource({self._origin}, files={len(self.uris)}, rows={self._len}, dim={self.dim}, "
            f"dtype={self.dtype})"
        )

    def __reduce__(self):
        # Pickled (e.g. to Ray workers) as the files and options; the cache and open maps stay behind.
        data = self._array if self._in_memory else self.uris
        return _rebuild, (data, self._options)

    @property
    def device(self) -> torch.device:
        """Where the blocks' vectors are: an in-memory tensor's device, else the host."""
        return self._array.device if isinstance(self._array, torch.Tensor) else torch.device("cpu")

    @property
    def skipped(self):
        with self._lock:
            return {uri: len(rows) for uri, rows in self._skipped.items() if rows}

    def _block_range(self, start, stop):
        stop = self.n_blocks if stop is None else min(stop, self.n_blocks)
        if not 0 <= start <= stop:
            raise IndexError(f"block range [{start}, {stop}) is not within [0, {self.n_blocks})")
        return start, stop

    def _check(self, reader, piece, skipped):
        """Validate a piece; the mask of rows to keep (None: all), counting skipped rows once each."""
        where = {"file": reader.uri, "column": reader.column}
        keep = validate.rows(piece, self.dim, on_invalid=self.on_invalid, **where)
        if keep is not None:
            bad = set(np.asarray(piece.rows)[~keep].tolist())
            with self._lock:
                seen = self._skipped.setdefault(reader.uri, set())
                new = len(bad - seen)
                seen |= bad
            if new:
                skipped[reader.uri] += new
        return keep

    def _warn(self, skipped):
        if skipped:
            per_file = ", ".join(f"{uri}: {count}" for uri, count in skipped.items())
            logger.warning("skipped %d invalid rows (%s)", sum(skipped.values()), per_file)

    def _parts(self, first, stop, skipped, ids_only=False):
        """Yield (covered stop, ordinals, ids[, vectors]) for the blocks [first, stop), in order."""
        lo, hi = first * BLOCK_ROWS, min(stop * BLOCK_ROWS, self._len)
        check = functools.partial(self._check, skipped=skipped)
        return read_parts(self._readers, self._starts, lo, hi, self.batch_size, self.dim, check, ids_only)

    def _empty(self):
        if isinstance(self._array, torch.Tensor):
            return torch.empty((0, self.dim), dtype=TORCH_DTYPES[self.dtype], device=self._array.device)
        return np.empty((0, self.dim), self.dtype)

    def _block(self, index, parts):
        if not parts:  # every row of the block was skipped
            ordinals = np.empty(0, np.int64)
            return Block(index, ordinals, ordinals, self._empty())
        ordinals, ids, vectors = zip(*parts)
        copy = not self._in_memory  # file blocks get their own memory: never a view of a whole batch
        ordinals = join_rows(ordinals, np.int64, copy)
        ids = join_rows(ids, np.int64, copy) if self._id_column else ordinals
        block = Block(index, ordinals, ids, join_rows(vectors, self.dtype, copy))
        if copy:
            for array in (block.ordinals, block.ids, block.vectors):
                array.flags.writeable = False
        return block

    def blocks(self, start=0, stop=None):
        """Yield the blocks [start, stop) in order (stop None: to the end), validating their rows.

        Cached blocks come from RAM; runs of the others are streamed from their files.
        """
        start, stop = self._block_range(start, stop)
        skipped = collections.Counter()
        try:
            index = start
            while index < stop:
                block = self._cache.get(index)
                if block is not None:
                    yield block
                    index += 1
                    continue
                end = index + 1
                # a run of uncached blocks streams in one go; arrays go block by block, which bounds
                # validation's temporaries (an array piece is the whole range asked for)
                while end < stop and not self._in_memory and self._cache.get(end) is None:
                    end += 1
                pieces = self._parts(index, end, skipped)
                if not self._in_memory:  # files: decode the next row groups while this block is used
                    pieces = read_ahead(pieces)
                with contextlib.closing(pieces):
                    for block_index, parts in cut_blocks(pieces, index, end, self._len):
                        block = self._block(block_index, parts)
                        self._cache.put(block)
                        yield block
                index = end
        finally:
            self._warn(skipped)

    def unchecked_blocks(self, start=0, stop=None):
        """``(block, checked)`` for the blocks [start, stop), in order. Blocks of in-memory data
        (host or device) whose rows were never validated come as :meth:`blocks` gives them, but
        unvalidated (``checked`` False); all others through :meth:`blocks` (``checked`` True).

        For a caller that checks the rows where it copies them (``io.streaming``: on the GPU,
        where the check reads no host memory; on the host, 16 threads reading 10M float16 rows
        shared the memory bandwidth with the copies and held the first pass to 0.6 of the copy
        rate). It hands good blocks to :meth:`mark_checked`, and reads a block that fails again
        through :meth:`blocks`, which raises or skips as ``on_invalid`` says."""
        start, stop = self._block_range(start, stop)
        data = self._array
        if data is None:
            yield from ((block, True) for block in self.blocks(start, stop))
            return
        for index in range(start, stop):
            block = self._cache.get(index)
            if block is not None:
                yield block, True
                continue
            lo, hi = index * BLOCK_ROWS, min((index + 1) * BLOCK_ROWS, self._len)
            ordinals = self._ordinals(lo, hi)
            yield self._block(index, [(ordinals, ordinals, data[lo:hi])]), False

    def whole_block(self):
        """All rows of an in-memory tensor as one Block (index 0), for a caller that computes on all
        blocks at once (``io.streaming.resident``); None for files and arrays, or where a row is bad
        (then :meth:`blocks` raises naming it, or skips it). Checked once, in one read where the
        rows are; every block is then recorded as checked."""
        data = self._array
        if not isinstance(data, torch.Tensor):
            return None
        if self._whole is None:
            if not bool(torch.isfinite(data).all()):
                return None
            ordinals = self._ordinals(0, self._len)
            self._whole = Block(0, ordinals, ordinals, data)
            for block, checked in self.unchecked_blocks():
                if not checked:
                    self.mark_checked(block)
        return self._whole

    def _ordinals(self, lo, hi):
        """Ordinals lo..hi - 1 of in-memory rows: read-only views of one range, made on first use (8
        bytes a row beside the rows themselves). Ranges made per block and per run took 98 ms of the
        433 ms of host time of a GMM fit streamed from a 16.8M-row host array (288 of them, H100),
        on the thread that feeds the GPU."""
        if self._all_ordinals is None:
            every = np.arange(self._len)
            every.flags.writeable = False
            self._all_ordinals = every
        return self._all_ordinals[lo:hi]

    def mark_checked(self, block):
        """Record that ``block`` (of :meth:`unchecked_blocks`) holds only valid rows."""
        self._cache.put(block)

    def unchecked_run(self, start, stop):
        """``(block, checked)``: the in-memory rows of blocks [start, stop) as one Block (index
        ``start``, its rows as they lie in memory, not copied), ``checked`` whether every one of the
        blocks was validated (:meth:`mark_run_checked` records it); None for files, or where
        validation dropped rows of one of the blocks (``on_invalid="skip"``): those go block by block.
        For a pass that computes many blocks at once (``io.streaming.stream_runs``)."""
        data = self._array
        if data is None:
            return None
        start, stop = self._block_range(start, stop)
        checked = True
        for index in range(start, stop):
            block = self._cache.get(index)
            if block is None:
                checked = False
            elif len(block.ordinals) != min((index + 1) * BLOCK_ROWS, self._len) - index * BLOCK_ROWS:
                return None
        lo, hi = start * BLOCK_ROWS, min(stop * BLOCK_ROWS, self._len)
        ordinals = self._ordinals(lo, hi)
        return Block(start, ordinals, ordinals, data[lo:hi]), checked

    def mark_run_checked(self, start, stop):
        """Record that the rows of blocks [start, stop) (of :meth:`unchecked_run`) are all valid."""
        for block, checked in self.unchecked_blocks(start, stop):
            if not checked:
                self.mark_checked(block)

    def id_blocks(self, start=0, stop=None):
        """Yield (block index, ordinals, ids) for the blocks [start, stop), reading only the id column.

        No row is validated here: with ``on_invalid="skip"`` rows that :meth:`blocks` drops are listed.
        """
        start, stop = self._block_range(start, stop)
        if self._id_column is None:
            for index in range(start, stop):
                ordinals = np.arange(index * BLOCK_ROWS, min((index + 1) * BLOCK_ROWS, self._len))
                yield index, ordinals, ordinals
            return
        for index, parts in cut_blocks(self._parts(start, stop, None, ids_only=True), start, stop, self._len):
            ordinals, ids = zip(*parts) if parts else ([np.empty(0, np.int64)],) * 2
            yield index, np.concatenate(ordinals), np.concatenate(ids)

    def take(self, ordinals):
        """The rows at the given global ordinals, in the order given (repeats allowed).

        Rows of cached blocks come from the cache; parquet files read only the row groups
        holding the other wanted rows. Returns an ndarray
        (torch.Tensor for a tensor source) of shape (len(ordinals), dim); with
        ``on_invalid="skip"`` invalid rows are left out, so it can be shorter.
        """
        if isinstance(ordinals, torch.Tensor):
            ordinals = ordinals.cpu().numpy()
        ordinals = np.asarray(ordinals, dtype=np.int64)
        if ordinals.ndim != 1:
            raise ValueError(f"ordinals must be 1-D, not of shape {ordinals.shape}")
        if len(ordinals) and not (0 <= ordinals.min() and ordinals.max() < self._len):
            raise IndexError(f"ordinals must be within [0, {self._len})")
        skipped = collections.Counter()
        keep = np.ones(len(ordinals), bool)
        out, rest = None, np.arange(len(ordinals))
        if not self._in_memory and len(ordinals):
            out, rest = self._cache.take(ordinals, keep, self.dim, self.dtype)
        files = np.searchsorted(self._starts, ordinals[rest], side="right") - 1
        for f in np.unique(files):
            reader, where = self._readers[f], rest[files == f]
            piece = reader.take(ordinals[where] - self._starts[f], self.dim)
            kept = self._check(reader, piece, skipped)
            if kept is not None:
                keep[where] = kept
            if out is None and len(where) == len(ordinals):  # one file: no assembly
                out = join_rows([piece.vectors], self.dtype, copy=False)
            else:
                if out is None:
                    out = np.empty((len(ordinals), self.dim), self.dtype)
                out[where] = piece.vectors
        if out is None:
            out = self._empty()
        self._warn(skipped)
        return out if keep.all() else select_rows(out, keep)
