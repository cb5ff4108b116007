"""One small reader per file format, behind one interface.

Why: a VectorSource only needs, per file, its row count, dimension and dtype (from metadata,
cheaply), a stream of decoded pieces for a row range, and the rows at given positions. Every
format detail (parquet row groups and list offsets, npy headers, the per-row headers of
fvecs/bvecs, local memory maps versus remote range reads) stays here. Readers decode but do
not judge: a :class:`Piece` carries the facts validation needs (list lengths, nulls) and
validate.py decides.

The interface and its pieces are in ``reader.py``, parquet's reader in ``parquet.py``; here are
the readers of record files (npy, fvecs/bvecs) and of in-memory arrays, and :func:`open_reader`,
which picks one by extension.
"""

import threading

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from mega_taxonomy.errors import DataError
from mega_taxonomy.io import validate
from mega_taxonomy.io.parquet import ParquetReader
from mega_taxonomy.io.reader import Piece, Reader, file_size

EXTENSIONS = (".parquet", ".npy", ".fvecs", ".bvecs")

# npy headers are parsed with ast.literal_eval, which some CPython versions cannot run in several
# threads at once ("AST constructor recursion depth mismatch", gh-106905); files open in threads.
_NPY_HEADER_LOCK = threading.Lock()


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
        size = file_size(fs, path, uri)
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
        size = file_size(fs, path, uri)
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
