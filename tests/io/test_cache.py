"""The block cache: a second pass reads nothing when the data fits, a small budget re-reads with the same
results, and take reads the rows of cached blocks from the cache."""

import numpy as np
import pytest
from layouts import Spy, assert_same_blocks, collect, write_split

from mega_taxonomy.io import BLOCK_ROWS, VectorSource
from mega_taxonomy.io.parquet import ParquetReader


def test_second_pass_reads_nothing_when_the_data_fits(tmp_path, files, data, reference, monkeypatch):
    vectors, ids = data
    write_split(files, tmp_path, vectors, ids, 3, row_group_size=25_000)
    reads = Spy(monkeypatch, ParquetReader, "read")
    source = VectorSource(tmp_path, id_column="id")
    first = collect(source)
    n_reads = len(reads.calls)
    assert n_reads >= 3
    second = collect(source)
    assert len(reads.calls) == n_reads  # all from the cache
    assert_same_blocks(first, reference)
    assert_same_blocks(second, reference)


@pytest.mark.parametrize("cache_bytes", [0, 1, 3_500_000])
def test_small_cache_budget_rereads_with_identical_results(
    tmp_path, files, data, reference, monkeypatch, cache_bytes
):
    vectors, ids = data
    write_split(files, tmp_path, vectors, ids, 3, row_group_size=25_000)
    reads = Spy(monkeypatch, ParquetReader, "read")
    source = VectorSource(tmp_path, id_column="id", cache_bytes=cache_bytes)
    first = collect(source)
    n_reads = len(reads.calls)
    for _ in range(2):
        assert_same_blocks(collect(source), reference)
    assert_same_blocks(first, reference)
    # a full block is 65,536 x (8 x 4 bytes + 8 for its ordinal + 8 for its id) = 3 MiB: 3.5 MB keeps
    # block 0 only (the first that fits), as the 0.9 MB of block 2 would exceed the budget
    assert source._cache.used == (BLOCK_ROWS * 48 if cache_bytes == 3_500_000 else 0)
    assert len(reads.calls) > n_reads  # what does not fit is read again


def test_take_reads_cached_blocks_from_the_cache(tmp_path, monkeypatch):
    """Rows of cached blocks come from the cache (no file is read for them), the others from the
    files; rows skipped as invalid stay out either way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mega_taxonomy.io import parquet

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3 * 65_536 + 100, 4)).astype(np.float32)
    X[70_000, 2] = np.nan  # in block 1
    for i, part in enumerate(np.array_split(X, 2)):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), 4)
        pq.write_table(pa.table({"emb": emb}), tmp_path / f"part-{i}.parquet", row_group_size=20_000)
    block_bytes = 65_536 * 4 * 4 + 65_536 * 8
    source = VectorSource(str(tmp_path), on_invalid="skip", cache_bytes=2 * block_bytes + 1024)
    for _ in source.blocks():  # blocks 0 and 1 fit in the cache, 2 and 3 do not
        pass
    wanted = np.array([5, 70_000, 70_001, 196_650, 65_535, 131_072, 3])
    reads = []
    real_take = parquet.ParquetReader.take
    monkeypatch.setattr(parquet.ParquetReader, "take", lambda self, rows, dim: reads.append(len(rows)) or
                        real_take(self, rows, dim))
    got = source.take(wanted)
    keep = wanted != 70_000
    np.testing.assert_array_equal(got, X[wanted[keep]])
    assert sum(reads) == 2  # only the rows of blocks 2 and 3 were read from files
