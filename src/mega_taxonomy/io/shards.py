"""Global row ordinals cut two ways: into fixed blocks (what passes compute on) and into shards (what is read).

Why blocks: every pass over data computes partial sums per block of BLOCK_ROWS global ordinals
and reduces them in block order, so results do not depend on how the data is cut into files,
row groups, batches or workers (DESIGN.md, Contracts: Determinism). Why shards: a file of many
millions of rows is too much for one unit of reading, so it is cut at row-group boundaries
into pieces of about SHARD_ROWS rows. This module holds both cuts and the assembly of a block
from the pieces that readers return; ``sources.py`` drives it.
"""

from dataclasses import dataclass

import numpy as np
import torch

from mega_taxonomy.errors import DataError

BLOCK_ROWS = 65_536
"""The determinism unit: block b holds the global ordinals [b * BLOCK_ROWS, (b + 1) * BLOCK_ROWS)."""

SHARD_ROWS = 1 << 20
"""Files with more rows are split into several shards at row-group boundaries."""

TORCH_DTYPES = {np.dtype(name): getattr(torch, name) for name in ("float16", "float32", "float64")}
"""The torch dtype of a source's dtype (a tensor source serves tensors)."""
TORCH_DTYPES[torch.bfloat16] = torch.bfloat16  # a tensor source's, which numpy cannot name


def dtype_name(dtype) -> str:
    """A source's dtype by name ("float16", "bfloat16", ...): numpy's names, and bfloat16's."""
    return str(TORCH_DTYPES[dtype]).removeprefix("torch.")


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


def shard_cuts(boundaries, num_rows):
    """Shard limits within a file: consecutive boundaries grouped while a shard stays within SHARD_ROWS.

    ``boundaries`` None means that a shard may start at any row. Below, two row groups of 600,000
    rows exceed SHARD_ROWS, but the third and the 200,000-row fourth fit in one shard.

    Examples
    --------
    >>> shard_cuts([0, 600_000, 1_200_000, 1_800_000], 2_000_000)
    [0, 600000, 1200000, 2000000]
    >>> shard_cuts(None, 2_500_000) == [0, SHARD_ROWS, 2 * SHARD_ROWS, 2_500_000]
    True
    """
    if boundaries is None:
        return [*range(0, num_rows, SHARD_ROWS), num_rows]
    cuts, previous = [0], 0
    for cut in [*boundaries[1:], num_rows]:
        if cut - cuts[-1] > SHARD_ROWS and previous > cuts[-1]:
            cuts.append(previous)
        previous = cut
    return [*cuts, num_rows]


def cut_blocks(parts, first, stop, num_rows):
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


def read_parts(readers, starts, lo, hi, batch_size, dim, check, ids_only=False):
    """Yield (covered stop, ordinals, ids[, vectors]) for the global ordinals [lo, hi), in order,
    read from the files whose ``readers`` start at the ordinals ``starts`` (a cumulative sum of
    their rows). ``check(reader, piece)`` returns the mask of a piece's rows to keep (None: all);
    ``ids_only`` reads the id column alone, unchecked."""
    for f in range(int(np.searchsorted(starts, lo, side="right")) - 1, len(readers)):
        base, reader = int(starts[f]), readers[f]
        if base >= hi:
            break
        start, end = max(lo - base, 0), min(hi - base, reader.num_rows)
        if start >= end:
            continue
        row = start
        if ids_only:
            for rows, ids in reader.read_ids(start, end, batch_size):
                row = rows.stop
                yield base + rows.stop, np.arange(base + rows.start, base + rows.stop), ids
        else:
            for piece in reader.read(start, end, batch_size, dim):
                row = piece.rows.stop
                ordinals = np.arange(base + piece.rows.start, base + piece.rows.stop)
                ids = ordinals if piece.ids is None else piece.ids
                vectors = piece.vectors
                keep = check(reader, piece)
                if keep is not None:
                    ordinals, ids, vectors = ordinals[keep], ids[keep], select_rows(vectors, keep)
                yield base + piece.rows.stop, ordinals, ids, vectors
        if row != end:  # a file changed since it was opened: never let blocks silently shrink
            message = f"the file ends at row {row}, but it had {reader.num_rows} rows when opened"
            raise DataError(message, file=reader.uri)


def join_rows(arrays, dtype, copy):
    """One array from consecutive row ranges: a view when ``copy`` is False and there is one."""
    if isinstance(arrays[0], torch.Tensor):
        joined = arrays[0] if len(arrays) == 1 else torch.cat(arrays)
        return joined.to(TORCH_DTYPES[dtype]).contiguous()
    if len(arrays) == 1 and not copy:
        return np.ascontiguousarray(arrays[0], dtype=dtype)
    # Into a C-ordered buffer: pieces of a Fortran-ordered .npy would otherwise stay column-major,
    # and every pass over a column-major block is several times slower.
    out = np.empty((sum(len(a) for a in arrays), *arrays[0].shape[1:]), dtype=dtype)
    return np.concatenate(arrays, out=out)


def select_rows(vectors, keep):
    """The rows of ``vectors`` (an array or a tensor on any device) where the numpy mask ``keep`` is set."""
    if isinstance(vectors, torch.Tensor):
        return vectors[torch.from_numpy(keep).to(vectors.device)]
    return vectors[keep]
