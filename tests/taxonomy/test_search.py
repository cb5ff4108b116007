"""Search and HNSW routing against a brute force."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mega_taxonomy.errors import ConfigError
from mega_taxonomy.ops import topk
from mega_taxonomy.taxonomy import TaxonomyEngine
from mega_taxonomy.taxonomy.router import exact_paths


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(20_000, 12)) + rng.integers(0, 5, size=(20_000, 1)) * 3).astype(np.float32)
    Q = X[rng.choice(len(X), 200)] + rng.normal(size=(200, 12)).astype(np.float32) * 0.5
    storage = str(tmp_path_factory.mktemp("search") / "tax")
    engine = TaxonomyEngine(n_levels=2, branching_factor=[8, 8], max_iter=5, device="cpu",
                            storage_uri=storage).fit(X)
    return engine, X, Q, storage


def recall(ids, truth):
    return np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(ids, truth)])


def test_search_is_exact_when_the_beam_reaches_every_leaf(fitted):
    engine, X, Q, _ = fitted
    full = cdist(Q.astype(np.float64), X.astype(np.float64), "sqeuclidean")
    d, ids, compared = engine.search(Q, 10, beam=64, return_compared=True)
    assert (compared == len(X)).all()
    # float32 products err by ~1e-7 of the squared norms: neighbours may swap only within that
    atol = 1e-5 * (np.einsum("ij,ij->i", X, X).max() + np.einsum("ij,ij->i", Q, Q).max())
    np.testing.assert_allclose(np.take_along_axis(full, ids, 1), np.sort(full, 1)[:, :10], atol=atol)
    np.testing.assert_allclose(d, np.take_along_axis(full, ids, 1), atol=atol)


def test_cosine_search_is_exact_when_the_beam_reaches_every_leaf(tmp_path):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(3000, 6)) + rng.integers(0, 4, size=(3000, 1))).astype(np.float32)
    Q = rng.normal(size=(50, 6)).astype(np.float32)
    engine = TaxonomyEngine(n_levels=2, branching_factor=[4, 4], max_iter=5, device="cpu", metric="cosine",
                            storage_uri=str(tmp_path / "tax")).fit(X)
    full = cdist(Q.astype(np.float64), X.astype(np.float64), "cosine")
    d, ids = engine.search(Q, 5, beam=16)
    np.testing.assert_allclose(np.take_along_axis(full, ids, 1), np.sort(full, 1)[:, :5], atol=1e-6)
    np.testing.assert_allclose(d, np.take_along_axis(full, ids, 1), atol=1e-6)


def test_wider_beams_compare_more_rows_and_find_more(fitted):
    engine, X, Q, _ = fitted
    _, true_i = topk(torch.from_numpy(Q), torch.from_numpy(X), 10)
    results = [engine.search(Q, 10, beam=beam, return_compared=True) for beam in (1, 4, 16)]
    recalls = [recall(ids, true_i.numpy()) for _, ids, _ in results]
    compared = [c.mean() for _, _, c in results]
    assert recalls == sorted(recalls) and compared == sorted(compared)
    assert recalls[-1] > 0.9 and compared[0] < len(X) / 8


def test_search_from_a_loaded_engine(fitted):
    engine, _, Q, storage = fitted
    loaded = TaxonomyEngine.load(storage)
    np.testing.assert_array_equal(loaded.search(Q, 5, beam=4)[1], engine.search(Q, 5, beam=4)[1])


def test_search_needs_the_index():
    X = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    engine = TaxonomyEngine(n_levels=1, branching_factor=4, device="cpu").fit(X)
    with pytest.raises(ConfigError, match="search needs"):
        engine.search(X[:2])


def test_hnsw_routing_agrees_with_exact_routing(fitted):
    engine, X, Q, storage = fitted
    hnsw = TaxonomyEngine.load(storage, router="hnsw", hnsw_threshold=8, hnsw_ef=64)
    assert len(hnsw.router_.wide(0)) == 1  # the root's 8 children are served by a graph
    exact = engine.predict(Q, beam=2)
    np.testing.assert_array_equal(hnsw.predict(Q, beam=2), exact)
    truth, _ = exact_paths(torch.from_numpy(Q), engine.tree_)
    assert (hnsw.predict(Q, beam=8) == truth.numpy()).all(1).mean() >= (exact == truth.numpy()).all(1).mean()
