"""Balanced sampling: exact sizes, even spread over leaves or over children at every level,
water-filling, the remainder rule, determinism, row-order independence, nesting, shallow leaves,
a brute-force reference on random trees, reading assignments back from a Store, bad input."""

import numpy as np
import pytest

from mega_taxonomy.partials.groups import rank_in_group
from mega_taxonomy.ops.hashing import hash_ids
from mega_taxonomy.errors import ConfigError, DataError, StorageError
from mega_taxonomy.storage import Store
from mega_taxonomy.taxonomy import TaxonomyEngine
from mega_taxonomy.taxonomy.sampling import _lowest_per_group, balanced_sample, read_assignments
from mega_taxonomy.taxonomy.tree import Level, Tree

STRATEGIES = ("uniform-leaves", "hierarchical")


# -- helpers ---------------------------------------------------------------------------------------

def make_tree(n_children):
    """A Tree from the number of children of every node, level by level (the last level: all 0)."""
    levels, parent = [], np.full(len(n_children[0]), -1)
    for nc in n_children:
        nc = np.asarray(nc, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(nc)])
        levels.append(Level(np.zeros((len(nc), 2), np.float32), parent, np.zeros(len(nc), np.int64), offsets))
        parent = np.repeat(np.arange(len(nc)), nc)
    return Tree(levels)


def make_rows(tree, rows_per_leaf, rng=None):
    """(ids, paths) with ``rows_per_leaf[(level, node)]`` rows under each leaf, shuffled, with
    ids that are neither sorted nor contiguous."""
    paths = []
    for (level, node), count in rows_per_leaf.items():
        path = np.full(tree.n_levels, -1)
        for lv in range(level, -1, -1):
            path[lv] = node
            node = tree.levels[lv].parent[node]
        paths += [path] * count
    paths = np.array(paths, dtype=np.int64).reshape(-1, tree.n_levels)
    rng = rng or np.random.default_rng(0)
    ids = rng.choice(10 * len(paths) + 10, size=len(paths), replace=False).astype(np.int64)
    order = rng.permutation(len(paths))
    return ids[order], paths[order]


def leaf_of(paths):
    depth = (paths >= 0).sum(1) - 1
    return list(zip(depth.tolist(), paths[np.arange(len(paths)), depth].tolist()))


def counts_by_leaf(ids, paths, sample):
    taken = np.isin(ids, sample)
    out = {}
    for leaf, t in zip(leaf_of(paths), taken):
        out[leaf] = out.get(leaf, 0) + int(t)
    return out


def reference_sample(ids, paths, tree, n, strategy, seed):
    """Brute force: quotas handed out one row at a time, each to the child with the fewest so far
    among those with rows left (ties: most rows, then lowest key), recursively for "hierarchical";
    in every leaf the rows of lowest hash."""
    hashes = hash_ids(ids, seed)
    n = min(n, len(ids))
    taken = []

    def rows_under(level, node):
        return [i for i in range(len(ids)) if paths[i, level] == node]

    def fill(quota, children):  # children: [(key, capacity)]
        alloc = {key: 0 for key, _ in children}
        for _ in range(quota):
            _, _, key = min((alloc[k], -cap, k) for k, cap in children if alloc[k] < cap)
            alloc[key] += 1
        return alloc

    def take(level, node, quota):
        taken.extend(sorted(rows_under(level, node), key=lambda i: hashes[i])[:quota])

    if strategy == "uniform-leaves":
        leaves = [(level, int(node)) for level, nodes in tree.leaves() for node in nodes]
        for (level, node), quota in fill(n, [(leaf, len(rows_under(*leaf))) for leaf in leaves]).items():
            take(level, node, quota)
    else:
        def visit(level, nodes, quota):
            for node, q in fill(quota, [(node, len(rows_under(level, node))) for node in nodes]).items():
                children = tree.children(level, node)
                if len(children):
                    visit(level + 1, children, q)
                else:
                    take(level, node, q)

        visit(0, range(tree.levels[0].n_nodes), n)
    taken.sort(key=lambda i: (tuple(paths[i]), hashes[i]))
    return ids[taken]


def random_case(seed):
    """A random tree of 1..3 levels with leaves at every level, some leaves empty, some tiny."""
    rng = np.random.default_rng(seed)
    n_levels = int(rng.integers(1, 4))
    n_children, n_nodes = [], int(rng.integers(1, 5))
    for level in range(n_levels):
        last = level == n_levels - 1
        nc = np.zeros(n_nodes, np.int64)
        if not last:
            nc = rng.integers(0, 4, size=n_nodes) * (rng.random(n_nodes) < 0.75)
        n_children.append(nc)
        n_nodes = int(nc.sum())
    tree = make_tree(n_children)
    rows = {}
    for level, nodes in tree.leaves():
        for node in nodes:
            rows[(level, int(node))] = int(rng.choice([0, 1, 2, 3, 5, 8, 13, 30]))
    if not sum(rows.values()):
        rows[next(iter(rows))] = 4
    ids, paths = make_rows(tree, rows, rng)
    return tree, ids, paths, rng


# -- a hand-built unbalanced tree --------------------------------------------------------------------
#
# level 0:  node 0 (4 children)    node 1 (2 children)    node 2 (leaf, 500 rows)
# level 1:  0  1  2  3 (100 each)  4 (100)  5 (2 rows)

HAND_TREE = make_tree([[4, 2, 0], [0] * 6])
HAND_ROWS = {(1, 0): 100, (1, 1): 100, (1, 2): 100, (1, 3): 100, (1, 4): 100, (1, 5): 2, (0, 2): 500}


@pytest.fixture(scope="module")
def hand():
    ids, paths = make_rows(HAND_TREE, HAND_ROWS)
    return ids, paths


@pytest.mark.parametrize("strategy, n, expected", [
    # 7 leaves, 24 rows: level t=3 (6*3 + 2 = 20), 4 extra: the 500-row leaf, then the lowest ids.
    ("uniform-leaves", 24, {(1, 0): 4, (1, 1): 4, (1, 2): 4, (1, 3): 3, (1, 4): 3, (1, 5): 2, (0, 2): 4}),
    ("uniform-leaves", 25, {(1, 0): 4, (1, 1): 4, (1, 2): 4, (1, 3): 4, (1, 4): 3, (1, 5): 2, (0, 2): 4}),
    # 8 per level-0 node; node 1's 8 over leaves of 100 and 2 rows: 6 and 2 (water-filling at level 1).
    ("hierarchical", 24, {(1, 0): 2, (1, 1): 2, (1, 2): 2, (1, 3): 2, (1, 4): 6, (1, 5): 2, (0, 2): 8}),
    # the 25th row goes to the level-0 node with most rows (node 2), not to the lowest id.
    ("hierarchical", 25, {(1, 0): 2, (1, 1): 2, (1, 2): 2, (1, 3): 2, (1, 4): 6, (1, 5): 2, (0, 2): 9}),
    # 2, 2, 3 at level 0; node 0's 2 over four leaves of 100: the lowest ids.
    ("hierarchical", 7, {(1, 0): 1, (1, 1): 1, (1, 2): 0, (1, 3): 0, (1, 4): 1, (1, 5): 1, (0, 2): 3}),
    # node 1 (102 rows) cannot take 133: nodes 0 and 2 get 149 each; node 0's 149: 38, 37, 37, 37.
    ("hierarchical", 400,
     {(1, 0): 38, (1, 1): 37, (1, 2): 37, (1, 3): 37, (1, 4): 100, (1, 5): 2, (0, 2): 149}),
])
def test_hand_computed_quotas(hand, strategy, n, expected):
    ids, paths = hand
    sample = balanced_sample(ids, paths, HAND_TREE, n, strategy)
    assert len(sample) == n and len(np.unique(sample)) == n
    assert counts_by_leaf(ids, paths, sample) == expected


def test_hierarchical_balances_level_zero_where_uniform_leaves_does_not(hand):
    ids, paths = hand
    top = {s: np.bincount(paths[np.isin(ids, balanced_sample(ids, paths, HAND_TREE, 24, s)), 0], minlength=3)
           for s in STRATEGIES}
    assert top["hierarchical"].tolist() == [8, 8, 8]
    assert top["uniform-leaves"].tolist() == [15, 5, 4]  # node 0 has four leaves, node 2 one


def test_rows_taken_in_a_leaf_are_those_of_lowest_hash(hand):
    ids, paths = hand
    sample = balanced_sample(ids, paths, HAND_TREE, 50, "hierarchical", random_state=3)
    hashes, taken, leaves = hash_ids(ids, 3), np.isin(ids, sample), np.array(leaf_of(paths))
    for leaf in set(map(tuple, leaves)):
        rows = (leaves == leaf).all(1)
        if taken[rows].any() and (~taken[rows]).any():
            assert hashes[rows & taken].max() < hashes[rows & ~taken].min()


def test_output_is_ordered_by_path_then_hash(hand):
    ids, paths = hand
    sample = balanced_sample(ids, paths, HAND_TREE, 60, "uniform-leaves", random_state=5)
    row = {i: r for r, i in enumerate(ids.tolist())}
    keys = [(tuple(paths[row[i]]), hash_ids(np.array([i]), 5)[0]) for i in sample.tolist()]
    assert keys == sorted(keys)
    assert sample.dtype == np.int64


# -- a fitted taxonomy -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(900, 4)) + rng.integers(0, 3, size=(900, 1)) * 3).astype(np.float32)
    engine = TaxonomyEngine(n_levels=2, branching_factor=[3, 4], device="cpu").fit(X)
    return engine, np.arange(len(X), dtype=np.int64), engine.predict(X)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("n", [0, 1, 7, 11, 12, 13, 100, 899, 900, 901, 5000])
def test_exact_size(fitted, strategy, n):
    engine, ids, paths = fitted
    sample = balanced_sample(ids, paths, engine.tree_, n, strategy)
    assert len(sample) == min(n, len(ids)) and len(np.unique(sample)) == len(sample)
    assert np.isin(sample, ids).all()


def test_n_at_least_all_rows_returns_every_id(fitted):
    engine, ids, paths = fitted
    for strategy in STRATEGIES:
        for n in (len(ids), 10 * len(ids)):
            assert sorted(balanced_sample(ids, paths, engine.tree_, n, strategy).tolist()) == ids.tolist()


def assert_even(counts, capacity):
    """Counts that differ by at most 1 wherever a child had rows to spare; a child below the
    others took all of its rows."""
    counts, capacity = np.asarray(counts), np.asarray(capacity)
    spare = counts < capacity
    if spare.any():
        level = counts[spare].min()
        assert counts[spare].max() - level <= 1, (counts, capacity)
        assert (counts[~spare] == capacity[~spare]).all()


@pytest.mark.parametrize("n", [12, 60, 250])
def test_uniform_leaves_spreads_evenly_over_leaves(fitted, n):
    engine, ids, paths = fitted
    sample = balanced_sample(ids, paths, engine.tree_, n, "uniform-leaves")
    leaf = paths[:, 1]
    assert (leaf >= 0).all()  # 2 full levels: every row's leaf is at level 1
    n_leaves = engine.tree_.levels[1].n_nodes
    counts = np.bincount(leaf[np.isin(ids, sample)], minlength=n_leaves)
    rows = np.bincount(leaf, minlength=n_leaves)
    assert_even(counts, rows)
    if (rows >= n // n_leaves + 1).all():
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("n", [12, 60, 250])
def test_hierarchical_spreads_evenly_at_every_level(fitted, n):
    engine, ids, paths = fitted
    tree = engine.tree_
    sample = balanced_sample(ids, paths, tree, n, "hierarchical")
    taken = np.isin(ids, sample)
    top = np.bincount(paths[taken, 0], minlength=tree.levels[0].n_nodes)
    assert_even(top, np.bincount(paths[:, 0], minlength=tree.levels[0].n_nodes))
    assert top.max() - top.min() <= 1  # every level-0 node has far more than n / 3 rows
    for node in range(tree.levels[0].n_nodes):
        children = np.array(tree.children(0, node))
        counts = np.bincount(paths[taken, 1], minlength=tree.levels[1].n_nodes)[children]
        assert_even(counts, np.bincount(paths[:, 1], minlength=tree.levels[1].n_nodes)[children])
        assert counts.sum() == top[node]


def test_deterministic_for_a_seed_and_different_across_seeds(fitted):
    engine, ids, paths = fitted
    for strategy in STRATEGIES:
        a = balanced_sample(ids, paths, engine.tree_, 50, strategy, random_state=7)
        assert np.array_equal(a, balanced_sample(ids, paths, engine.tree_, 50, strategy, random_state=7))
        b = balanced_sample(ids, paths, engine.tree_, 50, strategy, random_state=8)
        assert set(a.tolist()) != set(b.tolist())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_independent_of_row_order(fitted, strategy):
    engine, ids, paths = fitted
    perm = np.random.default_rng(3).permutation(len(ids))
    a = balanced_sample(ids, paths, engine.tree_, 77, strategy, random_state=2)
    b = balanced_sample(ids[perm], paths[perm], engine.tree_, 77, strategy, random_state=2)
    assert np.array_equal(a, b)  # the same ids, in the same (path, hash) order


def test_reads_assignments_back_from_the_store(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 3)).astype(np.float32)
    engine = TaxonomyEngine(n_levels=2, branching_factor=[3, 4], device="cpu", storage_uri=str(tmp_path),
                            batch_size=128).fit(X)
    ids, paths = read_assignments(Store(str(tmp_path)))
    assert ids.dtype == np.int64 and paths.dtype == np.int64 and paths.shape == (500, 2)
    assert sorted(ids.tolist()) == list(range(500))
    assert np.array_equal(paths[np.argsort(ids)], engine.predict(X))
    for strategy in STRATEGIES:
        assert np.array_equal(balanced_sample(ids, paths, engine.tree_, 40, strategy),
                              balanced_sample(np.arange(500), engine.predict(X), engine.tree_, 40, strategy))


def test_read_assignments_of_an_empty_store_raises(tmp_path):
    with pytest.raises(StorageError, match="no assignments"):
        read_assignments(Store(str(tmp_path)))


# -- shallow leaves, nesting, the brute-force reference ----------------------------------------------

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_leaf_at_level_zero_of_a_two_level_tree(strategy):
    tree = make_tree([[0, 3], [0, 0, 0]])  # node 0 is a leaf: its rows' paths are (0, -1)
    ids, paths = make_rows(tree, {(0, 0): 50, (1, 0): 50, (1, 1): 50, (1, 2): 50})
    counts = counts_by_leaf(ids, paths, balanced_sample(ids, paths, tree, 40, strategy))
    if strategy == "uniform-leaves":
        assert counts == {(0, 0): 10, (1, 0): 10, (1, 1): 10, (1, 2): 10}
    else:  # 20 to each level-0 node; node 1's 20 over three leaves: 7, 7, 6
        assert counts == {(0, 0): 20, (1, 0): 7, (1, 1): 7, (1, 2): 6}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_water_filling_when_leaves_are_too_small(strategy):
    tree = make_tree([[2, 2], [0, 0, 0, 0]])
    ids, paths = make_rows(tree, {(1, 0): 1, (1, 1): 30, (1, 2): 0, (1, 3): 4})
    counts = counts_by_leaf(ids, paths, balanced_sample(ids, paths, tree, 20, strategy))
    if strategy == "uniform-leaves":  # leaves of 1 and 4 give all, the 30-row leaf takes the rest
        assert counts == {(1, 0): 1, (1, 1): 15, (1, 3): 4}
    else:  # 10 each at level 0; node 1 (4 rows) passes 6 on to node 0, whose 16 go 1 + 15
        assert counts == {(1, 0): 1, (1, 1): 15, (1, 3): 4}
    counts = counts_by_leaf(ids, paths, balanced_sample(ids, paths, tree, 6, strategy))
    if strategy == "uniform-leaves":  # 3 leaves with rows: t=2 (1 + 2 + 2), one extra to the largest
        assert counts == {(1, 0): 1, (1, 1): 3, (1, 3): 2}
    else:  # 3 and 3; node 0: 1 + 2; node 1: 3 from its only non-empty leaf
        assert counts == {(1, 0): 1, (1, 1): 2, (1, 3): 3}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_samples_are_nested(strategy):
    tree = make_tree([[3, 0, 2], [2, 0, 1, 0, 0], [0, 0, 0]])
    rows = {(0, 1): 9, (1, 1): 2, (1, 3): 0, (1, 4): 7, (2, 0): 5, (2, 1): 12, (2, 2): 3}
    ids, paths = make_rows(tree, rows)
    previous = set()
    for n in range(len(ids) + 2):
        sample = set(balanced_sample(ids, paths, tree, n, strategy, random_state=4).tolist())
        assert previous <= sample and len(sample) == min(n, len(ids))
        previous = sample


@pytest.mark.parametrize("case", range(40))
def test_agrees_with_a_brute_force_reference_on_random_trees(case):
    tree, ids, paths, rng = random_case(case)
    for n in sorted({0, 1, int(rng.integers(0, len(ids) + 1)), int(rng.integers(0, len(ids) + 1)), len(ids),
                     len(ids) + 3}):
        for strategy in STRATEGIES:
            seed = int(rng.integers(0, 1000))
            expected = reference_sample(ids, paths, tree, n, strategy, seed)
            got = balanced_sample(ids, paths, tree, n, strategy, seed)
            assert np.array_equal(got, expected), (case, n, strategy)


@pytest.mark.parametrize("bits", [0, 1, 3, 8])
def test_lowest_per_group_settles_truncated_hash_ties_exactly(bits):
    """The value-sort selection keeps only the high bits of the hash; with 1-8 bits most rows tie
    at the threshold, which must then be settled by the full hash, as a lexsort would."""
    rng = np.random.default_rng(bits)
    for _ in range(20):
        n_groups = int(rng.integers(1, 9))
        group = rng.integers(0, n_groups, size=int(rng.integers(0, 300)))
        hashes = hash_ids(rng.choice(10**6, size=len(group), replace=False), 0)
        quota = rng.integers(0, 60, size=n_groups)
        order = np.lexsort((hashes, group))
        expected = order[rank_in_group(group[order]) < quota[group[order]]]
        assert sorted(_lowest_per_group(group, hashes, quota, bits).tolist()) == sorted(expected.tolist())


# -- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 2.5}, {"n": True}, {"strategy": "stratified"},
                                    {"random_state": -1}])
def test_bad_parameters_raise_config_error(hand, kwargs):
    ids, paths = hand
    with pytest.raises(ConfigError):
        balanced_sample(ids, paths, HAND_TREE, **{"n": 5, **kwargs})


@pytest.mark.parametrize("change, message", [
    (lambda ids, paths: paths.__setitem__((0, slice(None)), [0, -1]), "not a leaf"),  # ends at an inner node
    (lambda ids, paths: paths.__setitem__((0, slice(None)), [1, 0]), "not its parent"),
    (lambda ids, paths: paths.__setitem__((0, slice(None)), [0, 9]), "number of nodes"),
    (lambda ids, paths: paths.__setitem__((0, slice(None)), [-1, 0]), "no node at level 0"),
    (lambda ids, paths: ids.__setitem__(0, ids[1]), "more than once"),
])
def test_paths_that_do_not_follow_the_tree_raise_data_error(hand, change, message):
    ids, paths = hand[0].copy(), hand[1].copy()
    change(ids, paths)
    with pytest.raises(DataError, match=message):
        balanced_sample(ids, paths, HAND_TREE, 5)


def test_wrong_shapes_raise_data_error(hand):
    ids, paths = hand
    with pytest.raises(DataError, match="shape"):
        balanced_sample(ids, paths[:, :1], HAND_TREE, 5)
    with pytest.raises(DataError, match="shape"):
        balanced_sample(ids[:-1], paths, HAND_TREE, 5)
    assert balanced_sample(np.zeros(0, np.int64), np.zeros((0, 2), np.int64), HAND_TREE, 5).shape == (0,)
