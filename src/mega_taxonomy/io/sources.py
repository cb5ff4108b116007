"""VectorSource: files (or one in-memory array) seen as one sequence of rows, read in fixed blocks.

Why blocks: every pass over data computes partial sums per block of BLOCK_ROWS global ordinals
and reduces them in block order, so results do not depend on how the data is cut into files,
row groups, batches or workers (DESIGN.md, Contracts: Determinism). This module wires files ->
global ordinals -> blocks -> a cache of decoded blocks; formats.py decodes each format and
validate.py judges every row.

Why a cache that never evicts: a fit makes tens of passes and decoding parquet costs far more
than the arithmetic, so decoded blocks are kept in RAM within a budget. Passes scan blocks in
order, and an LRU cache smaller than the data would evict every block just before it is needed
again; keeping the first blocks that fit and re-reading the rest gives hits on every pass.
"""

import collections
import contextlib
import functools
import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from mega_taxonomy.errors import ConfigError, DataError
from mega_taxonomy.io import validate
from mega_taxonomy.io.formats import EXTENSIONS, ArrayReader, open_reader

logger = logging.getLogger(__name__)

BLOCK_ROWS = 65_536
"""The determinism unit: block b holds the global ordinals [b * BLOCK_ROWS, (b + 1) * BLOCK_ROWS)."""

SHARD_ROWS = 1 << 20
"""Files with more rows are split into several shards at row-group boundaries."""

_TORCH_DTYPES = {np.dtype(name): getattr(torch, name) for name in ("float16", "float32", "float64")}
_TORCH_DTYPES[torch.bfloat16] = torch.bfloat16  # a tensor source's, which numpy cannot name


@dataclass(frozen=True)
class Shard:
    """A unit of reading: rows [row_start, row_stop) of one file, whose first row has global ordinal start."""

    uri: str
    row_start: int
    row_stop: int
    start: int


@dataclass
class Block:
    """The rows of one block: what every pass over data computes on.

    ``ordinals`` (int64, ascending) are global row ordinals, ``ids`` the id column's values (the
    ordinals when there is none) and ``vectors`` (n, dim) the rows, in the source dtype: a torch
    tensor on the input's device when the source is a tensor, a C-contiguous numpy array
    otherwise. Rows skipped as invalid are absent, so n can be below BLOCK_ROWS. Blocks read
    from files are read-only (they may be shared through the cache).
    """

    index: int
    ordinals: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray | torch.Tensor


def _hidden(relative_path):
    """Whether a path has a component starting with "." or "_" (checksums, _SUCCESS, _temporary/)."""
    return any(part.startswith((".", "_")) for part in relative_path.split("/") if part)


def _expand(spec, storage_options):
    """(fs, paths) of the files a path, glob, directory or URI names, sorted."""
    try:
        fs, path = fsspec.core.url_to_fs(spec, **storage_options)
        pattern = any(char in path for char in "*?[")
        matches = sorted(fs.glob(path)) if pattern else [path] if fs.exists(path) else []
        paths = []
        for match in matches:
            if pattern and _hidden(match.rsplit("/", 1)[-1]):
                continue
            if fs.isdir(match):
                under = (p for p in fs.find(match) if p.lower().endswith(EXTENSIONS))
                paths += [p for p in under if not _hidden(p[len(match) :])]
            else:
                paths.append(match)
    except (OSError, ValueError, ImportError) as exc:  # unknown protocol, no access, network
        raise DataError(f"cannot list: {exc}", file=spec) from exc
    if not matches:
        raise DataError("the pattern matches no files" if pattern else "no such file or directory", file=spec)
    if not paths:
        raise DataError(f"no {'/'.join(EXTENSIONS)} files found", file=spec)
    return fs, paths


def _find_files(data, storage_options):
    """Expand paths, globs, directories and URIs into (uri, fs, path) triples, unique, in sorted URI order."""
    specs = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not specs:
        raise DataError("no input files given")
    found = {}
    for spec in map(os.fspath, specs):
        fs, paths = _expand(spec, storage_options)
        for path in paths:
            uri = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
            found[uri] = (uri, fs, path)
    return [found[uri] for uri in sorted(found)]


def _open_readers(files, column, id_column):
    """Open every file (footers and headers only), in parallel: remote opens are round trips."""
    first = next((i for i, (_, _, path) in enumerate(files) if path.lower().endswith(".parquet")), None)
    readers = {}
    if first is not None:  # the first parquet file decides the vector column of all
        readers[first] = open_reader(*files[first], column=column, id_column=id_column)
        column = readers[first].column
    rest = [i for i in range(len(files)) if i not in readers]
    if rest:
        with ThreadPoolExecutor(max_workers=min(16, len(rest))) as pool:
            opened = pool.map(lambda i: open_reader(*files[i], column=column, id_column=id_column), rest)
            readers.update(zip(rest, opened))
    return [readers[i] for i in range(len(files))]


def _default_cache_bytes():
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume a small machine
        ram = 8 << 30
    return min(ram // 4, 8 << 30)


def _split(boundaries, num_rows):
    """Shard limits within a file: consecutive boundaries grouped while a shard stays within SHARD_ROWS.

    ``boundaries`` None means that a shard may start at any row.
    """
    if boundaries is None:
        return [*range(0, num_rows, SHARD_ROWS), num_rows]
    cuts, previous = [0], 0
    for cut in [*boundaries[1:], num_rows]:
        if cut - cuts[-1] > SHARD_ROWS and previous > cuts[-1]:
            cuts.append(previous)
        previous = cut
    return [*cuts, num_rows]


def _cut(parts, first, stop, num_rows):
    """Regroup parts (stop, ordinals, *arrays), in ordinal order, into (block index, parts of it).

    ``stop`` is one past the last ordinal a part covers, rows skipped as invalid included: it
    says when a block is complete even if its last rows were dropped.
    """
    index, pending = first, []
    for covered, ordinals, *arrays in parts:
        while index < stop:
            end = min((index + 1) * BLOCK_ROWS, num_rows)
            k = int(np.searchsorted(ordinals, end))
            if k:
                pending.append((ordinals[:k], *(a[:k] for a in arrays)))
                ordinals, arrays = ordinals[k:], [a[k:] for a in arrays]
            if covered < end:
                break
            yield index, pending
            index, pending = index + 1, []


def put_unless(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` on the bounded queue ``q`` unless ``stop`` is set first (a producer thread's
    way to wait for room without outliving its consumer); whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _read_ahead(items, depth=2):
    """Yield ``items`` (an iterator), which a thread of its own advances up to ``depth`` items ahead.

    A first pass over files decodes and validates each row group (pyarrow and numpy release the
    GIL) while the caller assembles blocks and computes on the previous one: 1M x 64 float32 in
    parquet, a sample pass took 0.9 s read in line and 0.5 s read ahead. Errors of ``items`` are
    raised here, in the caller's thread; closing this generator stops the thread.
    """
    ahead, stop, end = queue.Queue(maxsize=depth), threading.Event(), object()
    put = functools.partial(put_unless, ahead, stop=stop)

    def run():
        try:
            for item in items:
                if not put(item):
                    break
            else:
                put(end)
        except BaseException as exc:  # handed to the caller, raised there
            put(exc)
        finally:
            items.close()  # in the thread that ran it (open files of the reader)

    thread = threading.Thread(target=run, name="mega-taxonomy-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _join(arrays, dtype, copy):
    """One array from consecutive row ranges: a view when ``copy`` is False and there is one."""
    if isinstance(arrays[0], torch.Tensor):
        joined = arrays[0] if len(arrays) == 1 else torch.cat(arrays)
        return joined.to(_TORCH_DTYPES[dtype]).contiguous()
    if len(arrays) == 1 and not copy:
        return np.ascontiguousarray(arrays[0], dtype=dtype)
    # Into a C-ordered buffer: pieces of a Fortran-ordered .npy would otherwise stay column-major,
    # and every pass over a column-major block is several times slower.
    out = np.empty((sum(len(a) for a in arrays), *arrays[0].shape[1:]), dtype=dtype)
    return np.concatenate(arrays, out=out)


def _select(vectors, keep):
    if isinstance(vectors, torch.Tensor):
        return vectors[torch.from_numpy(keep).to(vectors.device)]
    return vectors[keep]


class _BlockCache:
    """Decoded blocks within a byte budget: the first blocks that fit stay, none is ever evicted.

    Blocks of in-memory data are views of it: caching them costs only their ordinals, and saves
    validating the same rows again on every pass.
    """

    def __init__(self, budget, views=False):
        self.budget, self.used, self.views = budget, 0, views
        self._blocks = {}
        self._lock = threading.Lock()

    def get(self, index):
        return self._blocks.get(index)

    def put(self, block):
        size = (0 if self.views else block.vectors.nbytes) + block.ordinals.nbytes
        size += block.ids.nbytes if block.ids is not block.ordinals else 0
        with self._lock:
            if block.index not in self._blocks and self.used + size <= self.budget:
                self._blocks[block.index] = block
                self.used += size


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
        )
        self._in_memory = isinstance(data, (np.ndarray, torch.Tensor))
        self._array = data if self._in_memory else None  # the in-memory array or tensor itself
        if self._in_memory:
            if id_column is not None:
                raise DataError(f"an in-memory array has no id column {id_column!r}", file=ArrayReader.uri)
            self._readers = [ArrayReader(data)]
            self._origin = f"<{type(data).__name__} {tuple(data.shape)}>"
        else:
            self._readers = _open_readers(_find_files(data, dict(storage_options or {})), column, id_column)
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
        self.dim = self._check_dims(dim)
        self.dtype = self._readers[0].dtype if self._in_memory else np.result_type(*(r.dtype for r in self._readers))
        self.shards = []
        for reader, start in zip(self._readers, self._starts.tolist()):
            if reader.num_rows:
                cuts = _split(reader.boundaries(), reader.num_rows)
                self.shards += [Shard(reader.uri, lo, hi, start + lo) for lo, hi in zip(cuts[:-1], cuts[1:])]
        self.n_blocks = -(-self._len // BLOCK_ROWS)
        budget = _default_cache_bytes() if cache_bytes is None else cache_bytes
        self._cache = _BlockCache(budget, views=self._in_memory)
        self._skipped = {}
        self._lock = threading.Lock()
        logger.debug("opened %r", self)

    @classmethod
    def of(cls, data, **kw):
        """``data`` itself if it is a VectorSource (``kw`` are then ignored), else ``cls(data, **kw)``."""
        return data if isinstance(data, VectorSource) else cls(data, **kw)

    def _check_dims(self, dim):
        origin = "dim="
        if dim is None:
            for reader in self._readers:
                if reader.num_rows and reader.dim is not None:
                    dim, origin = reader.dim, f"the first file {reader.uri}"
                    break
            else:
                raise DataError("cannot tell the dimension: the first rows are all null", file=self.uris[0])
        for reader in self._readers:
            if reader.num_rows and reader.exact_dim:
                validate.dimension(reader.dim, dim, origin, file=reader.uri, column=reader.column)
        return dim

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
        for f in range(int(np.searchsorted(self._starts, lo, side="right")) - 1, len(self._readers)):
            base, reader = int(self._starts[f]), self._readers[f]
            if base >= hi:
                break
            start, end = max(lo - base, 0), min(hi - base, reader.num_rows)
            if start >= end:
                continue
            row = start
            if ids_only:
                for rows, ids in reader.read_ids(start, end, self.batch_size):
                    row = rows.stop
                    yield base + rows.stop, np.arange(base + rows.start, base + rows.stop), ids
            else:
                for piece in reader.read(start, end, self.batch_size, self.dim):
                    row = piece.rows.stop
                    ordinals = np.arange(base + piece.rows.start, base + piece.rows.stop)
                    ids = ordinals if piece.ids is None else piece.ids
                    vectors = piece.vectors
                    keep = self._check(reader, piece, skipped)
                    if keep is not None:
                        ordinals, ids, vectors = ordinals[keep], ids[keep], _select(vectors, keep)
                    yield base + piece.rows.stop, ordinals, ids, vectors
            if row != end:  # a file changed since it was opened: never let blocks silently shrink
                message = f"the file ends at row {row}, but it had {reader.num_rows} rows when opened"
                raise DataError(message, file=reader.uri)

    def _empty(self):
        if isinstance(self._array, torch.Tensor):
            return torch.empty((0, self.dim), dtype=_TORCH_DTYPES[self.dtype], device=self._array.device)
        return np.empty((0, self.dim), self.dtype)

    def _block(self, index, parts):
        if not parts:  # every row of the block was skipped
            ordinals = np.empty(0, np.int64)
            return Block(index, ordinals, ordinals, self._empty())
        ordinals, ids, vectors = zip(*parts)
        copy = not self._in_memory  # file blocks get their own memory: never a view of a whole batch
        ordinals = _join(ordinals, np.int64, copy)
        ids = _join(ids, np.int64, copy) if self._id_column else ordinals
        block = Block(index, ordinals, ids, _join(vectors, self.dtype, copy))
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
                    pieces = _read_ahead(pieces)
                with contextlib.closing(pieces):
                    for block_index, parts in _cut(pieces, index, end, self._len):
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
            ordinals = np.arange(lo, hi)
            yield self._block(index, [(ordinals, ordinals, data[lo:hi])]), False

    def mark_checked(self, block):
        """Record that ``block`` (of :meth:`unchecked_blocks`) holds only valid rows."""
        self._cache.put(block)

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
        for index, parts in _cut(self._parts(start, stop, None, ids_only=True), start, stop, self._len):
            ordinals, ids = zip(*parts) if parts else ([np.empty(0, np.int64)],) * 2
            yield index, np.concatenate(ordinals), np.concatenate(ids)

    def _take_cached(self, ordinals, keep):
        """(out, positions left to read): the rows of cached blocks copied into ``out``; rows a
        cached block lacks were skipped as invalid, and are marked in ``keep``."""
        out = np.empty((len(ordinals), self.dim), self.dtype)
        blocks = ordinals // BLOCK_ROWS
        from_cache = np.zeros(len(ordinals), bool)
        for b in np.unique(blocks).tolist():
            block = self._cache.get(b)
            if block is None:
                continue
            where = np.flatnonzero(blocks == b)
            at = np.minimum(np.searchsorted(block.ordinals, ordinals[where]), max(len(block.ordinals) - 1, 0))
            found = block.ordinals[at] == ordinals[where] if len(block.ordinals) else np.zeros(len(where), bool)
            out[where[found]] = block.vectors[at[found]]
            keep[where[~found]] = False
            from_cache[where] = True
        return out, np.flatnonzero(~from_cache)

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
            out, rest = self._take_cached(ordinals, keep)
        files = np.searchsorted(self._starts, ordinals[rest], side="right") - 1
        for f in np.unique(files):
            reader, where = self._readers[f], rest[files == f]
            piece = reader.take(ordinals[where] - self._starts[f], self.dim)
            kept = self._check(reader, piece, skipped)
            if kept is not None:
                keep[where] = kept
            if out is None and len(where) == len(ordinals):  # one file: no assembly
                out = _join([piece.vectors], self.dtype, copy=False)
            else:
                if out is None:
                    out = np.empty((len(ordinals), self.dim), self.dtype)
                out[where] = piece.vectors
        if out is None:
            out = self._empty()
        self._warn(skipped)
        return out if keep.all() else _select(out, keep)
