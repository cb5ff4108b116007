"""Small shared fixtures for the io tests: a data set, its reference blocks and writers for every file format."""

import types

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from layouts import collect

from mega_taxonomy.io import VectorSource

N, DIM = 150_000, 8  # 2.3 blocks of 65,536 rows, so that blocks span files; 4.8 MB


@pytest.fixture(scope="session")
def data():
    """(vectors float32 (N, DIM), ids int64 (N,)): distinct ids that are not the ordinals."""
    vectors = np.random.default_rng(0).standard_normal((N, DIM), dtype=np.float32)
    ids = (np.arange(N, dtype=np.int64) * 2_654_435_761) % (1 << 40)
    return vectors, ids


@pytest.fixture(scope="module")
def reference(data):
    """Blocks of the in-memory array, with the ids of the data set in place of the ordinals."""
    vectors, ids = data
    return [(i, o, ids[o], v) for i, o, _, v in collect(VectorSource(vectors))]


def vector_array(vectors, kind="list"):
    """An arrow array of ``vectors`` as a list, large_list or fixed_size_list column."""
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors).ravel())
    if kind == "fixed":
        return pa.FixedSizeListArray.from_arrays(flat, dim)
    if kind == "large":
        return pa.LargeListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int64) * dim), flat)
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * dim), flat)


def write_table(uri, columns, *, row_group_size=None, **options):
    """Write a parquet file of ``columns`` (name -> arrow array or list) to a local path or fsspec URI."""
    with fsspec.open(str(uri), "wb") as f:
        pq.write_table(pa.table(columns), f, row_group_size=row_group_size, **options)
    return str(uri)


def write_parquet(uri, vectors, ids=None, kind="list", row_group_size=None, **options):
    """Write ``vectors`` as the column "emb" (and ``ids`` as "id") of a parquet file."""
    columns = {"emb": vector_array(vectors, kind)}
    if ids is not None:
        columns["id"] = pa.array(ids)
    return write_table(uri, columns, row_group_size=row_group_size, **options)


def write_vecs(uri, vectors, *, bvecs=False):
    """Write ``vectors`` as .fvecs (float32) or .bvecs (uint8): an int32 dimension before each row."""
    n, dim = vectors.shape
    value = "u1" if bvecs else "<f4"
    records = np.empty(n, [("dim", "<i4"), ("v", value, (dim,))])
    records["dim"], records["v"] = dim, vectors
    with fsspec.open(str(uri), "wb") as f:
        f.write(records.tobytes())
    return str(uri)


def write_npy(uri, array):
    with fsspec.open(str(uri), "wb") as f:
        np.save(f, array)
    return str(uri)


@pytest.fixture(scope="session")
def files():
    """The writers above: files.parquet, files.table, files.vecs, files.npy, files.vector_array."""
    return types.SimpleNamespace(
        parquet=write_parquet, table=write_table, vecs=write_vecs, npy=write_npy, vector_array=vector_array
    )


@pytest.fixture
def memory_dir(request):
    """A fresh directory on fsspec's in-memory filesystem (removed afterwards)."""
    fs = fsspec.filesystem("memory")
    root = f"memory://io-tests/{request.node.name}"
    yield root
    if fs.exists(root):
        fs.rm(root, recursive=True)
