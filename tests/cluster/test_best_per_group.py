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
