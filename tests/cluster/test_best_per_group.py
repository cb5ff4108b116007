"""Mergeable "best n per group" selections: the same rows whatever the order and grouping of merges."""

import pickle

import numpy as np
import pytest

from mega_taxonomy.cluster import sampling
from mega_taxonomy.cluster.sampling import BestPerGroup


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
    monkeypatch.setattr(sampling, "_UNSELECTED_ROWS", 64)  # so that merges select now and then
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
    from mega_taxonomy.ops import select_numba

    rng = np.random.default_rng(n)
    m = 6000
    ordinal = rng.permutation(2 * m)[:m]
    group = rng.integers(0, n_groups, m)
    key = {"hash": sampling.hash_ids(ordinal, 1), "few values": rng.integers(0, 4, m).astype(np.float64),
           "ascending": np.arange(m, dtype=np.float64)}[keys]
    expected = brute_force(key, ordinal, group, n, largest=False)
    np.testing.assert_array_equal(ordinal[sampling.smallest_per_group(key, ordinal, n, group)], expected)
    for kernel in (select_numba._smallest_by_heaps, select_numba._smallest_by_selection):
        selected = kernel(key, ordinal.astype(np.int64), group, n, n_groups)
        np.testing.assert_array_equal(ordinal[selected], expected)
