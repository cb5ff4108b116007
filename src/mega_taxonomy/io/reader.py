"""What every file format's reader gives a VectorSource: :class:`Piece` (decoded rows) and the
:class:`Reader` interface, with the checks all formats share."""

from dataclasses import dataclass

import numpy as np
import torch

from mega_taxonomy.errors import DataError


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


def file_size(fs, path, uri) -> int:
    """The size of a file in bytes; DataError naming it when it cannot be read or is empty."""
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
