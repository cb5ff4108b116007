"""Subtrees fitted apart (partition_level): the whole tree stitched from the top fit and one fit
per node, paths that follow it, a resumed fit ending on the same bits, and the leaves as good
as the level-synchronous fit's."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mega_taxonomy import TaxonomyEngine
from mega_taxonomy.errors import ConfigError
from mega_taxonomy.io import BLOCK_ROWS
from mega_taxonomy.storage import Store
from mega_taxonomy.storage.schema import members_file
from mega_taxonomy.taxonomy import fitting
from mega_taxonomy.taxonomy.sampling import read_assignments
from mega_taxonomy.taxonomy.subtrees import share_out

pytestmark = pytest.mark.timeout(240)
PARAMS = dict(n_levels=3, branching_factor=[3, 4, 3], device="cpu", runtime=None, search_index=False, members=5)


@pytest.fixture(scope="module")
def rows():
    """2 blocks and a bit of a mixture of 48 Gaussians of unequal weights, 5-d; 60% of the rows
    in 8 of them, far from the rest: a level-0 node of more than a third of the rows."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(48, 5)) * 6
    centres[:8, 0] += 60
    weights = np.r_[0.6 * rng.dirichlet(np.ones(8)), 0.4 * rng.dirichlet(np.ones(40))]
    comp = rng.choice(48, 2 * BLOCK_ROWS + 777, p=weights)
    return (centres[comp] + rng.normal(size=(len(comp), 5))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(rows, tmp_path_factory):
    where = tmp_path_factory.mktemp("subtrees")
    engine = TaxonomyEngine(storage_uri=str(where / "store"), partition_level=1, **PARAMS).fit(rows, str(where / "out"))
    return engine, where


def paths_of(out) -> np.ndarray:
    ids, paths = read_assignments(Store(str(out)))
    return paths, ids


def test_tree_is_stitched_from_the_subtrees_and_paths_follow_it(fitted, rows):
    engine, where = fitted
    tree, stats = engine.tree_, engine.stats_
    assert [level.n_nodes for level in tree.levels] == [3, 12, 36] and stats["subtrees"] == 3
    for upper, lower in zip(tree.levels, tree.levels[1:]):  # children contiguous, counts add up
        np.testing.assert_array_equal(np.diff(upper.child_offsets), np.bincount(lower.parent, minlength=upper.n_nodes))
        np.testing.assert_array_equal(upper.counts, np.bincount(lower.parent, lower.counts, upper.n_nodes))
    assert tree.levels[0].counts.sum() == len(rows) and stats["largest_partition"] == tree.levels[0].counts.max()
    paths, ids = paths_of(where / "out")
    np.testing.assert_array_equal(paths[np.argsort(ids)], engine.predict(rows))
    for level, node_counts in enumerate(level.counts for level in tree.levels):
        np.testing.assert_array_equal(np.bincount(paths[:, level], minlength=len(node_counts)), node_counts)
    # full-data passes: the root's sample, level 0's assignment, the partition and the output pass
    assert stats["passes"] == 4 and stats["subtree_passes"] > 0
    store = Store(str(where / "store"))
    assert not store.listdir("partitions") and not (where / "store" / "subtrees").exists()
    assert not (where / "store" / "top").exists()


def test_members_below_the_top_are_selected_by_the_subtrees(fitted, rows):
    """The top level's members come from the output pass, the others from the workers that fitted
    the subtrees (over their own rows, renumbered as stitched): the same rows as an output pass
    over every row through the whole tree would keep, nearest first."""
    from mega_taxonomy.io import VectorSource
    from mega_taxonomy.runtime import LocalRuntime
    from mega_taxonomy.taxonomy.passes import OutputState, OutputTask

    engine, where = fitted
    store = Store(str(where / "store"))
    everything = LocalRuntime("cpu", progress=False).map_reduce(VectorSource(rows), OutputTask(),
                                                                OutputState(engine.tree_, (), 5))
    for level in range(3):
        got, expected = store.get_table(members_file(level)), everything.table(level)
        assert got.num_rows == expected.num_rows == 5 * engine.tree_.levels[level].n_nodes
        for column in ("node", "id"):
            np.testing.assert_array_equal(got[column].to_numpy(), expected[column].to_numpy())
        np.testing.assert_allclose(got["distance"].to_numpy(), expected["distance"].to_numpy(), rtol=1e-5)


def test_each_subtree_is_the_fit_of_its_node_rows(fitted, rows, tmp_path):
    """A subtree is an ordinary fit of its node's rows (in row order, with their ids, which its
    samples hash): fitted here on its own from a parquet file of those rows, it has the same bits."""
    engine, _ = fitted
    tree, paths = engine.tree_, engine.predict(rows)
    node = 1
    mine = np.flatnonzero(paths[:, 0] == node)
    pq.write_table(pa.table({"id": mine, "vector": list(rows[mine])}), tmp_path / "node.parquet")
    config = engine._config()
    sub = config.subtree(node, tree.levels[0].n_children[node], str(tmp_path / "unused"))
    alone = TaxonomyEngine(**{**PARAMS, "n_levels": 2, "branching_factor": list(sub.factors),
                              "random_state": sub.random_state, "id_column": "id"}).fit(str(tmp_path / "node.parquet"))
    children = tree.children(0, node)
    np.testing.assert_array_equal(alone.tree_.levels[0].centroids, tree.levels[1].centroids[children.start:children.stop])
    grandchildren = slice(tree.levels[1].child_offsets[children.start], tree.levels[1].child_offsets[children.stop])
    np.testing.assert_array_equal(alone.tree_.levels[1].centroids, tree.levels[2].centroids[grandchildren])


def test_leaves_as_good_as_the_level_synchronous_fit(fitted, rows, tmp_path):
    """Leaf inertia summed over four random states (one fit's luck with its seeds moves it by
    10-20% either way on rows this few): within 10% of the level-synchronous fit's."""
    ours = [fitted[0].stats_] + [TaxonomyEngine(**PARAMS, random_state=seed, storage_uri=str(tmp_path / str(seed)),
                                                partition_level=1).fit(rows).stats_ for seed in (1, 2, 3)]
    theirs = [TaxonomyEngine(**PARAMS, random_state=seed).fit(rows).stats_ for seed in range(4)]
    leaves = [sum(stats["levels"][-1]["inertia"] for stats in fits) for fits in (ours, theirs)]
    assert leaves[0] <= 1.1 * leaves[1]


def test_a_fit_stopped_in_its_subtrees_resumes_to_the_same_bits(fitted, rows, tmp_path, monkeypatch):
    engine, where = fitted
    run, calls = fitting.FitRun.run, []

    def failing(self, output=None):
        if "/subtrees/" in self.config.storage_uri:
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("worker lost")
        return run(self, output)

    monkeypatch.setattr(fitting.FitRun, "run", failing)
    params = dict(storage_uri=str(tmp_path / "store"), partition_level=1, **PARAMS)
    with pytest.raises(RuntimeError, match="worker lost"):
        TaxonomyEngine(**params).fit(rows)
    monkeypatch.setattr(fitting.FitRun, "run", run)
    again = TaxonomyEngine(**params).fit(rows, str(tmp_path / "out"))
    for mine, theirs in zip(again.tree_.levels, engine.tree_.levels):
        np.testing.assert_array_equal(mine.centroids, theirs.centroids)
        np.testing.assert_array_equal(mine.counts, theirs.counts)
    np.testing.assert_array_equal(paths_of(tmp_path / "out")[0], paths_of(where / "out")[0])
    for level in range(3):
        assert Store(str(tmp_path / "store")).get_table(members_file(level)).equals(
            Store(str(where / "store")).get_table(members_file(level)))
    loaded = TaxonomyEngine.load(str(tmp_path / "store"))
    np.testing.assert_array_equal(loaded.predict(rows[:100]), engine.predict(rows[:100]))


def test_partition_level_is_checked():
    with pytest.raises(ConfigError, match="storage_uri"):
        TaxonomyEngine(partition_level=1, **PARAMS).fit(np.zeros((10, 2), np.float32))
    with pytest.raises(ConfigError, match="partition_level"):
        TaxonomyEngine(storage_uri="memory://x", partition_level=3, **PARAMS).fit(np.zeros((10, 2), np.float32))


def test_shares_are_balanced_by_rows():
    counts = np.array([50, 10, 40, 30, 20])
    assert share_out(range(5), counts, 2) == [[0, 4, 1], [2, 3]]


@pytest.fixture(scope="module")
def ray_mod(ray_cluster):
    return pytest.importorskip("ray")


def test_subtrees_on_ray_workers_give_the_same_tree(ray_mod, fitted, rows, tmp_path):
    """Three Ray workers share the subtrees (the largest, over a third of the rows, goes through
    the whole runtime): the tree, the paths and the members of the fit in this process, bit for
    bit."""
    from mega_taxonomy.runtime.ray import RayRuntime

    engine, where = fitted
    runtime = RayRuntime(num_workers=3, cpus_per_worker=0.25, progress=False, start_timeout=60)
    try:
        remote = TaxonomyEngine(**{**PARAMS, "runtime": runtime}, storage_uri=str(tmp_path / "store"),
                                partition_level=1).fit(rows, str(tmp_path / "out"))
    finally:
        runtime.close()
    assert engine.stats_["largest_partition"] * 3 > len(rows)  # so the whole runtime fitted one subtree
    for mine, theirs in zip(remote.tree_.levels, engine.tree_.levels):
        np.testing.assert_array_equal(mine.centroids, theirs.centroids)
        np.testing.assert_array_equal(mine.parent, theirs.parent)
    np.testing.assert_array_equal(paths_of(tmp_path / "out")[0], paths_of(where / "out")[0])
    for level in range(3):
        assert Store(str(tmp_path / "store")).get_table(members_file(level)).equals(
            Store(str(where / "store")).get_table(members_file(level)))
