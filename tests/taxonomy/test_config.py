"""TaxonomyEngine's parameters: declared constraints (ConfigError naming the parameter), the
Balancing and Routing groups beside the flat keywords, the seed's positional signature, and a fit
that runs from a frozen FitConfig alone."""

import dataclasses

import numpy as np
import pytest

from mega_taxonomy.errors import ConfigError
from mega_taxonomy.runtime import get_runtime
from mega_taxonomy.storage import Store
from mega_taxonomy.taxonomy import Balancing, Routing, TaxonomyEngine
from mega_taxonomy.taxonomy.fitting import FitRun


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(12, 4)) * 10
    return (centers[rng.integers(0, 12, 1500)] + rng.normal(size=(1500, 4))).astype(np.float32)


def same_tree(a, b):
    for la, lb in zip(a.tree_.levels, b.tree_.levels):
        for name in ("centroids", "parent", "counts", "child_offsets", "penalty"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name))


def test_the_seeds_positional_signature(tmp_path, X):
    engine = TaxonomyEngine(2, [3, 2], 4, str(tmp_path / "t"), device="cpu", max_iter=3)
    assert (engine.n_levels, engine.branching_factor, engine.dim, engine.storage_uri) == (
        2, [3, 2], 4, str(tmp_path / "t"))
    assert engine.fit(X).predict(X[:5]).shape == (5, 2)


@pytest.mark.parametrize("params,name", [
    ({"max_iter": 0}, "max_iter"), ({"tol": -1.0}, "tol"), ({"dtype": "float16"}, "dtype"),
    ({"members": 0}, "members"), ({"min_cluster_size": 0}, "min_cluster_size"), ({"router": "kd"}, "router"),
    ({"balance": "even"}, "balance"), ({"balance_factor": 1.0}, "balance_factor"),
    ({"balance_merge": 1.0}, "balance_merge"), ({"balance_rounds": -1}, "balance_rounds"),
    ({"balance_strength": 1.5}, "balance_strength"), ({"batch_size": 0}, "batch_size"),
    ({"hnsw_ef": 0}, "hnsw_ef"), ({"search_index": "yes"}, "search_index"), ({"n_levels": 0}, "n_levels"),
])
def test_impossible_parameters_name_themselves(X, params, name):
    with pytest.raises(ConfigError, match=f"'{name}' parameter of TaxonomyEngine"):
        TaxonomyEngine(**{"n_levels": 1, "branching_factor": 2, "device": "cpu", **params}).fit(X)


def test_groups_check_their_fields():
    with pytest.raises(ConfigError, match="'factor' parameter of Balancing"):
        Balancing("split", factor=0.5)
    with pytest.raises(ConfigError, match="'kind' parameter of Routing"):
        Routing("kd")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Balancing().mode = "split"


@pytest.mark.parametrize("mode", ["split", "penalty"])
def test_a_balancing_group_means_its_flat_keywords(tmp_path, X, mode):
    common = dict(n_levels=2, branching_factor=[3, 3], max_iter=4, tol=0, device="cpu")
    flat = TaxonomyEngine(**common, balance=mode, balance_factor=1.2, balance_strength=0.3,
                          storage_uri=str(tmp_path / "flat")).fit(X)
    grouped = TaxonomyEngine(**common, balance=Balancing(mode, factor=1.2, strength=0.3),
                             storage_uri=str(tmp_path / "grouped")).fit(X)
    same_tree(flat, grouped)
    params = [Store(tmp_path / name).manifest()["params"] for name in ("flat", "grouped")]
    assert params[0] == params[1] and params[0]["balance"] == mode  # one fingerprint: each resumes the other
    again = TaxonomyEngine(**common, balance=Balancing(mode, factor=1.2, strength=0.3),
                           storage_uri=str(tmp_path / "flat")).fit(X, callback=pytest.fail)  # done: loaded
    same_tree(flat, again)


def test_a_group_and_its_flat_keywords_at_once_are_refused(X):
    with pytest.raises(ConfigError, match="balance_factor given together"):
        TaxonomyEngine(n_levels=1, branching_factor=2, balance=Balancing("split"), balance_factor=3.0,
                       device="cpu").fit(X)
    with pytest.raises(ConfigError, match="hnsw_ef given together"):
        TaxonomyEngine(n_levels=1, branching_factor=2, router=Routing("hnsw"), hnsw_ef=32, device="cpu").fit(X)
    engine = TaxonomyEngine(n_levels=1, branching_factor=2, device="cpu").fit(X)
    engine.router, engine.hnsw_ef = Routing("hnsw"), 32  # routing read again when predicting
    with pytest.raises(ConfigError, match="hnsw_ef given together"):
        engine.predict(X[:2])


def test_a_routing_group_means_its_flat_keywords(X):
    flat = TaxonomyEngine(n_levels=2, branching_factor=[4, 3], router="hnsw", hnsw_threshold=2, hnsw_ef=16,
                          device="cpu").fit(X)
    grouped = TaxonomyEngine(n_levels=2, branching_factor=[4, 3], router=Routing("hnsw", threshold=2, ef=16),
                             device="cpu").fit(X)
    assert (flat.router_.kind, flat.router_.threshold, flat.router_.ef) == ("hnsw", 2, 16)
    assert (grouped.router_.kind, grouped.router_.threshold, grouped.router_.ef) == ("hnsw", 2, 16)
    np.testing.assert_array_equal(flat.predict(X), grouped.predict(X))


def test_a_fit_runs_from_its_config_alone(tmp_path, X):
    engine = TaxonomyEngine(n_levels=2, branching_factor=[3, 2], max_iter=3, device="cpu",
                            storage_uri=str(tmp_path / "a")).fit(X)
    config = dataclasses.replace(TaxonomyEngine(n_levels=2, branching_factor=[3, 2], max_iter=3)._config(),
                                 storage_uri=str(tmp_path / "b"))
    source = TaxonomyEngine()._source(X)
    run = FitRun(config, source, get_runtime(None, "cpu"))
    assert not hasattr(run, "engine")
    tree, stats = run.run()
    for la, lb in zip(engine.tree_.levels, tree.levels):
        np.testing.assert_array_equal(la.centroids, lb.centroids)
    assert stats["passes"] == engine.stats_["passes"] and Store(tmp_path / "b").manifest()["status"] == "done"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_iter = 4
    assert "storage_options" not in repr(dataclasses.replace(config, storage_options={"secret": "x"}))
