"""The taxonomy's search on the probe-and-rerank path: the beam's leaves equal the router's, and
the re-rank equals a brute force over those leaves' rows (early leaves and cosine included)."""

import numpy as np
import pytest
import torch

from mega_taxonomy.storage import Store
from mega_taxonomy.taxonomy import TaxonomyEngine
from mega_taxonomy.taxonomy.router import route_beam
from mega_taxonomy.taxonomy.search import SearchIndex, beam_leaves, leaf_of_paths


@pytest.fixture(scope="module", params=["euclidean", "cosine"])
def engine(request, tmp_path_factory):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(6000, 8)) + rng.choice(4, size=(6000, 1), p=[0.6, 0.3, 0.08, 0.02]) * 3).astype(np.float32)
    # min_cluster_size leaves some nodes of level 0 without children: leaves of two depths
    engine = TaxonomyEngine(n_levels=2, branching_factor=[6, 5], max_iter=4, device="cpu", metric=request.param,
                            min_cluster_size=400, storage_uri=str(tmp_path_factory.mktemp("tax") / "t")).fit(X)
    assert (engine.tree_.levels[0].n_children == 0).any()  # leaves at both depths
    return engine, X, rng.normal(size=(80, 8)).astype(np.float32) * 3


@pytest.mark.parametrize("beam", [1, 3, 8])
def test_beam_leaves_equal_the_routers(engine, beam):
    engine, _, Q = engine
    q = torch.from_numpy(Q)
    paths, _ = route_beam(q, engine.tree_, beam, n_best=beam, router=engine.router_)
    expected = leaf_of_paths(engine.tree_, paths.numpy())
    got = beam_leaves(q, engine.tree_, beam)
    assert all(set(a[a >= 0]) == set(b[b >= 0]) for a, b in zip(got, expected))


def test_rerank_equals_brute_force_over_the_reached_leaves(engine):
    engine, X, Q = engine
    d, ids, compared = engine.search(Q, 5, beam=2, return_compared=True)
    index = SearchIndex.load(Store(engine.storage_uri))
    leaves = beam_leaves(torch.from_numpy(Q), engine.tree_, 2)
    off = np.asarray(index.offsets)
    for r in range(len(Q)):
        pos = np.concatenate([np.arange(off[j], off[j + 1]) for j in leaves[r] if j >= 0])
        assert compared[r] == len(pos)
        x = np.asarray(index.vectors)[pos].astype(np.float64)
        q = Q[r].astype(np.float64)
        if engine.tree_.metric == "cosine":
            full = 1 - x @ q / np.linalg.norm(x, axis=1) / np.linalg.norm(q)
        else:
            full = ((x - q) ** 2).sum(1)
        best = np.argsort(full, kind="stable")[:5]
        np.testing.assert_allclose(d[r], full[best], rtol=1e-5, atol=1e-5)
        assert (ids[r] == np.asarray(index.ids)[pos][best]).mean() >= 0.8  # near-ties may swap
