"""Discovery: globs, directories and lists name the same files in sorted order; opening reads metadata only."""

import numpy as np
import pyarrow.parquet as pq
from layouts import Spy, split_points, write_split

from mega_taxonomy.io import VectorSource

DIM = 8  # of the data fixture


def test_metadata_is_cheap(tmp_path, files, data, monkeypatch):
    vectors, ids = data
    write_split(files, tmp_path / "fixed", vectors, ids, 3, kind="fixed", row_group_size=10_000)
    write_split(files, tmp_path / "list", vectors, ids, 3, kind="list", row_group_size=10_000)
    batches = Spy(monkeypatch, pq.ParquetFile, "iter_batches")
    groups = Spy(monkeypatch, pq.ParquetFile, "read_row_group")
    reads = Spy(monkeypatch, pq.ParquetFile, "read")
    fixed = VectorSource(tmp_path / "fixed", id_column="id")
    assert (len(fixed), fixed.dim, fixed.dtype, fixed.n_blocks) == (len(vectors), DIM, np.float32, 3)
    assert batches.calls == [] and groups.calls == [] and reads.calls == []  # footers only
    listed = VectorSource(tmp_path / "list", id_column="id")
    assert (len(listed), listed.dim, listed.dtype) == (len(vectors), DIM, np.float32)
    # a list<float> file has no dimension in its footer: the first rows of the first file tell it
    assert len(batches.calls) == 1 and groups.calls == [] and reads.calls == []
    assert [s.start for s in listed.shards] == split_points(len(vectors), 3)[:-1]


def test_glob_directory_and_lists_are_sorted_and_unique(tmp_path, files):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    (tmp_path / "sub").mkdir()
    files.parquet(tmp_path / "b.parquet", x[5:8])
    files.parquet(tmp_path / "a.parquet", x[:5])
    files.npy(tmp_path / "sub" / "c.npy", x[8:])
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / ".a.parquet.crc").write_bytes(b"junk")
    (tmp_path / "_temporary").mkdir()  # hidden folders (unfinished Spark output) are skipped too
    files.parquet(tmp_path / "_temporary" / "part-9.parquet", x)
    names = ["a.parquet", "b.parquet", "sub/c.npy"]
    directory = VectorSource(tmp_path)
    assert directory.uris == [str(tmp_path / name) for name in names]
    (block,) = directory.blocks()
    assert np.array_equal(block.vectors, x)
    assert VectorSource(f"{tmp_path}/*.parquet").uris == directory.uris[:2]
    assert VectorSource(f"{tmp_path}/*").uris == directory.uris  # a glob skips _SUCCESS and .crc
    listed = VectorSource(
        [tmp_path / "sub" / "c.npy", f"{tmp_path}/b.*", tmp_path / "a.parquet", tmp_path / "b.parquet"]
    )
    assert listed.uris == directory.uris
    assert VectorSource(f"file://{tmp_path}/a.parquet").uris == directory.uris[:1]
