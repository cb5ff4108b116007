"""Rules for good input, as pure functions that raise :class:`~mega_taxonomy.errors.DataError`.

Why a module of its own: readers (formats.py) only decode and the source (sources.py) only
wires files into blocks; every judgement about the data lives here, so each message names
the file, the row (0-based, inside the file) and the column the same way, and the rules can
be tested without files. Row checks are vectorized over a whole decoded piece, because they
run on every row of every pass.
"""

import numpy as np
import pyarrow as pa
import torch
from numba import njit

from mega_taxonomy.errors import ConfigError, DataError
from mega_taxonomy.threads import cpu_threads, map_in_threads

ON_INVALID = ("raise", "skip")


def check_on_invalid(on_invalid):
    """Return ``on_invalid`` if it is "raise" or "skip"; raise ConfigError otherwise."""
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"on_invalid must be one of {ON_INVALID}, not {on_invalid!r}")
    return on_invalid


def vector_dtype(dtype, *, file, column=None):
    """The dtype vectors of ``dtype`` are served in: floats keep theirs, integers become float32.

    >>> vector_dtype(np.dtype("int16"), file="a.npy")
    dtype('float32')
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
        return np.dtype(f"float{8 * dtype.itemsize}")
    if dtype.kind in "iu":
        return np.dtype("float32")
    raise DataError(
        f"values of dtype {dtype} are not numeric vectors (expected float16/32/64 or integers)",
        file=file,
        column=column,
    )


def _is_list(arrow_type):
    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def _is_float_list(arrow_type):
    return _is_list(arrow_type) and pa.types.is_floating(arrow_type.value_type)


def _columns(schema):
    return ", ".join(f"{field.name!r} ({field.type})" for field in schema)


def vector_column(schema, column, *, file):
    """The vector column of a parquet file: ``column``, or the only float-list column.

    Raises DataError when ``column`` is missing (naming the columns that exist), or when
    ``column`` is None and the schema has no float-list column or several (naming them).
    """
    if column is not None:
        if column not in schema.names:
            raise DataError(f"no such column; the columns are {_columns(schema)}", file=file, column=column)
        return column
    candidates = [field.name for field in schema if _is_float_list(field.type)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(
            f"no list<float> column to read vectors from; the columns are {_columns(schema)}", file=file
        )
    raise DataError(
        f"several candidate vector columns {candidates}; choose one with column=", file=file
    )


def list_dtype(arrow_type, *, file, column):
    """The served dtype of a vector column of ``arrow_type`` (a list of numbers), or DataError."""
    if not _is_list(arrow_type):
        raise DataError(
            f"type {arrow_type} is not a vector column (list, large_list or fixed_size_list of floats)",
            file=file,
            column=column,
        )
    value_type = arrow_type.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
        raise DataError(f"values of type {value_type} are not numeric", file=file, column=column)
    return vector_dtype(numpy_dtype(value_type), file=file, column=column)


def numpy_dtype(arrow_type) -> np.dtype:
    """The numpy dtype of an arrow integer or float type (``to_pandas_dtype`` needs pandas before pyarrow 21)."""
    if pa.types.is_floating(arrow_type):
        return np.dtype(f"float{arrow_type.bit_width}")
    sign = "" if pa.types.is_signed_integer(arrow_type) else "u"
    return np.dtype(f"{sign}int{arrow_type.bit_width}")


def id_column(schema, column, *, file):
    """Check that the id column ``column`` exists in ``schema`` and holds integers."""
    if column not in schema.names:
        raise DataError(f"no such id column; the columns are {_columns(schema)}", file=file, column=column)
    arrow_type = schema.field(column).type
    if not pa.types.is_integer(arrow_type):
        raise DataError(f"ids must be integers, not {arrow_type}", file=file, column=column)


def id_values(array, rows, *, file, column):
    """int64 numpy ids of an arrow integer ``array`` whose entries are ``rows`` of ``file``; nulls raise."""
    if array.null_count:
        first = int(np.argmax(array.is_null().to_numpy(zero_copy_only=False)))
        raise DataError("null id", file=file, row=int(rows[first]), column=column)
    return array.to_numpy().astype(np.int64, copy=False)


def dimension(found, expected, origin, *, file, column=None):
    """Raise DataError when a file's vectors have ``found`` dimensions and ``origin`` says ``expected``."""
    if found != expected:
        raise DataError(
            f"vectors have dimension {found}, but {origin} has dimension {expected}", file=file, column=column
        )


def source_dimension(readers, dim):
    """The dimension of a source's vectors: ``dim``, else that of the first file that tells it
    (DataError when none does); DataError when a file of known dimension differs."""
    origin = "dim="
    if dim is None:
        for reader in readers:
            if reader.num_rows and reader.dim is not None:
                dim, origin = reader.dim, f"the first file {reader.uri}"
                break
        else:
            raise DataError("cannot tell the dimension: the first rows are all null", file=readers[0].uri)
    for reader in readers:
        if reader.num_rows and reader.exact_dim:
            dimension(reader.dim, dim, origin, file=reader.uri, column=reader.column)
    return dim


# A float is NaN or infinite when all its exponent bits are set: the mask of those bits per
# float type, tested on the integers of the same width (bfloat16 has float32's exponent).
_EXPONENT_MASKS = {"float16": 0x7C00, "bfloat16": 0x7F80, "float32": 0x7F800000, "float64": 0x7FF0000000000000}


@njit(cache=True, nogil=True)
def _rows_without_all_exponent_bits(bits, mask, good):  # pragma: no cover - compiled
    for r in range(bits.shape[0]):
        bad = False
        for k in range(bits.shape[1]):  # no early exit: the loop vectorizes
            bad |= (bits[r, k] & mask) == mask
        good[r] = not bad


# Elements of a block below which one thread checks it all: a share of the CPU threads costs
# tens of microseconds to hand out.
_THREAD_ELEMENTS = 1 << 22


def _finite_rows(vectors):
    """Per row, whether all its values are finite. On the host, a compiled test of the exponent
    bits: one read, no temporaries. numpy's and torch's ``isfinite`` on float16, the usual storage
    of 1024-d embeddings, convert every value: 164 ms a block of 65536 x 1024 on 2 cores against
    5 ms here. Large blocks are split over the CPU threads: one thread of an H200's host checks
    10.5 GB/s, a fifth of its host-to-device copy rate, 16 threads 55.7 GB/s. (On a GPU, rows
    of in-memory data are checked there instead: ``io.streaming``.)"""
    if isinstance(vectors, torch.Tensor):
        if vectors.device.type != "cpu":
            return torch.isfinite(vectors).all(dim=1).cpu().numpy()
        name = str(vectors.dtype).removeprefix("torch.")
        if name not in _EXPONENT_MASKS:
            return torch.isfinite(vectors).all(dim=1).numpy()
        bits = vectors.contiguous().view(getattr(torch, f"int{8 * vectors.element_size()}")).numpy()
    else:
        vectors = np.ascontiguousarray(vectors)
        name = vectors.dtype.name
        if name not in _EXPONENT_MASKS:  # integers, long doubles
            return np.isfinite(vectors).all(axis=1)
        bits = vectors.view(f"i{vectors.dtype.itemsize}")
    bits = bits.reshape(len(bits), -1)
    mask = bits.dtype.type(_EXPONENT_MASKS[name])
    good = np.empty(len(bits), dtype=bool)
    shares = max(1, min(cpu_threads(), bits.size // _THREAD_ELEMENTS, len(bits)))
    cuts = np.linspace(0, len(bits), shares + 1).astype(np.int64)

    def check(share):
        rows = slice(cuts[share], cuts[share + 1])
        _rows_without_all_exponent_bits(bits[rows], mask, good[rows])

    map_in_threads(check, range(shares))
    return good


def _reason(piece, i, dim):
    if piece.lengths is not None and piece.lengths[i] < 0:
        return "null vector"
    if piece.lengths is not None and piece.lengths[i] != dim:
        return f"vector has {piece.lengths[i]} values, but the source has dimension {dim}"
    if piece.null_at is not None and piece.null_at[i] >= 0:
        return f"null value at dimension {piece.null_at[i]}"
    row = piece.vectors[i]
    row = row.cpu().numpy() if isinstance(row, torch.Tensor) else np.asarray(row)
    j = int(np.argmax(~np.isfinite(row)))
    value = "NaN" if np.isnan(row[j]) else "inf" if row[j] > 0 else "-inf"  # the words scikit-learn uses
    return f"value {value} at dimension {j} (vectors must be finite)"


def rows(piece, dim, *, file, column, on_invalid):
    """Check every row of a decoded piece; return the mask of rows to keep, or None if all are good.

    A row is bad when it is a null vector, has a length other than ``dim`` (wrong dimension,
    ragged lists), holds a null value or a NaN/Inf. With ``on_invalid="raise"`` the first bad
    row raises DataError naming ``file``, its row and ``column`` (and the dimension index for
    NaN/Inf/null values); with "skip" the bad rows are False in the returned mask.
    """
    good = _finite_rows(piece.vectors)
    if piece.lengths is not None:
        good &= piece.lengths == dim
    if piece.null_at is not None:
        good &= piece.null_at < 0
    if good.all():
        return None
    if on_invalid == "raise":
        i = int(np.argmin(good))
        raise DataError(_reason(piece, i, dim), file=file, row=int(piece.rows[i]), column=column)
    return good
