"""Auto-balancing on a skewed mixture: Zipf-sized clusters."""

import numpy as np
import pytest

from mega_taxonomy.cluster.balance import imbalance, size_penalty, split_and_merge
from mega_taxonomy.taxonomy import TaxonomyEngine


def zipf_mixture(k=20, n=20_000, d=8, seed=0, spread=10.0):
    """Gaussian clusters of Zipf sizes; ``spread`` 10 keeps them apart, 3 lets them overlap."""
    rng = np.random.default_rng(seed)
    sizes = 1.0 / np.arange(1, k + 1) ** 1.2
    sizes = np.maximum((sizes / sizes.sum() * n).astype(int), 5)
    centers = rng.normal(size=(k, d)) * spread
    X = np.concatenate([c + rng.normal(size=(s, d)) for c, s in zip(centers, sizes)])
    return X[rng.permutation(len(X))].astype(np.float32)


def test_imbalance_metrics():
    even = imbalance([5, 5, 5, 5])
    assert even["max_over_mean"] == 1 and even["gini"] == 0 and even["entropy"] == pytest.approx(1)
    skew = imbalance([97, 1, 1, 1])
    assert skew["max_over_mean"] == pytest.approx(3.88) and skew["gini"] > 0.7 and skew["entropy"] < 0.2


def test_split_and_merge_step():
    rng = np.random.default_rng(0)
    c = np.arange(8, dtype=np.float64).reshape(4, 2)
    counts = np.array([700, 200, 95, 5])  # mean 250: node 0 splits in 3, node 3 merges
    new, offsets, changed = split_and_merge(c, counts, counts * 1.0, np.array([0, 2, 4]), factor=2.0, merge=0.1,
                                            rng=rng)
    assert changed and offsets.tolist() == [0, 4, 5] and len(new) == 5
    np.testing.assert_array_equal(new[0], c[0])
    assert np.allclose(new[1:3].mean(0), c[0], atol=2)  # the new pieces start around the split node
    np.testing.assert_array_equal(new[[3, 4]], c[[1, 2]])


@pytest.mark.slow
def test_split_balances_a_zipf_mixture():
    X = zipf_mixture()
    plain = TaxonomyEngine(n_levels=1, branching_factor=20, device="cpu", random_state=0).fit(X)
    balanced = TaxonomyEngine(n_levels=1, branching_factor=20, device="cpu", random_state=0, balance="split").fit(X)
    before, after = plain.stats_["levels"][0], balanced.stats_["levels"][0]
    assert before["imbalance"]["max_over_mean"] >= 2 * after["imbalance"]["max_over_mean"]
    assert after["inertia"] <= 1.10 * before["inertia"]
    assert after["balance_rounds"] >= 1
    paths = balanced.predict(X)
    np.testing.assert_array_equal(np.bincount(paths[:, 0], minlength=balanced.tree_.levels[0].n_nodes),
                                  balanced.tree_.levels[0].counts)


def test_split_on_a_deeper_level_keeps_the_tree_consistent(tmp_path):
    X = zipf_mixture(k=12, n=6000, d=4, seed=1)
    engine = TaxonomyEngine(n_levels=2, branching_factor=[3, 4], device="cpu", balance="split",
                            storage_uri=str(tmp_path / "tax")).fit(X)
    level0, level1 = engine.tree_.levels
    assert level0.child_offsets[-1] == level1.n_nodes
    np.testing.assert_array_equal(np.repeat(np.arange(level0.n_nodes), level0.n_children), level1.parent)
    paths = engine.predict(X)
    assert (level1.parent[paths[:, 1]] == paths[:, 0]).all()
    loaded = TaxonomyEngine.load(str(tmp_path / "tax"))
    np.testing.assert_array_equal(loaded.predict(X), paths)


def test_size_penalty_trades_rows_between_siblings_only():
    counts = np.array([600, 200, 200, 50, 50])
    inertia = counts * 2.0  # mean distance 2 in both groups
    p = size_penalty(counts, inertia, np.array([0, 3, 5]), strength=0.5)
    np.testing.assert_allclose(p[:3].sum(), 0, atol=1e-12)  # centred per group
    np.testing.assert_allclose(p[3:], 0, atol=1e-12)  # equal siblings: nothing to trade
    np.testing.assert_allclose(p[0] - p[1], 0.5 * 0.5 * 2.0 * np.log(601 / 201))  # damped marginal cost
    assert size_penalty(counts, inertia, np.array([0, 3, 5]), previous=p)[0] > p[0]  # it keeps pushing


@pytest.mark.slow
def test_penalty_balances_an_overlapping_zipf_mixture(tmp_path):
    X = zipf_mixture(spread=3.0)
    plain = TaxonomyEngine(n_levels=1, branching_factor=20, device="cpu", random_state=0, max_iter=50).fit(X)
    balanced = TaxonomyEngine(n_levels=1, branching_factor=20, device="cpu", random_state=0, max_iter=50,
                              balance="penalty", storage_uri=str(tmp_path / "tax")).fit(X)
    before, after = plain.stats_["levels"][0], balanced.stats_["levels"][0]
    assert after["n_nodes"] == 20  # the same nodes, only the assignment is penalised
    assert before["imbalance"]["max_over_mean"] >= 2 * after["imbalance"]["max_over_mean"]
    assert after["inertia"] <= 1.10 * before["inertia"]
    level = balanced.tree_.levels[0]
    paths = balanced.predict(X)  # routing applies the stored penalties: the fit's own counts come back
    np.testing.assert_array_equal(np.bincount(paths[:, 0], minlength=level.n_nodes), level.counts)
    loaded = TaxonomyEngine.load(str(tmp_path / "tax"))
    np.testing.assert_array_equal(loaded.tree_.levels[0].penalty, level.penalty)
    np.testing.assert_array_equal(loaded.predict(X), paths)


def test_penalty_leaves_well_separated_clusters_alone():
    """No penalty is worth crossing the gap between true clusters: the fit stays the plain one."""
    X = zipf_mixture(k=6, n=3000, spread=10.0)
    plain = TaxonomyEngine(n_levels=1, branching_factor=6, device="cpu", random_state=0).fit(X)
    balanced = TaxonomyEngine(n_levels=1, branching_factor=6, device="cpu", random_state=0, balance="penalty").fit(X)
    np.testing.assert_array_equal(plain.predict(X), balanced.predict(X))


def test_penalty_with_cosine_routes_to_the_fitted_counts():
    X = zipf_mixture(k=8, n=4000, d=6, spread=2.0, seed=2) + 3.0  # off the origin: directions differ
    engine = TaxonomyEngine(n_levels=2, branching_factor=[4, 3], device="cpu", metric="cosine", balance="penalty",
                            max_iter=20).fit(X)
    for level in (0, 1):
        tree_level = engine.tree_.levels[level]
        assert tree_level.penalty is not None and np.isfinite(tree_level.penalty).all()
        paths = engine.predict(X)
        np.testing.assert_array_equal(np.bincount(paths[:, level], minlength=tree_level.n_nodes), tree_level.counts)
