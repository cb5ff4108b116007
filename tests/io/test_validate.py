"""Bad input raises DataError naming the file, the row and the column; on_invalid="skip" drops bad rows."""

import contextlib
import logging

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mega_taxonomy.errors import ConfigError, DataError
from mega_taxonomy.io import VectorSource, validate
from mega_taxonomy.io.reader import Piece


def read_all(source):
    return [block for block in source.blocks()]


@contextlib.contextmanager
def raises(*parts, error=DataError):
    """Like pytest.raises(error), and the message must contain every one of ``parts``."""
    with pytest.raises(error) as info:
        yield info
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"


def float_list(rows, value_type=pa.float32()):
    return pa.array(rows, pa.list_(value_type))


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((3000, 8), dtype=np.float32)


# ---- row values: NaN / Inf -------------------------------------------------------------------


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "value inf"), (-np.inf, "-inf")])
def test_non_finite_parquet_values_name_file_row_column_and_dimension(tmp_path, files, x, bad, word):
    files.parquet(tmp_path / "a.parquet", x[:1000])
    y = x[1000:].copy()
    y[1234, 5] = bad
    y[1500, 1] = bad  # a later bad row: the first one is named
    files.parquet(tmp_path / "b.parquet", y, row_group_size=500)
    source = VectorSource(tmp_path)
    with raises("b.parquet", "row 1234", "column 'emb'", "dimension 5", word):
        read_all(source)


@pytest.mark.parametrize("fmt", ["npy", "fvecs"])
def test_non_finite_npy_and_fvecs_rows(tmp_path, files, x, fmt):
    y = x.copy()
    y[2999, 0] = np.nan
    if fmt == "npy":
        files.npy(tmp_path / "v.npy", y)
    else:
        files.vecs(tmp_path / "v.fvecs", y)
    with raises(f"v.{fmt}", "row 2999", "dimension 0", "NaN"):
        read_all(VectorSource(tmp_path, batch_size=1000))


def test_non_finite_in_arrays_and_tensors(x):
    y = x.copy()
    y[77, 3] = np.inf
    with raises("<array>", "row 77", "dimension 3", "inf"):
        read_all(VectorSource(y))
    with raises("<array>", "row 77", "dimension 3", "inf"):
        read_all(VectorSource(torch.from_numpy(y)))
    with raises("<array>", "row 77"):
        VectorSource(y).take([1, 77])


def test_take_validates_the_rows_it_returns(tmp_path, files, x):
    y = x.copy()
    y[10, 2] = np.nan
    source = VectorSource(files.parquet(tmp_path / "a.parquet", y, row_group_size=100))
    assert np.array_equal(source.take([11, 9]), y[[11, 9]])
    with raises("a.parquet", "row 10", "column 'emb'", "dimension 2"):
        source.take([11, 10])


# ---- dimension -------------------------------------------------------------------------------


def test_wrong_dimension_vs_first_file_at_open(tmp_path, files, x):
    files.npy(tmp_path / "a.npy", x)
    files.npy(tmp_path / "b.npy", x[:, :7])
    with raises("b.npy", "dimension 7", "a.npy", "dimension 8"):
        VectorSource(tmp_path)


def test_wrong_dimension_of_a_fixed_size_list_file(tmp_path, files, x):
    files.parquet(tmp_path / "a.parquet", x)
    files.parquet(tmp_path / "b.parquet", x[:, :6], kind="fixed")
    with raises("b.parquet", "column 'emb'", "dimension 6"):
        VectorSource(tmp_path)


def test_wrong_dimension_vs_dim_option(tmp_path, files, x):
    with raises("a.npy", "dimension 8", "dim=", "9"):
        VectorSource(files.npy(tmp_path / "a.npy", x), dim=9)
    with raises("<array>", "dim="):
        VectorSource(x, dim=9)
    # list<float> rows can each differ: they are checked as they are read
    source = VectorSource(files.parquet(tmp_path / "b.parquet", x), dim=9)
    with raises("b.parquet", "row 0", "column 'emb'", "8 values", "dimension 9"):
        read_all(source)


def test_wrong_dimension_of_a_later_list_file(tmp_path, files, x):
    files.parquet(tmp_path / "a.parquet", x)
    files.parquet(tmp_path / "b.parquet", x[:, :7])
    with raises("b.parquet", "row 0", "column 'emb'", "7 values", "dimension 8"):
        read_all(VectorSource(tmp_path))


def test_ragged_lists_inside_a_file(tmp_path, files):
    rows = [[1.0, 2.0, 3.0]] * 10
    rows[6] = [1.0, 2.0]
    for kind in (pa.list_(pa.float32()), pa.large_list(pa.float32())):
        path = files.table(tmp_path / "r.parquet", {"emb": pa.array(rows, kind)})
        with raises("r.parquet", "row 6", "column 'emb'", "2 values", "dimension 3"):
            read_all(VectorSource(path))


def test_mixed_dimensions_in_fvecs(tmp_path, files, x):
    path = tmp_path / "m.fvecs"
    files.vecs(path, x[:10])
    with open(path, "ab") as f:  # row 10 has 7 values
        f.write(np.int32(7).tobytes() + x[10, :7].tobytes())
    with raises("m.fvecs", "row 10", "mixed dimensions"):
        VectorSource(path)


def test_truncated_fvecs(tmp_path, files, x):
    path = files.vecs(tmp_path / "t.fvecs", x[:10])
    with open(path, "r+b") as f:
        f.truncate(9 * 36 + 20)
    with raises("t.fvecs", "row 9", "truncated"):
        VectorSource(path)


# ---- nulls -----------------------------------------------------------------------------------


def test_null_vector(tmp_path, files):
    rows = [[1.0, 2.0]] * 8
    rows[3] = None
    path = files.table(tmp_path / "n.parquet", {"emb": pa.array(rows, pa.list_(pa.float32()))})
    with raises("n.parquet", "row 3", "column 'emb'", "null vector"):
        read_all(VectorSource(path))


def test_null_fixed_size_vector(tmp_path, files):
    # apache/arrow#35692: pyarrow 25 writes such a file but fails on its whole row group; then say why.
    rows = [[1.0, 2.0]] * 8
    rows[3] = None
    try:
        path = files.table(tmp_path / "n.parquet", {"emb": pa.array(rows, pa.list_(pa.float32(), 2))})
    except pa.ArrowNotImplementedError:
        pytest.skip(f"pyarrow {pa.__version__} cannot write a null fixed_size_list entry")
    try:
        pq.read_table(path)
    except pa.ArrowInvalid:
        with raises("n.parquet", "row 0", "column 'emb'", "a null vector", f"pyarrow {pa.__version__} cannot read"):
            read_all(VectorSource(path))
    else:
        with raises("n.parquet", "row 3", "column 'emb'", "null vector"):
            read_all(VectorSource(path))


def test_null_value_inside_a_vector(tmp_path, files):
    rows = [[1.0, 2.0, 3.0]] * 8
    rows[4] = [1.0, 2.0, None]
    path = files.table(tmp_path / "e.parquet", {"emb": float_list(rows)})
    with raises("e.parquet", "row 4", "column 'emb'", "null value at dimension 2"):
        read_all(VectorSource(path))


# ---- columns ---------------------------------------------------------------------------------


def test_non_numeric_columns(tmp_path, files):
    path = files.table(
        tmp_path / "s.parquet",
        {
            "emb": float_list([[1.0]]),
            "name": pa.array(["a"]),
            "words": pa.array([["a"]], pa.list_(pa.string())),
        },
    )
    with raises("s.parquet", "column 'name'", "string", "not a vector column"):
        VectorSource(path, column="name")
    with raises("s.parquet", "column 'words'", "string", "not numeric"):
        VectorSource(path, column="words")
    with raises("<array>", "not numeric"):
        VectorSource(np.array([["a", "b"]]))


def test_missing_column_names_the_existing_ones(tmp_path, files):
    path = files.table(tmp_path / "m.parquet", {"emb": float_list([[1.0]]), "id": pa.array([1])})
    with raises("m.parquet", "column 'vec'", "'emb'", "'id'"):
        VectorSource(path, column="vec")


def test_several_candidate_columns(tmp_path, files):
    path = files.table(tmp_path / "two.parquet", {"a": float_list([[1.0]]), "b": float_list([[2.0]])})
    with raises("two.parquet", "'a'", "'b'", "column="):
        VectorSource(path)
    assert next(VectorSource(path, column="b").blocks()).vectors.tolist() == [[2.0]]


def test_no_candidate_column(tmp_path, files):
    path = files.table(tmp_path / "none.parquet", {"x": pa.array([1.0]), "y": pa.array(["a"])})
    with raises("none.parquet", "no list<float> column", "'x'", "'y'"):
        VectorSource(path)


def test_integer_lists_can_be_chosen_explicitly(tmp_path, files):
    path = files.table(tmp_path / "i.parquet", {"emb": pa.array([[1, 2], [3, 4]], pa.list_(pa.int8()))})
    with raises("i.parquet", "no list<float> column"):
        VectorSource(path)
    source = VectorSource(path, column="emb")
    assert source.dtype == np.float32 and next(source.blocks()).vectors.tolist() == [[1, 2], [3, 4]]


# ---- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.parquet", "empty.npy", "empty.fvecs", "empty.bvecs"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with raises(name, "empty file (0 bytes)"):
        VectorSource(tmp_path / name)


def test_zero_rows_in_total(tmp_path, files, x):
    files.parquet(tmp_path / "a.parquet", x[:0])
    files.npy(tmp_path / "b.npy", x[:0])
    with raises("a.parquet", "b.npy", "no rows"):
        VectorSource(tmp_path)
    with raises("<array>", "no rows"):
        VectorSource(x[:0])
    # files without rows are fine next to others
    files.parquet(tmp_path / "c.parquet", x[:5])
    assert len(VectorSource(tmp_path)) == 5


def test_corrupt_and_truncated_parquet(tmp_path, files, x, memory_dir):
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all" * 10)
    with raises("garbage.parquet", "corrupt or truncated"):
        VectorSource(tmp_path / "garbage.parquet")
    with fsspec.open(f"{memory_dir}/remote.parquet", "wb") as f:
        f.write(b"not parquet either" * 10)
    with raises("memory://", "remote.parquet", "corrupt or truncated"):
        VectorSource(f"{memory_dir}/remote.parquet")
    path = files.parquet(tmp_path / "cut.parquet", x)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with raises("cut.parquet", "corrupt or truncated"):
        VectorSource(path)


def test_corrupt_page_is_reported_at_read_with_its_row_group(tmp_path, files, x):
    path = files.parquet(tmp_path / "p.parquet", x, row_group_size=1000, write_page_checksum=True)
    chunk = pq.ParquetFile(path).metadata.row_group(2).column(0)
    data = bytearray(open(path, "rb").read())
    middle = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    open(path, "wb").write(bytes(data))
    source = VectorSource(path)  # the footer is intact
    with raises("p.parquet", "row group 2", "row 2000"):
        read_all(source)
    with raises("p.parquet", "row group 2"):
        source.take([2500])


def test_corrupt_npy(tmp_path, files, x):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with raises("bad.npy", "not a readable .npy file"):
        VectorSource(tmp_path / "bad.npy")
    path = files.npy(tmp_path / "cut.npy", x)
    with open(path, "r+b") as f:
        f.truncate(1000)
    with raises("cut.npy", "truncated"):
        VectorSource(path)
    with raises("flat.npy", "2-D", "(5,)"):
        VectorSource(files.npy(tmp_path / "flat.npy", np.zeros(5, np.float32)))
    with raises("str.npy", "not numeric"):
        VectorSource(files.npy(tmp_path / "str.npy", np.array([["a", "b"]])))


def test_unreadable_uris(tmp_path, files, x, memory_dir):
    with raises("missing.parquet", "no such file"):
        VectorSource(tmp_path / "missing.parquet")
    with raises("*.parquet", "matches no files"):
        VectorSource(f"{tmp_path}/*.parquet")
    with raises("nothing.parquet", "no such file"):
        VectorSource(f"{memory_dir}/nothing.parquet")
    (tmp_path / "notes.txt").write_text("hello")
    with raises("notes.txt", "unknown file type"):
        VectorSource(tmp_path / "notes.txt")
    with raises(str(tmp_path), "no .parquet/.npy/.fvecs/.bvecs files found"):
        VectorSource(tmp_path)
    with raises("nosuchprotocol://x", "cannot list"):
        VectorSource("nosuchprotocol://x/a.parquet")
    with raises("no input files"):
        VectorSource([])


# ---- ids -------------------------------------------------------------------------------------


def test_id_column_errors(tmp_path, files, x):
    path = files.table(
        tmp_path / "i.parquet",
        {
            "emb": files.vector_array(x[:4]),
            "key": pa.array([1.5, 2.5, 3.5, 4.5]),
            "id": pa.array([1, 2, None, 4]),
        },
    )
    with raises("i.parquet", "column 'uid'", "'emb'", "'key'"):
        VectorSource(path, id_column="uid")
    with raises("i.parquet", "column 'key'", "integers", "double"):
        VectorSource(path, id_column="key")
    source = VectorSource(path, id_column="id")
    with raises("i.parquet", "row 2", "column 'id'", "null id"):
        read_all(source)
    with raises("i.parquet", "row 2", "column 'id'", "null id"):
        list(source.id_blocks())
    with raises("v.npy", "no id column"):
        VectorSource(files.npy(tmp_path / "v.npy", x), id_column="id")
    with raises("<array>", "no id column"):
        VectorSource(x, id_column="id")


def test_bad_options():
    with pytest.raises(ConfigError, match="on_invalid"):
        VectorSource(np.ones((2, 2)), on_invalid="ignore")
    with pytest.raises(ConfigError, match="batch_size"):
        VectorSource(np.ones((2, 2)), batch_size=0)
    with pytest.raises(ConfigError, match="dim"):
        VectorSource(np.ones((2, 2)), dim=0)


# ---- on_invalid="skip" -----------------------------------------------------------------------


def test_skip_drops_every_kind_of_bad_row_and_reports_them(tmp_path, files, caplog):
    rows = [[float(i), 1.0, 2.0] for i in range(100)]
    rows[1] = None  # null vector
    rows[2] = [1.0, 2.0]  # wrong length
    rows[3] = [1.0, None, 2.0]  # null value
    rows[4] = [np.nan, 1.0, 2.0]
    rows[99] = [1.0, np.inf, 2.0]
    files.table(tmp_path / "a.parquet", {"emb": float_list(rows)}, row_group_size=30)
    files.npy(tmp_path / "b.npy", np.array([[0.0, np.nan, 0.0], [1.0, 1.0, 1.0]], np.float32))
    source = VectorSource(tmp_path, on_invalid="skip", batch_size=7)
    with caplog.at_level(logging.WARNING, logger="mega_taxonomy.io.sources"):
        (block,) = read_all(source)
    bad = [1, 2, 3, 4, 99, 100]
    assert np.array_equal(block.ordinals, np.setdiff1d(np.arange(102), bad))
    assert block.vectors.tolist()[:2] == [[0.0, 1.0, 2.0], [5.0, 1.0, 2.0]]
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.npy")
    assert source.skipped == {a: 5, b: 1}
    (record,) = caplog.records
    assert "6 invalid rows" in record.message and f"{a}: 5" in record.message and f"{b}: 1" in record.message
    # take leaves invalid rows out too
    assert source.take([0, 4, 5, 101]).tolist() == [[0.0, 1.0, 2.0], [5.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    assert source.skipped == {a: 5, b: 1}  # counted once
    # ids are still listed for every row
    assert sum(len(ids) for _, _, ids in source.id_blocks()) == 102


def test_skip_with_tensors_keeps_rows_on_device():
    t = torch.ones(5, 2)
    t[2, 1] = float("nan")
    source = VectorSource(t, on_invalid="skip")
    (block,) = read_all(source)
    assert isinstance(block.vectors, torch.Tensor) and block.vectors.shape == (4, 2)
    assert block.ordinals.tolist() == [0, 1, 3, 4] and source.skipped == {"<array>": 1}


def test_skip_of_a_whole_block(tmp_path, files):
    x = np.full((70_000, 2), np.nan, np.float32)
    x[65_536:] = 1.0
    source = VectorSource(files.npy(tmp_path / "n.npy", x), on_invalid="skip")
    first, second = read_all(source)
    assert first.ordinals.shape == (0,) and first.vectors.shape == (0, 2)
    assert len(second.ordinals) == 70_000 - 65_536


# ---- the pure functions ----------------------------------------------------------------------


def test_rows_returns_none_or_a_keep_mask():
    vectors = np.zeros((4, 2), np.float32)
    assert validate.rows(Piece(range(4), vectors), 2, file="f", column="c", on_invalid="raise") is None
    vectors[2, 1] = np.nan
    piece = Piece(range(10, 14), vectors, lengths=np.array([2, -1, 2, 3]), null_at=np.array([-1, -1, -1, -1]))
    keep = validate.rows(piece, 2, file="f", column="c", on_invalid="skip")
    assert keep.tolist() == [True, False, False, False]
    with raises("f", "row 11", "column 'c'", "null vector"):
        validate.rows(piece, 2, file="f", column="c", on_invalid="raise")


def test_vector_column_and_dtype_rules():
    schema = pa.schema([("v", pa.list_(pa.float16())), ("w", pa.int64())])
    assert validate.vector_column(schema, None, file="f") == "v"
    assert validate.list_dtype(schema.field("v").type, file="f", column="v") == np.float16
    assert validate.vector_dtype(np.dtype(">f8"), file="f") == np.float64
    with raises("f", "bool"):
        validate.vector_dtype(np.dtype(bool), file="f")
    with raises("f", "column 'w'", "integers"):
        validate.id_column(pa.schema([("w", pa.string())]), "w", file="f")


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16", "int16"])
def test_the_exponent_bits_test_is_isfinite(dtype, split, monkeypatch):
    """The compiled host test of finite rows against torch's isfinite in float64, on NaN, +-inf,
    the largest finite values, subnormals and zeros of every float type (and integers); rows
    checked by one thread, and split over the CPU threads."""
    _finite_rows = validate._finite_rows
    if split:
        monkeypatch.setattr(validate, "_THREAD_ELEMENTS", 16)
        monkeypatch.setattr(validate, "cpu_threads", lambda: 7)  # 7 shares of 300 rows, on any machine
    rng = np.random.default_rng(1)
    torch_dtype = getattr(torch, dtype)
    if torch_dtype.is_floating_point:
        info = torch.finfo(torch_dtype)
        specials = [np.nan, np.inf, -np.inf, info.max, -info.max, info.tiny / 4, -0.0, 0.0]
        values = rng.choice(specials, size=(300, 7), p=[0.01, 0.01, 0.01, 0.1, 0.1, 0.1, 0.1, 0.57])
    else:
        values = rng.integers(-30000, 30000, size=(300, 7))
    tensor = torch.as_tensor(values).to(torch_dtype)
    expected = torch.isfinite(tensor.double()).all(dim=1).numpy()
    assert 0 < expected.sum() < len(expected) or not torch_dtype.is_floating_point
    np.testing.assert_array_equal(_finite_rows(tensor), expected)
    np.testing.assert_array_equal(_finite_rows(tensor[:, ::2]), torch.isfinite(tensor[:, ::2].double()).all(1).numpy())
    if dtype != "bfloat16":  # numpy has no bfloat16
        np.testing.assert_array_equal(_finite_rows(tensor.numpy()), expected)
