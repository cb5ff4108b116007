"""One small reader per file format, behind one interface.

Why: a VectorSource only needs, per file, its row count, dimension and dtype (from metadata,
cheaply), a stream of decoded pieces for a row range, and the rows at given positions. Every
format detail (parquet row groups and list offsets, npy headers, the per-row headers of
fvecs/bvecs, local memory maps versus remote range reads) stays here. Readers decode but do
not judge: a :class:`Piece` carries the facts validation needs (list lengths, nulls) and
validate.py decides.

Decoding is the bottleneck of every pass, so list columns are decoded from the flat values
buffer and the offsets with numpy: a zero-copy reshape when every row has ``dim`` values, one
vectorized gather otherwise; never a Python loop per row.
"""

import contextlib
import functools
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from fsspec.implementations.local import LocalFileSystem

from mega_taxonomy.errors import DataError
from mega_taxonomy.io import validate

EXTENSIONS = (".parquet", ".npy", ".fvecs", ".bvecs")

# Rows read to find the dimension of a list<float> file (a dimension is not in parquet metadata).
_PROBE_ROWS = 1024

# npy headers are parsed with ast.literal_eval, which some CPython versions cannot run in several
# threads at once ("AST constructor recursion depth mismatch", gh-106905); files open in threads.
_NPY_HEADER_LOCK = threading.Lock()


@dataclass
class Piece:
    """Decoded, not yet validated, rows of one file.

    ``rows`` are the row numbers inside the file (a range when contiguous). ``vectors`` is
    (n, dim); rows that could not be decoded hold zeros. ``lengths`` (None when every row has
    ``dim`` values) gives each row's number of values, -1 for a null vector; ``null_at`` (None
    when there are no null values) the dimension of each row's first null value, -1 if none.
    """

    rows: range | np.ndarray
    vectors: np.ndarray | torch.Tensor
    ids: np.ndarray | None = None
    lengths: np.ndarray | None = None
    null_at: np.ndarray | None = None


def _values(array):
    """Zero-copy numpy view of a primitive arrow array's values (slots of nulls included)."""
    dtype = validate.numpy_dtype(array.type)
    if len(array) == 0:
        return np.empty(0, dtype)
    return np.frombuffer(array.buffers()[1], dtype, count=len(array), offset=array.offset * dtype.itemsize)


def decode_list(array, dim):
    """Decode an arrow list / large_list / fixed_size_list array into (vectors, lengths, null_at).

    See :class:`Piece` for the meaning of the three. Vectors are a view of the arrow buffer
    when every list has ``dim`` values.
    """
    n = len(array)
    values = array.values  # the whole child array: the list array's own offset is applied below
    flat = _values(values)
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        offsets = np.arange(array.offset, array.offset + n + 1, dtype=np.int64) * size
    else:
        kind = np.int64 if pa.types.is_large_list(array.type) else np.int32
        start = array.offset * np.dtype(kind).itemsize
        offsets = np.frombuffer(array.buffers()[1], kind, count=n + 1, offset=start)
    lengths = np.diff(offsets)
    if (lengths == dim).all():
        vectors = flat[offsets[0] : offsets[-1]].reshape(n, dim)
        lengths = None
    else:  # ragged or wrong-length rows: gather the well-formed ones, zeros elsewhere
        good = lengths == dim
        index = offsets[:-1, None] + np.arange(dim)
        index[~good] = 0
        vectors = flat[index] if len(flat) else np.zeros((n, dim), flat.dtype)
        vectors[~good] = 0
    if array.null_count:
        lengths = np.full(n, dim, np.int64) if lengths is None else lengths.astype(np.int64)
        lengths[~array.is_valid().to_numpy(zero_copy_only=False)] = -1
    null_at = None
    if values.null_count:
        null = values.is_null().to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
        where = np.flatnonzero(null) + offsets[0]
        if len(where):
            row = np.searchsorted(offsets, where, side="right") - 1
            first_row, first = np.unique(row, return_index=True)  # values are in row order
            null_at = np.full(n, -1, np.int64)
            null_at[first_row] = where[first] - offsets[first_row]
    return vectors, lengths, null_at


def _size(fs, path, uri):
    try:
        size = fs.size(path)
    except OSError as exc:
        raise DataError(f"cannot read file: {exc}", file=uri) from exc
    if not size:
        raise DataError("empty file (0 bytes)", file=uri)
    return size


class Reader:
    """The interface every format implements (see the module docstring).

    Attributes: ``uri``, ``column`` (the vector column, or None), ``num_rows``, ``dtype`` (the
    dtype vectors are served in), ``dim`` (None for a file without rows) and ``exact_dim``
    (True when ``dim`` comes from metadata and holds for every row; False when rows may differ
    and are checked one by one), ``slow_encoding`` (True when the values are stored in a layout
    that decodes several times slower than a plain one would).
    """

    column = None
    exact_dim = True
    slow_encoding = False

    def boundaries(self):
        """Rows where a shard may start (parquet: row group starts); None when any row will do."""
        return None

    def read(self, start, stop, batch_size, dim):
        """Yield the rows [start, stop) as pieces of at most ``batch_size`` rows."""
        raise NotImplementedError

    def take(self, rows, dim):
        """A piece with the given rows (an int64 array, any order, repeats allowed)."""
        raise NotImplementedError

    def read_ids(self, start, stop, batch_size):
        """Yield (rows, ids) for the rows [start, stop), reading only the id column."""
        raise NotImplementedError


class ParquetReader(Reader):
    """A parquet file: footer read once at open, rows streamed one row group at a time.

    Local files are opened by path (pyarrow's native I/O); remote ones through fsspec.
    """

    def __init__(self, uri, fs, path, *, column=None, id_column=None):
        self.uri, self._fs, self._path = uri, fs, path
        self._local = isinstance(fs, LocalFileSystem)
        self._meta = None
        try:
            with self._open() as parquet:
                self._meta, schema = parquet.metadata, parquet.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            _size(fs, path, uri)  # a 0-byte file gets its own message
            raise DataError(f"not a readable parquet file (corrupt or truncated): {exc}", file=uri) from exc
        self.column = validate.vector_column(schema, column, file=uri)
        vector_type = schema.field(self.column).type
        self.dtype = validate.list_dtype(vector_type, file=uri, column=self.column)
        self.id_column = id_column
        if id_column is not None:
            validate.id_column(schema, id_column, file=uri)
        self.num_rows = self._meta.num_rows
        sizes = [self._meta.row_group(g).num_rows for g in range(self._meta.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.exact_dim = pa.types.is_fixed_size_list(vector_type)
        if self.exact_dim:
            self.dim = vector_type.list_size
        self.slow_encoding = self.dtype == np.float16 and self._dictionary_encoded()

    def _dictionary_encoded(self):
        """Whether the vector column's values are dictionary-encoded in the first row group: pyarrow's
        default for float16, whose 65,536 values always fit a dictionary. It decodes them about 6x
        slower than plain ones (65,536 x 1024: 1.33 s against 0.23 s on a 2-core host)."""
        if not self._meta.num_row_groups:
            return False
        group = self._meta.row_group(0)
        for j in range(group.num_columns):
            chunk = group.column(j)
            if chunk.path_in_schema.split(".")[0] == self.column:
                return any("DICTIONARY" in encoding for encoding in chunk.encodings)
        return False

    @functools.cached_property
    def dim(self):
        """The most common list length among the first rows (None if they are all null)."""
        for _, batch in self._pieces(0, min(self.num_rows, _PROBE_ROWS), _PROBE_ROWS, [self.column]):
            column = batch.column(0)
            lengths = np.diff(column.offsets.to_numpy())[column.is_valid().to_numpy(zero_copy_only=False)]
            return int(np.bincount(lengths).argmax()) if len(lengths) else None
        return None

    @contextlib.contextmanager
    def _open(self):
        options = {"metadata": self._meta, "page_checksum_verification": True}
        with contextlib.ExitStack() as stack:
            source = self._path if self._local else stack.enter_context(self._fs.open(self._path, "rb"))
            yield stack.enter_context(pq.ParquetFile(source, **options))

    def boundaries(self):
        return self._starts[:-1].tolist()

    def _columns(self):
        return [self.column] if self.id_column is None else [self.column, self.id_column]

    def _undecodable(self, group, exc):
        """The DataError for a row group pyarrow cannot decode."""
        message, column = f"cannot decode row group {group}: {exc}", None
        if self.exact_dim and isinstance(exc, pa.ArrowInvalid) and "Expected all lists" in str(exc):
            # apache/arrow#35692: pyarrow before its fix cannot read back a null fixed_size_list entry
            message += (f" (a null vector, which pyarrow {pa.__version__} cannot read from a fixed_size_list "
                        "column: a newer pyarrow reads it and names its row; or write the column as list<float>)")
            column = self.column
        return DataError(message, file=self.uri, row=int(self._starts[group]), column=column)

    def _pieces(self, start, stop, batch_size, columns):
        """Yield (rows, record batch) for the rows [start, stop), one row group at a time."""
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        with self._open() as parquet:
            for group in range(first, len(self._starts) - 1):
                row = int(self._starts[group])
                if row >= stop:
                    break
                try:
                    for batch in parquet.iter_batches(batch_size, row_groups=[group], columns=columns):
                        lo, hi = max(row, start), min(row + len(batch), stop)
                        if lo < hi:
                            yield range(lo, hi), batch.slice(lo - row, hi - lo)
                        row += len(batch)
                except (pa.ArrowException, OSError) as exc:
                    raise self._undecodable(group, exc) from exc

    def _piece(self, rows, columns, dim):
        vectors, lengths, null_at = decode_list(columns[0], dim)
        ids = None
        if self.id_column is not None:
            ids = validate.id_values(columns[1], rows, file=self.uri, column=self.id_column)
        return Piece(rows, vectors, ids, lengths, null_at)

    def read(self, start, stop, batch_size, dim):
        for rows, batch in self._pieces(start, stop, batch_size, self._columns()):
            yield self._piece(rows, batch.columns, dim)

    def read_ids(self, start, stop, batch_size):
        for rows, batch in self._pieces(start, stop, batch_size, [self.id_column]):
            yield rows, validate.id_values(batch.column(0), rows, file=self.uri, column=self.id_column)

    def take(self, rows, dim):
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        groups = np.searchsorted(self._starts, ordered, side="right") - 1
        tables = []
        with self._open() as parquet:
            for group in np.unique(groups):
                local = ordered[groups == group] - self._starts[group]
                try:  # only the row groups that hold wanted rows are read
                    table = parquet.read_row_group(int(group), columns=self._columns())
                except (pa.ArrowException, OSError) as exc:
                    raise self._undecodable(group, exc) from exc
                tables.append(table.take(pa.array(local)))
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        table = pa.concat_tables(tables).take(pa.array(back)).combine_chunks()
        return self._piece(rows, [column.combine_chunks() for column in table.columns], dim)


class _RecordReader(Reader):
    """A file of fixed-size records after a header: memory-mapped locally, range reads remotely.

    Subclasses set ``_record`` (the numpy dtype of one row), ``_offset`` (the header's size),
    ``num_rows`` and ``_map`` (a memory map of the records, None for remote files), and turn
    records into pieces in ``_piece``.
    """

    def _fetch(self, starts, stops):
        """The bytes [starts[i], stops[i]) of the (remote) file, concatenated."""
        try:
            starts, stops = np.asarray(starts).tolist(), np.asarray(stops).tolist()
            return b"".join(self._fs.cat_ranges([self._path] * len(starts), starts, stops))
        except OSError as exc:
            raise DataError(f"cannot read file: {exc}", file=self.uri) from exc

    def _records(self, start, stop):
        if self._map is not None:
            return self._map[start:stop]
        size = self._record.itemsize
        data = self._fetch([self._offset + start * size], [self._offset + stop * size])
        return np.frombuffer(data, self._record)

    def _records_at(self, rows):
        if self._map is not None:
            return self._map[rows]
        starts = self._offset + rows * self._record.itemsize
        return np.frombuffer(self._fetch(starts, starts + self._record.itemsize), self._record)

    def read(self, start, stop, batch_size, dim):
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            yield self._piece(range(lo, hi), self._records(lo, hi))

    def take(self, rows, dim):
        return self._piece(rows, self._records_at(rows))


class NpyReader(_RecordReader):
    """A 2-D ``.npy`` array of numbers, C or Fortran order."""

    def __init__(self, uri, fs, path):
        self.uri, self._fs, self._path = uri, fs, path
        size = _size(fs, path, uri)
        try:  # the header alone, so that a bad dtype or shape is reported before mapping anything
            with fs.open(path, "rb") as f, _NPY_HEADER_LOCK:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, self._fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, self._fortran, dtype = np.lib.format.read_array_header_2_0(f)
                self._offset = f.tell()
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"not a readable .npy file: {exc}", file=uri) from exc
        if len(shape) != 2 or shape[1] == 0:
            raise DataError(f"expected a 2-D array (rows, dim), found shape {shape}", file=uri)
        self.dtype = validate.vector_dtype(dtype, file=uri)
        self.num_rows, self.dim = shape
        if self._offset + self.num_rows * self.dim * dtype.itemsize > size:
            raise DataError(f"truncated: {size} bytes cannot hold an array {shape} of {dtype}", file=uri)
        self._record = np.dtype((dtype, (self.dim,)))
        self._map = None
        if isinstance(fs, LocalFileSystem):  # mapped from the header read above (np.load would parse it again)
            self._map = np.memmap(path, dtype=dtype, mode="r", offset=self._offset, shape=shape,
                                  order="F" if self._fortran else "C")

    def _columns(self, start, stop):
        """Rows [start, stop) of a remote Fortran-order file: one range read per column."""
        item = self._record.base
        firsts = self._offset + np.arange(self.dim) * self.num_rows * item.itemsize
        data = self._fetch(firsts + start * item.itemsize, firsts + stop * item.itemsize)
        return np.frombuffer(data, item).reshape(self.dim, stop - start).T

    def _records(self, start, stop):
        if self._fortran and self._map is None:
            return self._columns(start, stop)
        return super()._records(start, stop)

    def _records_at(self, rows):
        if self._fortran and self._map is None:  # a range per column spanning the wanted rows
            lo, hi = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 0)
            return self._columns(lo, hi)[rows - lo]
        return super()._records_at(rows)

    def _piece(self, rows, records):
        return Piece(rows, records)


class VecsReader(_RecordReader):
    """An ``.fvecs`` (float32) or ``.bvecs`` (uint8) file: each row is an int32 dimension, then its values."""

    def __init__(self, uri, fs, path):
        self.uri, self._fs, self._path = uri, fs, path
        value = "<f4" if path.lower().endswith(".fvecs") else "u1"
        size = _size(fs, path, uri)
        try:
            head = fs.cat_file(path, 0, 4)
        except OSError as exc:
            raise DataError(f"cannot read file: {exc}", file=uri) from exc
        self.dim = int(np.frombuffer(head, "<i4")[0]) if len(head) == 4 else 0
        if self.dim <= 0:
            raise DataError(f"invalid dimension header {self.dim}", file=uri, row=0)
        self.dtype, self._offset = np.dtype("float32"), 0
        self._record = np.dtype([("dim", "<i4"), ("v", value, (self.dim,))])
        self.num_rows, extra = divmod(size, self._record.itemsize)
        self._map = None
        if isinstance(fs, LocalFileSystem) and self.num_rows:
            self._map = np.memmap(path, self._record, "r", shape=(self.num_rows,))
        if extra:  # mixed dimensions shift every later row; name the first row whose header disagrees
            row = self.num_rows
            if self._map is not None:
                bad = np.flatnonzero(self._map["dim"] != self.dim)
                row = int(bad[0]) if len(bad) else row
            raise DataError(
                f"truncated or mixed dimensions: {size} bytes is not a whole number of rows of "
                f"dimension {self.dim} ({self._record.itemsize} bytes each)",
                file=uri,
                row=row,
            )

    def _piece(self, rows, records):
        headers = records["dim"]
        lengths = None if (headers == self.dim).all() else headers.astype(np.int64)
        return Piece(rows, records["v"], lengths=lengths)


def _torch_dtype(dtype):
    if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return dtype
    if not (dtype.is_complex or dtype == torch.bool or dtype.is_floating_point):
        return torch.float32
    raise DataError(f"values of dtype {dtype} are not numeric vectors", file=ArrayReader.uri)


class ArrayReader(Reader):
    """An in-memory numpy array or torch tensor (n, dim): pieces are views, never copies."""

    uri = "<array>"

    def __init__(self, data):
        if data.ndim != 2 or data.shape[1] == 0:
            shape = tuple(data.shape)
            raise DataError(f"expected a 2-D array (rows, dim), found shape {shape}", file=self.uri)
        if isinstance(data, torch.Tensor):  # numpy's dtype, but for bfloat16, which numpy lacks
            dtype = _torch_dtype(data.dtype)
            self.dtype = dtype if dtype == torch.bfloat16 else np.dtype(str(dtype).removeprefix("torch."))
        else:
            self.dtype = validate.vector_dtype(data.dtype, file=self.uri)
        self._data = data
        self.num_rows, self.dim = data.shape

    def read(self, start, stop, batch_size, dim):
        yield Piece(range(start, stop), self._data[start:stop])

    def take(self, rows, dim):
        if isinstance(self._data, torch.Tensor):
            return Piece(rows, self._data[torch.as_tensor(rows, device=self._data.device)])
        return Piece(rows, self._data[rows])


def open_reader(uri, fs, path, *, column=None, id_column=None):
    """The reader for the file ``path`` on ``fs`` (``uri`` names it in messages), by its extension."""
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix == ".parquet":
        return ParquetReader(uri, fs, path, column=column, id_column=id_column)
    if id_column is not None:
        raise DataError(f"{suffix} files have no columns, so no id column {id_column!r}", file=uri)
    if suffix == ".npy":
        return NpyReader(uri, fs, path)
    if suffix in (".fvecs", ".bvecs"):
        return VecsReader(uri, fs, path)
    raise DataError(f"unknown file type; expected one of {', '.join(EXTENSIONS)}", file=uri)
