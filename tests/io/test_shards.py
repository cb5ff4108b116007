"""Blocks and shards: any cut of the data into files and row groups gives the same blocks; big files are
split into shards at row-group boundaries."""

import numpy as np
import pytest
from layouts import assert_same_blocks, collect, write_split

from mega_taxonomy.io import Shard, VectorSource


@pytest.mark.parametrize(
    "n_files, row_group_size, batch_size",
    [(1, None, 65_536), (1, 10_000, 65_536), (3, 7_777, 4_096), (3, 50_000, 1_000), (20, 3_000, 100_000)],
)
def test_layouts_give_bit_identical_blocks(
    tmp_path, files, data, reference, n_files, row_group_size, batch_size
):
    vectors, ids = data
    root = write_split(files, tmp_path, vectors, ids, n_files, row_group_size=row_group_size)
    source = VectorSource(str(root), id_column="id", batch_size=batch_size)
    assert len(source) == len(vectors) and source.n_blocks == 3 and len(source.uris) == n_files
    assert_same_blocks(collect(source), reference)


def test_big_files_are_split_into_shards_at_row_groups(tmp_path, files):
    n = 1_200_000
    x = np.zeros((n, 1), np.float16)
    files.parquet(tmp_path / "a.parquet", x[:1000], kind="fixed")
    files.parquet(tmp_path / "b.parquet", x, kind="fixed", row_group_size=300_000)
    files.npy(tmp_path / "c.npy", np.zeros((2_500_000, 1), np.float16))
    source = VectorSource(tmp_path)
    b, c = (str(tmp_path / name) for name in ("b.parquet", "c.npy"))
    assert source.shards[1:] == [
        Shard(b, 0, 900_000, 1000),
        Shard(b, 900_000, n, 901_000),
        Shard(c, 0, 1 << 20, 1000 + n),
        Shard(c, 1 << 20, 2 << 20, 1000 + n + (1 << 20)),
        Shard(c, 2 << 20, 2_500_000, 1000 + n + (2 << 20)),
    ]
    assert sum(s.row_stop - s.row_start for s in source.shards) == len(source)
