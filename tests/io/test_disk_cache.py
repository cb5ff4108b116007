"""Decoded blocks on a local disk past the RAM budget: later passes (and other processes' sources
of the same files) take them from there, bit for bit, within the disk's budget."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mega_taxonomy.io import BLOCK_ROWS, VectorSource
from mega_taxonomy.io import sources as sources_module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def files(tmp_path):
    """Two parquet files, 2.5 blocks of 8-d float32 rows with ids; row 70,000 is NaN."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5 * BLOCK_ROWS // 2, 8)).astype(np.float32)
    x[70_000, 3] = np.nan
    half = len(x) // 2
    for i, part in enumerate((slice(0, half), slice(half, None))):
        ids = np.arange(len(x))[part] * 10
        pq.write_table(pa.table({"id": ids, "v": list(x[part])}), tmp_path / f"part-{i}.parquet")
    return str(tmp_path / "part-*.parquet"), x


def blocks_of(source):
    return [(b.index, b.ordinals.copy(), b.ids.copy(), np.array(b.vectors)) for b in source.blocks()]


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[0] == w[0] and np.array_equal(g[1], w[1]) and np.array_equal(g[2], w[2])
        assert np.array_equal(g[3], w[3])


def test_later_passes_and_new_sources_read_no_file(files, tmp_path, monkeypatch):
    pattern, x = files
    plain = blocks_of(VectorSource(pattern, id_column="id", on_invalid="skip", cache_bytes=0))
    options = dict(id_column="id", on_invalid="skip", cache_bytes=0, disk_cache=tmp_path / "cache")
    source = VectorSource(pattern, **options)
    assert_same(blocks_of(source), plain)  # first pass: decoded, then written
    assert len(plain[1][1]) == BLOCK_ROWS - 1  # the NaN row skipped, and absent from the cached block too

    def no_reading(*args, **kwargs):
        raise AssertionError("a file was read")

    monkeypatch.setattr(sources_module.VectorSource, "_parts", no_reading)
    assert_same(blocks_of(source), plain)
    again = VectorSource(pattern, **options)  # another process's source of the same files
    assert_same(blocks_of(again), plain)
    assert np.array_equal(again.take([5, 150_000]), x[[5, 150_000]])


def test_budget_and_sources_apart(files, tmp_path):
    pattern, _ = files
    block_bytes = BLOCK_ROWS * 8 * 4 + 2 * BLOCK_ROWS * 8 + 3 * 128
    source = VectorSource(pattern, id_column="id", on_invalid="skip", cache_bytes=0, disk_cache=tmp_path / "c",
                          disk_cache_bytes=2 * block_bytes)
    first = blocks_of(source)
    folders = list((tmp_path / "c").iterdir())
    assert len(folders) == 1
    assert sorted(p.name for p in folders[0].glob("*.vectors.npy")) == ["00000000.vectors.npy", "00000001.vectors.npy"]
    assert_same(blocks_of(source), first)
    other = VectorSource(pattern, id_column="id", on_invalid="skip", cache_bytes=0, disk_cache=tmp_path / "c",
                         dim=8, batch_size=1000)  # read otherwise, the same blocks: the same folder
    assert_same(blocks_of(other), first)
    VectorSource(pattern, on_invalid="skip", cache_bytes=0, disk_cache=tmp_path / "c").blocks().__next__()
    assert len(list((tmp_path / "c").iterdir())) == 2  # without the id column: another source, its own folder
