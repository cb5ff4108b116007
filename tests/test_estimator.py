"""_estimator.as_source: every kind of input becomes a VectorSource, with the shared checks."""

import numpy as np
import pytest
import torch

from mega_taxonomy import KMeans
from mega_taxonomy._estimator import as_source
from mega_taxonomy.errors import DataError
from mega_taxonomy.io import VectorSource


def test_every_kind_of_input(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    for i, part in enumerate(np.array_split(X, 2)):
        np.save(tmp_path / f"x{i}.npy", part)
    paths = [str(tmp_path / "x0.npy"), str(tmp_path / "x1.npy")]
    inputs = [X, X.tolist(), torch.from_numpy(X), tmp_path, str(tmp_path / "*.npy"), paths, f"file://{tmp_path}"]
    for data in inputs:
        source = as_source(data)
        assert (len(source), source.dim) == (50, 3), data
        np.testing.assert_allclose(np.concatenate([np.asarray(b.vectors) for b in source.blocks()]), X)
    source = VectorSource(X)
    assert as_source(source) is source


def test_the_shared_checks():
    X = np.ones((4, 3), np.float32)
    with pytest.raises(DataError, match="dimension"):
        as_source(X, dim=5)
    km = KMeans(n_clusters=2)
    assert as_source(X, km, reset=True).dim == 3 and km.n_features_in_ == 3
    for other in (np.ones((4, 2), np.float32), torch.ones(4, 2)):
        with pytest.raises(ValueError, match="X has 2 features, but KMeans is expecting 3"):
            as_source(other, km, reset=False)
    with pytest.raises(ValueError, match="2-d floating point tensor"):
        as_source(torch.ones(4, 3, dtype=torch.int64), km)
