"""LowestPerGroup (the device half of a hash sample's selection) against the host's BestPerGroup:
the same rows in the same order, whatever the blocks' merge order; it adds to a host selection
and crosses processes as one. Built here on the CPU; tests/gpu runs a pass with it on CUDA."""

import itertools
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mega_taxonomy.partials import BestPerGroup, LowestPerGroup, block_sample, device_block_sample

U64_MAX = np.uint64(2**64 - 1)


def _rows(rng, n_rows, n_groups):
    """uint64 hashes with many ties (the largest value among them), groups with -1, ordinals ascending."""
    values = np.r_[rng.integers(0, 2**63, size=40, dtype=np.uint64) * np.uint64(2), U64_MAX, np.uint64(0)]
    hashes = rng.choice(values, size=n_rows)
    groups = rng.integers(-1, n_groups, size=n_rows)
    return hashes, np.arange(50, 50 + n_rows), groups


def _host(n, hashes, ordinals, groups):
    return BestPerGroup(n, {"hash": hashes, "ordinal": ordinals, "group": groups}, key="hash")


def _device(n, n_groups, hashes, ordinals, groups):
    return LowestPerGroup.of_block(torch.from_numpy(hashes.view(np.int64)), torch.from_numpy(ordinals),
                                   torch.from_numpy(groups), n_groups, n)


@pytest.mark.parametrize("merge_rows", [1 << 20, 1], ids=["selected when read", "selected at every add"])
@pytest.mark.parametrize("n_groups, n", [(1, 40), (12, 7), (30, 500)])
def test_lowest_per_group_selects_as_the_host(n_groups, n, merge_rows, monkeypatch):
    """Rows pending and tables merged in any order and grouping: the host's selection. (With a
    merge at every add, the small tables are selected as soon as rows pass their slots; then two
    tables meet.)"""
    monkeypatch.setattr(LowestPerGroup, "MIN_MERGE_ROWS", merge_rows)
    rng = np.random.default_rng(n)
    hashes, ordinals, groups = _rows(rng, 6000, n_groups)
    ref = _host(n, hashes, ordinals, groups)
    cuts = [0, 1000, 1001, 3500, 6000]
    parts = [_device(n, n_groups, hashes[a:b], ordinals[a:b], groups[a:b]) for a, b in itertools.pairwise(cuts)]
    in_order = parts[0] + parts[1] + parts[2] + parts[3]
    shuffled = (parts[3] + parts[0]) + (parts[2] + parts[1])
    for got in (in_order, shuffled):
        assert len(got) == len(ref["ordinal"])
        for name in ("hash", "ordinal", "group"):
            np.testing.assert_array_equal(got[name], ref[name])
    assert got["hash"].dtype == np.uint64 and (got["group"] == -1).any()


def test_lowest_per_group_adds_to_host_selections_and_pickles_as_one():
    rng = np.random.default_rng(1)
    hashes, ordinals, groups = _rows(rng, 3000, 5)
    ref = _host(20, hashes, ordinals, groups)
    device = _device(20, 5, hashes[:2000], ordinals[:2000], groups[:2000])
    host = _host(20, hashes[2000:], ordinals[2000:], groups[2000:])
    arrived = pickle.loads(pickle.dumps(device))
    assert isinstance(arrived, BestPerGroup)
    for got in (device + host, host + device, arrived + host):
        np.testing.assert_array_equal(got["ordinal"], ref["ordinal"])
    total = _host(20, hashes[2000:], ordinals[2000:], groups[2000:])
    total += device  # a runtime's running total on the host
    np.testing.assert_array_equal(total["hash"], ref["hash"])


@pytest.mark.parametrize("ids", ["an id column", "the ordinals", "ordinals with gaps"])
def test_device_block_sample_is_the_host_draw(ids):
    """The partial a GPU pass makes of a block (rows hashed and selected where the labels are)
    against block_sample's of the same block; where the tables would not fit, None (the host draws)."""
    rng = np.random.default_rng(2)
    ordinals = np.arange(7000, 12000) if ids != "ordinals with gaps" else np.sort(rng.choice(9000, 5000, replace=False))
    block = SimpleNamespace(ids=rng.permutation(10**6)[:5000] if ids == "an id column" else ordinals.copy(),
                            ordinals=ordinals, vectors=np.zeros((5000, 3), np.float32))
    labels = rng.integers(-1, 9, size=5000)
    host = block_sample(block, 30, 11, groups=labels, moments=False)
    device = device_block_sample(block, 30, 11, torch.from_numpy(labels), 9)
    for name in ("hashes", "ordinals", "groups"):
        np.testing.assert_array_equal(getattr(device, name), getattr(host, name))
    assert device.count == host.count == 5000
    assert device_block_sample(block, 1 << 20, 11, torch.from_numpy(labels), 9) is None


@pytest.mark.parametrize("below", [None, 2**64 // 40], ids=["every row", "rows below a hash bound"])
def test_device_block_sample_of_all_rows_is_the_host_draw(below):
    """SampleTask's draw on a GPU (one group, the rows' moments, an optional hash bound) against
    block_sample's of the same block: the same rows in the same order, the same float64 sums."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((4000, 5)).astype(np.float32))
    ordinals = np.arange(100, 4100)
    block = SimpleNamespace(ids=ordinals, ordinals=ordinals, vectors=x)
    host = block_sample(block, 300, 5, below=below)
    device = device_block_sample(block, 300, 5, None, 1, moments=True, below=below)
    assert isinstance(device.rows, LowestPerGroup)
    for name in ("hashes", "ordinals", "groups"):
        np.testing.assert_array_equal(getattr(device, name), getattr(host, name))
    # a bound that about 100 of the 4000 rows pass: fewer than the 300 asked, and no others taken
    assert len(device.rows) == 300 if below is None else 60 < len(device.rows) < 150
    for ours, ref in ((device.total, host.total), (device.total_sq, host.total_sq)):
        np.testing.assert_allclose(np.asarray(ours.value()), np.asarray(ref.value()), rtol=1e-12)
