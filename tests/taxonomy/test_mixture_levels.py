"""TaxonomyEngine(clusterer="gmm"): a level's children as Gaussian mixtures, each node's against
scikit-learn's GaussianMixture on the node's rows from the same start; paths by responsibility,
predict_proba, the stored weights and covariances, and a resumed fit."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from mega_taxonomy.errors import ConfigError
from mega_taxonomy.io import VectorSource
from mega_taxonomy.runtime import LocalRuntime
from mega_taxonomy.storage import Store
from mega_taxonomy.storage.schema import level_file
from mega_taxonomy.taxonomy import TaxonomyEngine
from mega_taxonomy.taxonomy.mixture import Mixtures, fit_mixtures

PARAMS = dict(n_levels=2, branching_factor=[3, 3], max_iter=8, device="cpu", clusterer="gmm", random_state=1)


def overlapping(n=3000, d=5, seed=0):
    """Two levels of Gaussians of different scales, overlapping enough for soft responsibilities."""
    rng = np.random.default_rng(seed)
    top = rng.normal(size=(3, d)) * 12
    sub = top[:, None, :] + rng.normal(size=(3, 3, d)) * 3
    which = rng.integers(9, size=n)
    scale = rng.uniform(0.5, 2.0, size=(9, 1))[which]
    return (sub.reshape(9, d)[which] + rng.normal(size=(n, d)) * scale).astype(np.float32)


def start_for(x, groups, offsets, seed):
    """A start per group: means on rows of the group, weights uniform, variances of the group."""
    rng = np.random.default_rng(seed)
    means, variances, weights = [], [], []
    for g in range(len(offsets) - 1):
        rows = x[groups == g]
        k = offsets[g + 1] - offsets[g]
        means.append(rows[rng.choice(len(rows), k, replace=False)])
        variances.append(np.repeat(rows.var(0)[None], k, 0))
        weights.append(np.full(k, 1.0 / k))
    return Mixtures(np.concatenate(weights), np.concatenate(means).astype(np.float64), np.concatenate(variances))


@pytest.mark.parametrize("n_groups", [1, 3])
def test_each_nodes_mixture_is_scikit_learns_from_the_same_start(n_groups):
    x = overlapping().astype(np.float64)
    groups = np.repeat(np.arange(n_groups), -(-len(x) // n_groups))[:len(x)]
    offsets = np.arange(n_groups + 1) * 3
    start = start_for(x, groups, offsets, seed=n_groups)
    source = VectorSource(x)
    block_groups = {0: groups}  # one block of 3,000 rows
    mixtures, assigned, n_iter, _ = fit_mixtures(
        source, LocalRuntime("cpu", progress=False), start, offsets, None if n_groups == 1 else block_groups,
        max_iter=6, keep_labels=True, sample=None, dtype=np.float64, desc="test", tol=0.0)
    assert n_iter == 6
    labels = assigned.labels[0][0]
    for g in range(n_groups):
        own = slice(offsets[g], offsets[g + 1])
        rows = x[groups == g]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ref = SkGaussianMixture(3, covariance_type="diag", max_iter=6, tol=0, weights_init=start.weights[own],
                                    means_init=start.means[own], precisions_init=1 / start.variances[own]).fit(rows)
        np.testing.assert_allclose(mixtures.weights[own], ref.weights_, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(mixtures.means[own], ref.means_, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mixtures.variances[own], ref.covariances_, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(labels[groups == g], ref.predict(rows) + offsets[g])
    np.testing.assert_array_equal(assigned.counts, np.bincount(labels, minlength=offsets[-1]))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    x = overlapping(seed=2)
    storage = str(tmp_path_factory.mktemp("gmm") / "tree")
    return x, TaxonomyEngine(**PARAMS, storage_uri=storage).fit(x), storage


def test_paths_go_to_the_children_of_highest_responsibility(fitted):
    x, engine, _ = fitted
    paths = engine.predict(x)
    tree = engine.tree_
    proba0 = engine.predict_proba(x, level=0)
    np.testing.assert_array_equal(proba0.argmax(1), paths[:, 0])
    proba1 = engine.predict_proba(x, level=1)
    assert proba1.shape == (len(x), 3)
    np.testing.assert_allclose(proba1.sum(1), 1.0, rtol=1e-12)
    first_child = tree.levels[0].child_offsets[paths[:, 0]]
    np.testing.assert_array_equal(first_child + proba1.argmax(1), paths[:, 1])
    # responsibilities against a float64 brute force of the parent's mixture
    level = tree.levels[1]
    kids = slice(first_child[0], first_child[0] + 3)
    w, mu, var = level.weights[kids], level.centroids[kids].astype(np.float64), level.covariances[kids]
    lp = np.log(w) - 0.5 * (np.log(2 * np.pi * var).sum(1) + ((x[0].astype(np.float64) - mu) ** 2 / var).sum(1))
    np.testing.assert_allclose(proba1[0], np.exp(lp - np.logaddexp.reduce(lp)), rtol=1e-9, atol=1e-12)
    tensor = engine.predict_proba(torch.from_numpy(x[:10]), level=1)
    assert torch.is_tensor(tensor) and np.allclose(tensor.numpy(), proba1[:10])


def test_levels_store_weights_and_covariances_and_load_as_fitted(fitted):
    x, engine, storage = fitted
    store = Store(storage)
    for i, level in enumerate(engine.tree_.levels):
        weights = np.asarray(store.get_array(level_file(i, "weights")))
        variances = np.asarray(store.get_array(level_file(i, "covariances")))
        np.testing.assert_array_equal(weights, level.weights)
        assert variances.shape == level.centroids.shape and (variances >= 1e-6).all()
        sums = np.bincount(level.parent.clip(0), weights=weights) if i else [weights.sum()]
        np.testing.assert_allclose(sums, 1.0)
    loaded = TaxonomyEngine.load(storage)
    assert loaded.clusterer == "gmm"
    np.testing.assert_array_equal(loaded.predict(x), engine.predict(x))
    stats = engine.stats_["levels"]
    assert all(s["em_iterations"] >= 1 and np.isfinite(s["lower_bound"]) for s in stats)


def test_a_fit_stopped_after_a_level_resumes_to_the_same_tree(fitted, tmp_path):
    x, engine, _ = fitted

    def stop(event):
        if event["event"] == "level" and event["level"] == 0:
            raise KeyboardInterrupt

    storage = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        TaxonomyEngine(**PARAMS, storage_uri=storage).fit(x, callback=stop)
    resumed = TaxonomyEngine(**PARAMS, storage_uri=storage).fit(x)
    for a, b in zip(resumed.tree_.levels, engine.tree_.levels):
        for name in ("centroids", "weights", "covariances", "counts", "child_offsets"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_what_a_mixture_taxonomy_refuses(fitted):
    x, _, _ = fitted
    with pytest.raises(ConfigError, match="gmm"):
        TaxonomyEngine(**{**PARAMS, "metric": "cosine"}).fit(x)
    with pytest.raises(ConfigError, match="gmm"):
        TaxonomyEngine(**PARAMS, balance="penalty").fit(x)
    kmeans = TaxonomyEngine(**{**PARAMS, "clusterer": "kmeans"}).fit(x)
    with pytest.raises(ConfigError, match="clusterer='gmm'"):
        kmeans.predict_proba(x)
