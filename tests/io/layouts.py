"""Helpers of the io tests: data written across files in a given layout, blocks collected and compared."""

import numpy as np


def split_points(n, n_files, seed=1):
    """Uneven cut points 0 = c0 < ... < c_n_files = n."""
    if n_files == 1:
        return [0, n]
    inner = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), n_files - 1, replace=False))
    return [0, *inner.tolist(), n]


def write_split(files, root, vectors, ids, n_files, *, fmt="parquet", row_group_size=None, kind="list"):
    """Write rows of ``vectors`` into ``n_files`` files named so that sorted order is row order."""
    cuts = split_points(len(vectors), n_files)
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        uri = f"{root}/part-{i:03d}.{fmt}"
        if fmt == "parquet":
            files.parquet(uri, vectors[lo:hi], None if ids is None else ids[lo:hi], kind, row_group_size)
        elif fmt == "npy":
            files.npy(uri, vectors[lo:hi])
        else:
            files.vecs(uri, vectors[lo:hi])
    return root


def collect(source, **kw):
    return [(b.index, b.ordinals.copy(), b.ids.copy(), np.array(b.vectors)) for b in source.blocks(**kw)]


def assert_same_blocks(got, want):
    assert len(got) == len(want)
    for (i, ordinals, ids, vectors), (j, ordinals2, ids2, vectors2) in zip(got, want):
        assert i == j
        assert ordinals.dtype == ordinals2.dtype == np.int64 and np.array_equal(ordinals, ordinals2)
        assert ids.dtype == np.int64 and np.array_equal(ids, ids2)
        assert vectors.dtype == vectors2.dtype and vectors.tobytes() == vectors2.tobytes()


class Spy:
    """Counts calls of a method (and records their arguments) while delegating to it."""

    def __init__(self, monkeypatch, owner, name):
        self.calls = []
        original = getattr(owner, name)

        def spy(*args, **kwargs):
            self.calls.append((args[1:], kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
