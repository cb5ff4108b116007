"""Parquet files: list / large_list / fixed_size_list columns of floats, decoded with numpy.

Decoding is the bottleneck of every pass, so list columns are decoded from the flat values
buffer and the offsets with numpy: a zero-copy reshape when every row has ``dim`` values, one
vectorized gather otherwise; never a Python loop per row.
"""

import contextlib
import functools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from mega_taxonomy.errors import DataError
from mega_taxonomy.io import validate
from mega_taxonomy.io.reader import Piece, Reader, file_size
from mega_taxonomy.threads import map_in_threads

# Rows read to find the dimension of a list<float> file (a dimension is not in parquet metadata).
_PROBE_ROWS = 1024


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
            file_size(fs, path, uri)  # a 0-byte file gets its own message
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

        def read(group):
            """The wanted rows of one row group: only the groups that hold some are read, side by
            side (each read opens its own handle; pyarrow decodes without the GIL). One after
            another, a sample of 131,072 rows spread over 12.9 GB of 1024-d float16 read the whole
            of it on one core between two levels of a fit."""
            local = ordered[groups == group] - self._starts[group]
            try:
                with self._open() as parquet:
                    return parquet.read_row_group(int(group), columns=self._columns()).take(pa.array(local))
            except (pa.ArrowException, OSError) as exc:
                raise self._undecodable(group, exc) from exc

        tables = map_in_threads(read, np.unique(groups).tolist())
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        table = pa.concat_tables(tables).take(pa.array(back)).combine_chunks()
        return self._piece(rows, [column.combine_chunks() for column in table.columns], dim)
