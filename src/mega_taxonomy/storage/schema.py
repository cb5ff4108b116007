"""Names and table layouts of the on-disk schema (DESIGN.md, Contracts): every part of the
package writes its files through these, so that engines, the CLI and the browser agree."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MANIFEST = "manifest.json"

ASSIGNMENTS_SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("path", pa.list_(pa.int32())),
    ("distance", pa.float32()),
])


# A Gaussian mixture's arrays beside its means (``level_file(level, "centroids")``): a saved
# ``GaussianMixture`` is a one-level model as a saved ``KMeans`` is.
MIXTURE_ARRAYS = ("weights", "covariances", "precisions_cholesky")


# A taxonomy level's arrays, and those only some levels have: penalty (balance="penalty"),
# weights and covariances (clusterer="gmm": each node's weight within its parent, and its diagonal
# variances; the centroids are the means).
LEVEL_ARRAYS = ("centroids", "parent", "counts", "child_offsets")
LEVEL_OPTIONAL_ARRAYS = ("penalty", "weights", "covariances")


def level_file(level: int, name: str) -> str:
    """``levels/00/centroids.npy`` and friends (LEVEL_ARRAYS and LEVEL_OPTIONAL_ARRAYS of a
    taxonomy; MIXTURE_ARRAYS beside the means of a saved GaussianMixture)."""
    return f"levels/{level:02d}/{name}.npy"


def assignments_file(part: int) -> str:
    """``assignments/part-00000.parquet``: one part per block of rows, so parts are named by data,
    not by the worker that wrote them (a retried block overwrites its own part)."""
    return f"assignments/part-{part:05d}.parquet"


def members_file(level: int) -> str:
    """``members/00.parquet``: the nearest members of every node of a level."""
    return f"members/{level:02d}.parquet"


# The search index of a taxonomy: every fitted row's id and vector grouped by leaf (CSR offsets).
SEARCH_ARRAYS = ("ids", "vectors", "offsets")


def search_file(name: str) -> str:
    """``search/ids.npy``, ``search/vectors.npy``, ``search/offsets.npy`` (SEARCH_ARRAYS)."""
    return f"search/{name}.npy"


# A saved KDTree (index/kdtree.py): its points in leaf order, their rows, the source's ids and the
# node arrays (ops.knn.Tree's fields).
KDTREE_ARRAYS = ("pts", "perm", "ids", "starts", "ends", "lefts", "rights", "lo", "hi", "dims", "splits")


def kdtree_file(name: str) -> str:
    """``kdtree/pts.npy`` and the other KDTREE_ARRAYS."""
    return f"kdtree/{name}.npy"


# An IVF index: its coarse quantizer's arrays (k-means: centroids; a Gaussian mixture: weights,
# means, precisions) and its inverted lists (CSR: the rows of list l are offsets[l]:offsets[l + 1]).
IVF_LIST_ARRAYS = ("vectors", "ids", "offsets")


def ivf_file(part: str, name: str) -> str:
    """``ivf/quantizer/centroids.npy``, ``ivf/lists/vectors.npy`` and friends."""
    return f"ivf/{part}/{name}.npy"


def checkpoint_dir(stage: int) -> str:
    """``checkpoints/level-00``: the checkpoints of one stage of a resumable fit (a taxonomy's level;
    a flat k-means has the one stage 0)."""
    return f"checkpoints/level-{stage:02d}"


def checkpoint_file(stage: int, name: str, *, round: int | None = None, iteration: int | None = None) -> str:
    """A checkpoint's array: per iteration ``checkpoints/level-00/round-0-iter-0003-centroids.npy``
    (fresh names, so a crash never leaves a half-written file behind a committed manifest), per
    round ``checkpoints/level-00/round-1-offsets.npy`` (what a balancing round fixes), and a
    completed stage's ``checkpoints/level-00/centroids.npy`` (neither round nor iteration)."""
    if round is None:
        return f"{checkpoint_dir(stage)}/{name}.npy"
    if iteration is None:
        return f"{checkpoint_dir(stage)}/round-{round}-{name}.npy"
    return f"{checkpoint_dir(stage)}/round-{round}-iter-{iteration:04d}-{name}.npy"


def spill_file(prefix: str, index: int) -> str:
    """``pass-0/0000.npy``: the ``index``-th large array of a state spilled to a scratch Store
    (``runtime/state.py``) under ``prefix``."""
    return f"{prefix}/{index:04d}.npy"


def assignments_table(ids: np.ndarray, paths: np.ndarray, distances: np.ndarray) -> pa.Table:
    """Rows ``(id, path, distance)``: ``paths`` is (n, n_levels) of global node ids, -1 past a leaf."""
    ids = np.asarray(ids, dtype=np.int64)
    paths = np.ascontiguousarray(paths, dtype=np.int32).reshape(len(ids), -1)
    path = pa.FixedSizeListArray.from_arrays(pa.array(paths.ravel()), paths.shape[1]).cast(pa.list_(pa.int32()))
    return pa.Table.from_arrays(
        [pa.array(ids), path, pa.array(np.asarray(distances, dtype=np.float32))], schema=ASSIGNMENTS_SCHEMA
    )


def read_paths(table: pa.Table) -> np.ndarray:
    """The ``path`` column of an assignments table as an int64 array (n, n_levels)."""
    column = table.column("path").combine_chunks()
    width = len(column[0]) if len(column) else 0
    return column.flatten().to_numpy().astype(np.int64).reshape(len(column), width)


# A saved HashTable (``kv/persist.py``): every entry's key and score (uint64 bits in int64) and value.
KV_ARRAYS = ("keys", "values", "scores")


def kv_file(name: str) -> str:
    """``kv/keys.npy``, ``kv/values.npy``, ``kv/scores.npy`` (KV_ARRAYS)."""
    return f"kv/{name}.npy"
