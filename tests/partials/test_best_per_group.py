"""Mergeable "best n per group" selections: the same rows whatever the order and grouping of merges."""

import pickle

import numpy as np
import pytest

from mega_taxonomy.partials import best_per_group
from mega_taxonomy.partials.best_per_group import BestPerGroup
from mega_taxonomy.ops.hashing import hash_ids


def brute_force(key, ordinal, group, n, largest):
    """Per group, the n best rows by (key, ordinal), with a Python sort: the reference."""
    rows = sorted(range(len(key)), key=lambda i: (group[i], -key[i] if largest else key[i], ordinal[i]))
    taken, out = {}, []
    for i in rows:
        if taken.get(group[i], 0) < n:
            taken[group[i]] = taken.get(group[i], 0) + 1
            out.append(ordinal[i])
    return np.array(out)


@pytest.mark.parametrize("largest", [False, True])
def test_any_merge_schedule_selects_the_brute_force_rows(monkeypatch, largest):
    monkeypatch.setattr(best_per_group, "_UNSELECTED_ROWS", 64)  # so that merges select now and then
    rng = np.random.default_rng(0)
    m, n = 3000, 5
    key = rng.integers(0, 40, m).astype(np.float64)  # many ties: broken by ordinal
    ordinal = rng.permutation(m)
    group = rng.integers(0, 30, m)
    expected = brute_force(key, ordinal, group, n, largest)
    cuts = np.sort(rng.choice(np.arange(1, m), 40, replace=False))
    parts = [BestPerGroup(n, {"key": k, "ordinal": o, "group": g}, largest=largest)
             for k, o, g in zip(*(np.split(a, cuts) for a in (key, ordinal, group)))]
    left = parts[0]
    for p in parts[1:]:
        left = left + p
    while len(parts) > 1:  # a tree of merges, as a distributed reduction could do
        parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    shipped = pickle.loads(pickle.dumps(parts[0]))
    for result in (left, parts[0], shipped):
        np.testing.assert_array_equal(result["ordinal"], expected)


def test_sparse_group_ids_select_the_same_rows_without_an_index_as_long_as_their_span():
    """Rows over group ids far apart (a block's rows among a deep level's 1e8 nodes): the same
    rows as brute force through pickling and merges, and what crosses processes is the rows,
    not an index over the ids' span (once 1.3 GB for a block of 1M rows over 1e8 nodes)."""
    rng = np.random.default_rng(3)
    m, n = 4000, 2
    key, ordinal = rng.random(m), rng.permutation(m)
    group = rng.integers(0, 500, m) * 10_000  # 500 groups over a span of 5e6 ids
    parts = [BestPerGroup(n, {"key": k, "ordinal": o, "group": g}).compact()
             for k, o, g in zip(*(np.split(a, 4) for a in (key, ordinal, group)))]
    shipped = [pickle.loads(pickle.dumps(p)) for p in parts]
    assert all(len(pickle.dumps(p)) < 50 * m for p in parts)
    total = shipped[0]
    for p in shipped[1:]:
        total += p
    np.testing.assert_array_equal(total["ordinal"], brute_force(key, ordinal, group, n, False))


@pytest.mark.parametrize("largest", [False, True])
def test_rows_after_a_full_groups_worst_are_dropped_as_they_arrive(largest):
    """Once a selection filled a group, later rows that come after its worst kept row (by key,
    then ordinal) are not kept at all; the others, and rows of other groups, are."""
    sign = -1.0 if largest else 1.0
    first = BestPerGroup(2, {"key": sign * np.array([1.0, 2.0, 3.0, 5.0]), "ordinal": np.array([10, 11, 12, 13]),
                             "group": np.array([0, 0, 0, 1])}, largest=largest).selected()
    assert len(first) == 3  # group 0 full (keys 1, 2), group 1 not
    later = BestPerGroup(2, {"key": sign * np.array([2.0, 2.0, 9.0, 1.5, 9.0, 9.0]),
                             "ordinal": np.array([5, 17, 18, 19, 20, 21]), "group": np.array([0, 0, 0, 0, 1, 2])},
                         largest=largest)
    both = first + later
    # group 0: key 2.0 at ordinal 17 comes after the worst kept (2.0, ordinal 11), 9.0 too; ordinal 5
    # ties on the key and comes before it; 1.5 comes before it. Groups 1 (not full) and 2: kept.
    assert len(both) == 3 + 4
    expected = brute_force(np.r_[[1.0, 2.0, 3.0, 5.0], [2.0, 2.0, 9.0, 1.5, 9.0, 9.0]] * sign,
                           np.r_[[10, 11, 12, 13], [5, 17, 18, 19, 20, 21]], np.r_[[0, 0, 0, 1], [0, 0, 0, 0, 1, 2]], 2,
                           largest)
    np.testing.assert_array_equal(both["ordinal"], expected)


@pytest.mark.parametrize("n_groups", [9, 300])  # many rows per kept slot, few
@pytest.mark.parametrize("keys", ["hash", "few values", "ascending"])
@pytest.mark.parametrize("n", [1, 50, 128, 700])
def test_smallest_per_group_is_a_sort_by_group_key_ordinal(keys, n, n_groups):
    """Both kernels (bounded heaps, selection) and their dispatch, against a Python sort."""
    from mega_taxonomy.ops.select import numba as select_numba
    from mega_taxonomy.ops.select import smallest_per_group

    rng = np.random.default_rng(n)
    m = 6000
    ordinal = rng.permutation(2 * m)[:m]
    group = rng.integers(0, n_groups, m)
    key = {"hash": hash_ids(ordinal, 1), "few values": rng.integers(0, 4, m).astype(np.float64),
           "ascending": np.arange(m, dtype=np.float64)}[keys]
    expected = brute_force(key, ordinal, group, n, largest=False)
    np.testing.assert_array_equal(ordinal[smallest_per_group(key, ordinal, n, group)], expected)
    for kernel in (select_numba._smallest_by_heaps, select_numba._smallest_by_selection):
        selected = kernel(key, ordinal.astype(np.int64), group, n, n_groups)
        np.testing.assert_array_equal(ordinal[selected], expected)


def blocks_of(key, ordinal, group, n, largest, n_blocks, rng, **columns):
    cuts = np.sort(rng.choice(np.arange(1, len(key)), n_blocks - 1, replace=False))
    split = [np.split(a, cuts) for a in (key, ordinal, group, *columns.values())]
    return [BestPerGroup(n, {"key": k, "ordinal": o, "group": g, **dict(zip(columns, rest))}, largest=largest)
            for k, o, g, *rest in zip(*split)]


@pytest.mark.parametrize("largest", [False, True])
def test_a_running_total_updated_in_place_selects_the_brute_force_rows(monkeypatch, largest):
    """``total += block``, as the runtime adds a pass's blocks: the total moves into a table of
    heaps, which widens for groups it has not seen (-1 included), takes float64 keys after
    float32 ones, and drops the rows it pushed out from its log, with every column kept along."""
    monkeypatch.setattr(best_per_group, "_UNSELECTED_ROWS", 64)  # the log is cut down now and then
    rng = np.random.default_rng(1)
    m, n = 20000, 7
    key = rng.integers(0, 500, m).astype(np.float64)  # ties: broken by ordinal
    ordinal = rng.permutation(m)
    group = np.where(np.arange(m) < m // 4, rng.integers(10, 20, m), rng.integers(-1, 40, m))  # groups widen later
    blocks = blocks_of(key, ordinal, group, n, largest, 60, rng, payload=ordinal * 3)
    for i in range(0, len(blocks), 2):  # float32 keys in every other block: exact, so the same rows
        blocks[i]._parts[0]["key"] = blocks[i]._parts[0]["key"].astype(np.float32)
    expected = brute_force(key, ordinal, group, n, largest)
    total = blocks[0]
    for block in blocks[1:]:
        total += block
        if total._table is not None:
            before = total["ordinal"]  # read halfway: pure sums leave the table as it was
            other = total + blocks[0]
            np.testing.assert_array_equal(total["ordinal"], before)
            assert len(other) >= len(total)
    assert total._table is not None
    # rows pushed out again leave the log: it never holds more than 4 x 64 and a block
    assert total._table.logged <= 4 * max(len(total), 64) + max(len(b) for b in blocks)
    np.testing.assert_array_equal(total["ordinal"], expected)
    np.testing.assert_array_equal(total["payload"], expected * 3)
    np.testing.assert_array_equal(total["group"], np.sort(total["group"]))
    assert len(total) == len(expected)
    shipped = pickle.loads(pickle.dumps(total))  # crosses processes as a selection
    assert shipped._table is None
    np.testing.assert_array_equal(shipped["ordinal"], expected)


def test_a_running_total_keeps_parts_where_a_table_would_not_pay():
    """Few rows for the groups' slots, or many rows kept per group (scattered heaps): parts."""
    rng = np.random.default_rng(2)
    sparse = blocks_of(rng.random(400), np.arange(400), rng.integers(0, 10_000, 400), 4, False, 4, rng)
    wide = blocks_of(rng.random(4000), np.arange(4000), np.zeros(4000, np.int64), 500, False, 4, rng)
    for blocks in (sparse, wide):
        total = blocks[0]
        for block in blocks[1:]:
            total += block
        assert total._table is None



def test_a_pass_draws_its_sample_through_a_table_of_heaps():
    """The runtime adds a pass's sample partials with +=: a small sample per group moves into
    a table, and the pass gives the rows of lowest hash of every group."""
    from mega_taxonomy.partials.sampling import block_sample
    from mega_taxonomy.io import BLOCK_ROWS, VectorSource
    from mega_taxonomy.runtime import LocalRuntime

    n_rows, size = 3 * BLOCK_ROWS + 123, 8
    source = VectorSource(np.zeros((n_rows, 2), np.float32))  # ids: the row numbers

    def task(block, state, device):
        return block_sample(block, size, 1, groups=block.ordinals % 300, moments=False)

    sample = LocalRuntime(device="cpu", progress=False).map_reduce(source, task, None)
    assert sample.rows._table is not None
    ordinals = np.arange(n_rows)
    expected = brute_force(hash_ids(ordinals, 1), ordinals, ordinals % 300, size, largest=False)
    np.testing.assert_array_equal(sample.ordinals, expected)
