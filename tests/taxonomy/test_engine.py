"""TaxonomyEngine: recovery of a known hierarchy, equality with a recursive scikit-learn reference,
pass counts, leaves, predict beams, bad input."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import adjusted_rand_score

from mega_taxonomy.errors import ConfigError, DataError
from mega_taxonomy.taxonomy import TaxonomyEngine, fitting
from mega_taxonomy.taxonomy.router import exact_paths


def test_recovers_a_known_three_level_hierarchy(three_levels):
    X, truth = three_levels
    engine = TaxonomyEngine(n_levels=3, branching_factor=[4, 3, 3], device="cpu", random_state=0).fit(X)
    paths = engine.predict(X)
    assert paths.shape == (len(X), 3) and paths.dtype == np.int64
    for level in range(3):
        assert adjusted_rand_score(truth[level], paths[:, level]) >= 0.95, level


def recursive_reference(X, inits, branching, max_iter):
    """Per node, scikit-learn KMeans from the engine's initial centroids; returns per-level
    centroids in the engine's node order and every row's path."""
    n_levels = len(branching)
    paths = np.full((len(X), n_levels), -1)
    centroids = [[] for _ in range(n_levels)]
    members = [np.arange(len(X))]  # rows of each node of the previous level, in node order
    for level in range(n_levels):
        init, start, next_members = inits[level], 0, []
        for rows in members:
            k = min(branching[level], len(rows))
            if k < 2:
                continue
            km = SkKMeans(k, init=init[start:start + k], n_init=1, tol=0, max_iter=max_iter,
                          algorithm="lloyd").fit(X[rows])
            paths[rows, level] = km.labels_ + start
            centroids[level].append(km.cluster_centers_)
            next_members += [rows[km.labels_ == j] for j in range(k)]
            start += k
        members = next_members
    return [np.concatenate(c) for c in centroids], paths


def test_identical_to_recursive_sklearn_from_the_same_init(monkeypatch):
    rng = np.random.default_rng(4)
    X = (rng.normal(size=(3000, 5)) + rng.integers(0, 3, size=(3000, 1)) * 4).astype(np.float64)
    inits = []
    seed_children = fitting.seed_children

    def recording(*args, **kwargs):
        inits.append(seed_children(*args, **kwargs))
        return inits[-1]

    monkeypatch.setattr(fitting, "seed_children", recording)
    engine = TaxonomyEngine(n_levels=3, branching_factor=[3, 4, 2], dtype="float64", tol=0, max_iter=100,
                            device="cpu", max_train_points_per_centroid=None).fit(X)  # every row, every pass
    ref_centroids, ref_paths = recursive_reference(X, inits, [3, 4, 2], 100)
    for level in range(3):
        np.testing.assert_allclose(engine.tree_.levels[level].centroids, ref_centroids[level], atol=1e-8)
    np.testing.assert_array_equal(engine.predict(X), ref_paths)


def test_passes_do_not_depend_on_the_number_of_nodes():
    X = np.random.default_rng(0).normal(size=(6000, 8)).astype(np.float32)
    passes = {}
    for branching in ([2, 2], [16, 12]):
        engine = TaxonomyEngine(n_levels=2, branching_factor=branching, max_iter=3, tol=0, device="cpu",
                                max_train_points_per_centroid=None).fit(X)  # every level on all rows
        iterations = [level["iterations"] for level in engine.stats_["levels"]]
        assert iterations == [3, 3]
        # one sampling pass, then per level its iterations and one assignment pass
        passes[tuple(branching)] = engine.stats_["passes"]
        assert engine.stats_["passes"] == 1 + sum(i + 1 for i in iterations)
    assert len(set(passes.values())) == 1


def test_a_levels_seed_sample_is_kept_within_its_budget(monkeypatch):
    """Where every node's default 64 rows a child would pass _SAMPLE_BYTES, fewer are drawn, down
    to 16 a child; the sizes the passes draw are those, and the deeper nodes are still seeded."""
    X = np.random.default_rng(2).normal(size=(20_000, 8)).astype(np.float32)
    row = 8 * 4  # bytes of a float32 row
    monkeypatch.setattr(fitting, "_SAMPLE_BYTES", 16 * 300 * row)  # level 2: 16 parents, 300 rows each
    drawn, lloyd, hash_sample = [], fitting.lloyd, fitting.hash_sample

    def root_sample(source, size, *args):
        drawn.append(size)
        return hash_sample(source, size, *args)

    def level(*args, sample=None, **kwargs):
        drawn.append(None if sample is None else sample[0])
        return lloyd(*args, sample=sample, **kwargs)

    monkeypatch.setattr(fitting, "hash_sample", root_sample)
    monkeypatch.setattr(fitting, "lloyd", level)
    # (levels trained on every row: a training sample would be drawn instead of the seeds')
    full = {"max_train_points_per_centroid": None}
    engine = TaxonomyEngine(n_levels=3, branching_factor=4, max_iter=2, device="cpu", **full).fit(X)
    assert drawn == [1024, 1024, 300, None]  # root and level 1 within budget: the default
    assert engine.tree_.levels[2].n_nodes == 64
    monkeypatch.setattr(fitting, "_SAMPLE_BYTES", row)
    drawn.clear()
    TaxonomyEngine(n_levels=3, branching_factor=4, max_iter=2, device="cpu", **full).fit(X)
    assert drawn == [64, 64, 64, None]  # never below 16 a child
    drawn.clear()
    TaxonomyEngine(n_levels=3, branching_factor=4, max_iter=2, sample_size=40, device="cpu", **full).fit(X)
    assert drawn == [40, 40, 40, None]  # a size asked for is drawn as asked
    drawn.clear()
    TaxonomyEngine(n_levels=3, branching_factor=4, max_iter=2, sample_size=(None, 40, 50), device="cpu",
                   **full).fit(X)
    assert drawn == [64, 40, 50, None]  # entry l seeds level l (0: the root's sample); None: the default


def test_a_per_level_sample_size_resumes_from_its_manifest(tmp_path):
    """A tuple comes back from the manifest's JSON as a list: still the same parameters."""
    X = np.random.default_rng(3).normal(size=(3000, 4)).astype(np.float32)
    params = {"n_levels": 2, "branching_factor": 3, "max_iter": 2, "device": "cpu", "storage_uri": str(tmp_path / "t")}
    first = TaxonomyEngine(**params, sample_size=(None, 30)).fit(X)
    again = TaxonomyEngine(**params, sample_size=(None, 30)).fit(X)  # loads the done fit
    np.testing.assert_array_equal(first.predict(X), again.predict(X))
    with pytest.raises(ConfigError, match="sample_size"):
        TaxonomyEngine(**params, sample_size=(None, 31)).fit(X)


def test_small_nodes_get_fewer_children_or_become_leaves():
    rng = np.random.default_rng(1)
    big = rng.normal(size=(1000, 3))
    small = rng.normal(size=(6, 3)) * 0.01 + 50  # a tiny far cluster
    X = np.vstack([big, small]).astype(np.float32)
    engine = TaxonomyEngine(n_levels=2, branching_factor=[2, 4], min_cluster_size=5, device="cpu").fit(X)
    paths = engine.predict(X)
    tiny = paths[-1, 0]
    assert (paths[-6:, 0] == tiny).all()
    level0 = engine.tree_.levels[0]
    assert level0.n_children[tiny] == 0  # 6 rows // 5 = 1 child: a leaf
    assert (paths[-6:, 1] == -1).all()
    assert level0.n_children[1 - tiny] == 4 and (paths[:-6, 1] >= 0).all()


def test_impossible_settings_raise_config_error():
    X = np.zeros((10, 3), dtype=np.float32) + np.arange(10)[:, None]
    with pytest.raises(ConfigError, match="cannot make 16 clusters"):
        TaxonomyEngine(n_levels=2, branching_factor=16, device="cpu").fit(X)
    with pytest.raises(ConfigError, match="branching_factor has 2 entries"):
        TaxonomyEngine(n_levels=3, branching_factor=[2, 2], device="cpu").fit(X)
    with pytest.raises(ConfigError, match="metric"):
        TaxonomyEngine(n_levels=1, branching_factor=2, metric="l1", device="cpu").fit(X)
    with pytest.raises(ConfigError, match="sample_size has 2 entries"):
        TaxonomyEngine(n_levels=3, branching_factor=2, sample_size=[8, 8], device="cpu").fit(X)
    for bad in (0, [8, -1], [8, 2.5], True):
        with pytest.raises(ConfigError, match="sample_size must be"):
            TaxonomyEngine(n_levels=2, branching_factor=2, sample_size=bad, device="cpu").fit(X)


def test_bad_input_is_named(tmp_path):
    X = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    with pytest.raises(DataError, match="dimension"):
        TaxonomyEngine(n_levels=1, branching_factor=2, dim=8, device="cpu").fit(X)
    X[7, 2] = np.inf
    with pytest.raises(DataError, match="row 7"):
        TaxonomyEngine(n_levels=1, branching_factor=2, device="cpu").fit(X)


def test_beams_approach_the_exact_path(three_levels):
    X, _ = three_levels
    rng = np.random.default_rng(2)
    Q = (X[rng.choice(len(X), 300)] + rng.normal(size=(300, X.shape[1])) * 8).astype(np.float32)
    engine = TaxonomyEngine(n_levels=3, branching_factor=[4, 3, 3], device="cpu").fit(X)
    exact, exact_d = exact_paths(torch.from_numpy(Q), engine.tree_)
    accuracy = []
    for beam in (1, 2, 4, 8, 64):
        paths = engine.predict(Q, beam=beam)
        accuracy.append((paths == exact.numpy()).all(1).mean())
    assert accuracy == sorted(accuracy)  # wider beams are never worse here
    assert accuracy[-1] == 1.0  # a beam as wide as the tree is exact
    assert accuracy[0] < 1.0  # the queries are hard enough to tell beams apart


def test_beam_one_paths_equal_the_fit_assignments(tmp_path, three_levels):
    import pyarrow.parquet as pq

    X, _ = three_levels
    engine = TaxonomyEngine(n_levels=3, branching_factor=[4, 3, 3], device="cpu",
                            storage_uri=str(tmp_path / "tax")).fit(X, output=str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / "assignments")
    from mega_taxonomy.storage.schema import read_paths

    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(len(X)))
    np.testing.assert_array_equal(read_paths(table), engine.predict(X))
    members = pq.read_table(tmp_path / "tax" / "members" / "02.parquet")
    assert members.num_rows == min(len(X), engine.tree_.levels[2].n_nodes * 100)


@pytest.mark.parametrize("balance", [None, "penalty", "split"])
def test_output_pass_takes_the_fitted_paths_with_the_bits_of_routing(monkeypatch, tmp_path, balance):
    """The output pass takes every row's path from the fit's final assignments instead of routing
    the rows again: the stored assignments, members and search index are the same bits, with
    leaves above the last level (rows with -1 below them), and on balanced levels (routing adds
    the sizes' penalties, as the fit's final assignment did)."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    sizes = rng.integers(5, 3000, size=40)  # small nodes become leaves early
    centers = rng.normal(size=(40, 5)) * 20
    X = np.concatenate([c + rng.normal(size=(m, 5)) for c, m in zip(centers, sizes)]).astype(np.float32)
    X = X[rng.permutation(len(X))]
    params = dict(n_levels=3, branching_factor=[5, 4, 3], max_iter=6, tol=0, device="cpu", random_state=3,
                  members=7, min_cluster_size=500, balance=balance,
                  max_train_points_per_centroid=None)  # (trained on every row: the tree has early leaves)
    taken = []
    original = fitting.FitRun.fitted_paths
    monkeypatch.setattr(fitting.FitRun, "fitted_paths", lambda run: taken.append(original(run)) or taken[-1])
    a = TaxonomyEngine(**params, storage_uri=str(tmp_path / "fitted")).fit(X)
    monkeypatch.setattr(fitting, "_PATHS_BYTES", 0)  # over the budget: the rows are routed
    b = TaxonomyEngine(**params, storage_uri=str(tmp_path / "routed")).fit(X)
    assert taken[0] is not None and taken[1] is None
    paths = np.concatenate([p for _, (p, _) in sorted(taken[0].items())])
    assert (paths == -1).any() and (paths[:, 0] >= 0).all()
    for folder in ("assignments", "members", "search"):
        files = sorted(p.relative_to(tmp_path / "routed") for p in (tmp_path / "routed" / folder).rglob("*.*"))
        assert files
        for name in files:
            if name.suffix == ".parquet":
                assert pq.read_table(tmp_path / "fitted" / name).equals(pq.read_table(tmp_path / "routed" / name))
            else:
                assert (tmp_path / "fitted" / name).read_bytes() == (tmp_path / "routed" / name).read_bytes()
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
