"""VectorSource: formats and in-memory data give the same blocks; take, ids, ranges, pickling, skipped rows.

Layouts and shards are tested in test_shards.py, file discovery in test_discovery.py, the block cache
in test_cache.py; their shared helpers are in layouts.py."""

import doctest
import logging
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from layouts import Spy, assert_same_blocks, collect, write_split

from mega_taxonomy.io import BLOCK_ROWS, Block, Shard, VectorSource, discovery, formats, shards, sources, validate

DIM = 8  # of the data fixture


@pytest.mark.parametrize(
    "fmt, kind", [("parquet", "large"), ("parquet", "fixed"), ("npy", None), ("fvecs", None)]
)
def test_formats_give_bit_identical_blocks(tmp_path, files, data, fmt, kind):
    vectors, _ = data
    want = collect(VectorSource(vectors))
    root = write_split(files, tmp_path, vectors, None, 3, fmt=fmt, kind=kind, row_group_size=20_000)
    assert_same_blocks(collect(VectorSource(str(root), batch_size=30_000)), want)


def test_mixed_formats_in_one_source(tmp_path, files, data):
    vectors, _ = data
    files.npy(tmp_path / "a.npy", vectors[:1000])
    files.vecs(tmp_path / "b.fvecs", vectors[1000:2000])
    files.parquet(tmp_path / "c.parquet", vectors[2000:3000])
    files.npy(tmp_path / "d.npy", np.asfortranarray(vectors[3000:4000]))
    source = VectorSource(tmp_path)
    assert [u.rsplit("/", 1)[-1] for u in source.uris] == ["a.npy", "b.fvecs", "c.parquet", "d.npy"]
    (block,) = source.blocks()
    assert np.array_equal(block.vectors, vectors[:4000]) and block.vectors.flags.c_contiguous


def test_memory_filesystem_reads_every_format_remotely(memory_dir, files, data):
    vectors, ids = data
    x, i = vectors[:70_000], ids[:70_000]
    files.parquet(f"{memory_dir}/a.parquet", x[:20_000], i[:20_000], "list", 6_000)
    files.parquet(f"{memory_dir}/b.parquet", x[20_000:30_000], i[20_000:30_000], "fixed", 4_000)
    files.npy(f"{memory_dir}/c.npy", x[30_000:40_000])
    files.npy(f"{memory_dir}/d.npy", np.asfortranarray(x[40_000:50_000]))
    files.vecs(f"{memory_dir}/e.fvecs", x[50_000:60_000])
    bytes_ = np.random.default_rng(2).integers(0, 256, (10_000, 8)).astype(np.uint8)
    files.vecs(f"{memory_dir}/f.bvecs", bytes_, bvecs=True)
    want = np.concatenate([x[:60_000], bytes_.astype(np.float32)])
    source = VectorSource(f"{memory_dir}/*", storage_options={"secret": "hunter2"}, batch_size=7_000)
    assert all(uri.startswith("memory://") for uri in source.uris) and len(source) == 70_000
    assert source.dtype == np.float32 and source.dim == 8
    got = np.concatenate([b.vectors for b in source.blocks()])
    assert np.array_equal(got, want)
    rows = np.array([69_999, 45_000, 3, 25_000, 55_000, 35_000, 45_000])
    assert np.array_equal(source.take(rows), want[rows])
    assert "hunter2" not in repr(source)
    # ids only in the parquet files: a source of those two reads them remotely too
    pq_source = VectorSource([f"{memory_dir}/b.parquet", f"{memory_dir}/a.parquet"], id_column="id")
    (block,) = pq_source.blocks()
    assert np.array_equal(block.ids, i[:30_000]) and np.array_equal(block.vectors, x[:30_000])


def test_numpy_blocks_are_views(data):
    vectors, _ = data
    source = VectorSource(vectors)
    assert source.uris == ["<array>"] and source.shards == [Shard("<array>", 0, len(vectors), 0)]
    for block in source.blocks():
        assert np.shares_memory(block.vectors, vectors)
        assert np.array_equal(block.ids, block.ordinals)


def test_integer_arrays_become_float32():
    source = VectorSource(np.arange(12, dtype=np.int16).reshape(4, 3))
    (block,) = source.blocks()
    assert source.dtype == block.vectors.dtype == np.float32
    assert np.array_equal(source.take([3]), [[9.0, 10.0, 11.0]])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_parquet_dtype_is_kept(tmp_path, files, dtype):
    x = np.random.default_rng(3).standard_normal((100, 5)).astype(dtype)
    source = VectorSource(files.parquet(tmp_path / "x.parquet", x))
    (block,) = source.blocks()
    assert source.dtype == block.vectors.dtype == dtype and np.array_equal(block.vectors, x)


def test_dtype_is_the_widest_of_the_files(tmp_path, files):
    x = np.random.default_rng(4).standard_normal((10, 4))
    files.parquet(tmp_path / "a.parquet", x.astype(np.float16))
    files.npy(tmp_path / "b.npy", x.astype(np.float32))
    source = VectorSource(tmp_path)
    (block,) = source.blocks()
    assert source.dtype == np.float32
    assert np.array_equal(block.vectors[10:], x.astype(np.float32))


def torch_devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", torch_devices())
def test_torch_tensors_give_slices_on_their_device(data, device):
    vectors, _ = data
    tensor = torch.from_numpy(vectors).to(device)
    source = VectorSource(tensor)
    assert source.dtype == np.float32 and source.dim == DIM and len(source) == len(vectors)
    for block in source.blocks():
        assert isinstance(block.vectors, torch.Tensor) and block.vectors.device == tensor.device
        assert block.vectors.data_ptr() == tensor[block.ordinals[0]].data_ptr()  # a slice, not a copy
    as_numpy = [(b.index, b.ordinals, b.ids, b.vectors.cpu().numpy()) for b in source.blocks()]
    assert_same_blocks(as_numpy, collect(VectorSource(vectors)))
    taken = source.take(torch.tensor([5, 1, 5]))
    assert isinstance(taken, torch.Tensor) and taken.device == tensor.device
    assert torch.equal(taken.cpu(), torch.from_numpy(vectors[[5, 1, 5]]))


def test_torch_half_and_int_tensors():
    half = VectorSource(torch.ones(3, 2, dtype=torch.float16))
    assert half.dtype == np.float16 and next(half.blocks()).vectors.dtype == torch.float16
    brain = VectorSource(torch.ones(3, 2, dtype=torch.bfloat16))  # numpy has no bfloat16: torch's
    assert brain.dtype == torch.bfloat16 and next(brain.blocks()).vectors.dtype == torch.bfloat16
    assert brain.take([2, 0]).dtype == torch.bfloat16
    ints = VectorSource(torch.arange(6).reshape(3, 2))
    assert ints.dtype == np.float32 and next(ints.blocks()).vectors.dtype == torch.float32


def test_dictionary_encoded_float16_is_pointed_out(tmp_path, caplog):
    """pyarrow's writer dictionary-encodes a float16 column by default (it decodes ~6x slower):
    opening such files logs one warning naming them; plain float16 and float32 files log none."""
    import pyarrow as pa

    x = np.random.default_rng(0).normal(size=(500, 8))
    for name, dtype, options in [("dict16", np.float16, {}), ("plain16", np.float16, {"use_dictionary": False}),
                                 ("dict32", np.float32, {})]:
        table = pa.table({"emb": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(dtype).reshape(-1)), 8)})
        for part in range(2):
            (tmp_path / name).mkdir(exist_ok=True)
            pq.write_table(table, tmp_path / name / f"part-{part}.parquet", **options)
    with caplog.at_level(logging.WARNING, logger="mega_taxonomy.io.sources"):
        VectorSource(str(tmp_path / "dict16"))
    (record,) = caplog.records
    assert "2 of 2 files" in record.message and "part-0.parquet" in record.message
    assert "use_dictionary=False" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mega_taxonomy.io.sources"):
        VectorSource(str(tmp_path / "plain16"))
        VectorSource(str(tmp_path / "dict32"))  # not flagged: float32 dictionaries outgrow their page, and go plain
    assert not caplog.records


def test_take_returns_rows_in_the_order_given(tmp_path, files, data, monkeypatch):
    vectors, ids = data
    write_split(files, tmp_path, vectors, ids, 20, row_group_size=1_000)
    source = VectorSource(tmp_path, id_column="id")
    groups = Spy(monkeypatch, pq.ParquetFile, "read_row_group")
    rows = np.array([149_999, 0, 77_777, 77_777, 5, 120_000, 0])
    assert np.array_equal(source.take(rows), vectors[rows])
    assert len(groups.calls) == 4  # one read per row group holding wanted rows (0 and 5 share one)
    assert source.take([]).shape == (0, DIM)
    with pytest.raises(IndexError):
        source.take([len(vectors)])
    with pytest.raises(IndexError):
        source.take([-1])


@pytest.mark.parametrize("fmt", ["npy", "fvecs"])
def test_take_from_memory_mapped_files(tmp_path, files, data, fmt):
    vectors, _ = data
    write_split(files, tmp_path, vectors, None, 3, fmt=fmt)
    source = VectorSource(tmp_path)
    rows = np.random.default_rng(5).integers(0, len(vectors), 1000)
    assert np.array_equal(source.take(rows), vectors[rows])


def test_id_blocks_read_only_the_id_column(tmp_path, files, data, monkeypatch):
    vectors, ids = data
    write_split(files, tmp_path, vectors, ids, 3, row_group_size=20_000)
    source = VectorSource(tmp_path, id_column="id", batch_size=9_999)
    batches = Spy(monkeypatch, pq.ParquetFile, "iter_batches")
    got = list(source.id_blocks())
    assert batches.calls and all(kw["columns"] == ["id"] for _, kw in batches.calls)
    assert [i for i, _, _ in got] == [0, 1, 2]
    for index, ordinals, block_ids in got:
        stop = min((index + 1) * BLOCK_ROWS, len(vectors))
        assert np.array_equal(ordinals, np.arange(index * BLOCK_ROWS, stop))
        assert np.array_equal(block_ids, ids[ordinals])
    assert [i for i, _, _ in source.id_blocks(1, 2)] == [1]


def test_id_blocks_without_id_column_read_nothing(tmp_path, files, data, monkeypatch):
    vectors, _ = data
    source = VectorSource(files.parquet(tmp_path / "x.parquet", vectors))
    batches = Spy(monkeypatch, pq.ParquetFile, "iter_batches")
    (i, ordinals, ids), *rest = source.id_blocks()
    assert batches.calls == [] and len(rest) == 2 and ordinals is ids
    assert np.array_equal(ordinals, np.arange(BLOCK_ROWS))


def test_block_ranges(tmp_path, files, data):
    vectors, _ = data
    root = write_split(files, tmp_path, vectors, None, 3, row_group_size=30_000)
    source = VectorSource(root, cache_bytes=0)
    everything = collect(source)
    assert_same_blocks(collect(source, start=1, stop=2), everything[1:2])
    assert_same_blocks(collect(source, start=2), everything[2:])
    assert collect(source, start=3) == []
    with pytest.raises(IndexError):
        list(source.blocks(-1))


def test_file_blocks_are_read_only_copies(tmp_path, files, data):
    vectors, _ = data
    source = VectorSource(files.npy(tmp_path / "x.npy", vectors))
    block = next(source.blocks())
    assert isinstance(block, Block) and block.vectors.flags.c_contiguous and block.vectors.flags.owndata
    with pytest.raises(ValueError):
        block.vectors[0, 0] = 1.0


def test_pickling_keeps_the_files_and_options(tmp_path, files, data):
    vectors, ids = data
    source = VectorSource(write_split(files, tmp_path, vectors, ids, 3), id_column="id", batch_size=10_000)
    clone = pickle.loads(pickle.dumps(source))
    assert clone.uris == source.uris and clone.batch_size == 10_000
    assert_same_blocks(collect(clone), collect(source))


def test_of_returns_a_source_unchanged(data):
    vectors, _ = data
    source = VectorSource(vectors)
    assert VectorSource.of(source) is source
    assert isinstance(VectorSource.of(vectors), VectorSource)
    assert repr(source) == "VectorSource(<ndarray (150000, 8)>, files=1, rows=150000, dim=8, dtype=float32)"


def test_device_is_where_the_vectors_are(tmp_path, files, data):
    vectors, _ = data
    assert VectorSource(vectors).device == torch.device("cpu")
    assert VectorSource(torch.from_numpy(vectors)).device == torch.device("cpu")
    files.parquet(str(tmp_path / "a.parquet"), vectors[:100])
    assert VectorSource(str(tmp_path)).device == torch.device("cpu")


def test_docstring_examples_run():
    for module in (sources, validate, formats, shards, discovery):
        assert doctest.testmod(module).failed == 0


def test_remote_npy_and_vecs_take(memory_dir, files, data):
    vectors, _ = data
    x = vectors[:5000]
    files.npy(f"{memory_dir}/a.npy", np.asfortranarray(x[:2000]))
    files.vecs(f"{memory_dir}/b.fvecs", x[2000:])
    source = VectorSource(memory_dir)
    rows = np.array([4999, 0, 1999, 2000, 10, 10])
    assert np.array_equal(source.take(rows), x[rows])


def test_skipped_rows_are_counted_once_and_logged(tmp_path, files, data, caplog):
    vectors, _ = data
    x = vectors[:140_000].copy()
    x[[3, 70_000, 139_999], 2] = np.nan
    files.npy(tmp_path / "a.npy", x[:100_000])
    files.npy(tmp_path / "b.npy", x[100_000:])
    source = VectorSource(tmp_path, on_invalid="skip", cache_bytes=0)
    with caplog.at_level(logging.WARNING, logger="mega_taxonomy.io.sources"):
        blocks = list(source.blocks())
    assert [len(b.ordinals) for b in blocks] == [BLOCK_ROWS - 1, BLOCK_ROWS - 1, 140_000 - 2 * BLOCK_ROWS - 1]
    assert not np.isin([3, 70_000, 139_999], np.concatenate([b.ordinals for b in blocks])).any()
    a, b = (str(tmp_path / name) for name in ("a.npy", "b.npy"))
    assert source.skipped == {a: 2, b: 1}
    (record,) = caplog.records
    assert "3 invalid rows" in record.message and f"{a}: 2" in record.message and f"{b}: 1" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mega_taxonomy.io.sources"):
        list(source.blocks())  # read again (no cache): the same rows are not counted twice
    assert source.skipped == {a: 2, b: 1} and caplog.records == []
    kept = np.concatenate([b.ordinals for b in blocks])
    assert np.array_equal(np.concatenate([b.vectors for b in blocks]), x[kept])


def test_blocks_of_a_fortran_ordered_npy_are_row_major(tmp_path, files, data):
    """Column-major blocks make every later pass several times slower: they are copied row-major."""
    vectors, _ = data
    files.npy(tmp_path / "f.npy", np.asfortranarray(vectors[:70_000]))
    for block in VectorSource(str(tmp_path / "f.npy")).blocks():
        assert block.vectors.flags.c_contiguous
        assert np.array_equal(block.vectors, vectors[block.ordinals])


def test_unchecked_blocks_are_the_blocks_until_marked_checked(tmp_path):
    """In-memory blocks can be had before their rows are validated (for a check on the GPU): the
    same rows as ``blocks`` gives, bad ones included, until the block is marked checked."""
    X = np.random.default_rng(0).normal(size=(BLOCK_ROWS + 10, 3)).astype(np.float32)
    X[BLOCK_ROWS + 2, 1] = np.nan
    source = VectorSource(X, on_invalid="skip")
    expected = list(VectorSource(X, on_invalid="skip").blocks())
    pairs = list(source.unchecked_blocks())
    assert [checked for _, checked in pairs] == [False, False]
    block, bad = pairs[0][0], pairs[1][0]
    for field in ("ordinals", "ids", "vectors"):
        np.testing.assert_array_equal(getattr(block, field), getattr(expected[0], field))
    assert len(bad.ordinals) == 10 and np.isnan(bad.vectors).any()  # not validated: the NaN row is there
    source.mark_checked(block)
    assert [(b.index, checked) for b, checked in source.unchecked_blocks()] == [(0, True), (1, False)]
    assert next(source.blocks(0, 1)) is block  # the cached block: not validated again
    (checked,) = source.blocks(1, 2)
    assert BLOCK_ROWS + 2 not in checked.ordinals and len(checked.ordinals) == 9
    assert [c for _, c in source.unchecked_blocks(1)] == [True]  # validated (and cached) by blocks
    np.save(tmp_path / "x.npy", X[:10])
    files = VectorSource(str(tmp_path / "x.npy"))
    assert [c for _, c in files.unchecked_blocks()] == [True]  # files are validated as they are read
