"""The compiled id hash against its numpy twin, and the torch one (a GPU pass's) against both."""

import numpy as np
import pytest
import torch

from mega_taxonomy.ops.hashing import hash_ids, hash_ids_reference, hash_ids_torch


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**40])
def test_compiled_hash_is_the_numpy_hash(seed):
    extremes = [-1, -2**63, 2**63 - 1]
    ids = np.r_[np.arange(5000), np.random.default_rng(seed % 97).integers(-2**63, 2**63 - 1, 5000), extremes]
    np.testing.assert_array_equal(hash_ids(ids, seed), hash_ids_reference(ids, seed))
    strided = ids[::3]
    np.testing.assert_array_equal(hash_ids(strided, seed), hash_ids_reference(strided, seed))
    assert hash_ids(np.zeros(0, np.int64), seed).dtype == np.uint64
    device = "cuda" if torch.cuda.is_available() else "cpu"
    on_torch = hash_ids_torch(torch.from_numpy(ids).to(device), seed).cpu().numpy()
    np.testing.assert_array_equal(on_torch.view(np.uint64), hash_ids_reference(ids, seed))


def test_hashes_spread_sequential_ids():
    """Sequential ids give hashes spread over the whole range: each of 16 buckets of the top bits
    gets its share."""
    top = hash_ids(np.arange(1 << 16), 3) >> np.uint64(60)
    counts = np.bincount(top.astype(np.int64), minlength=16)
    assert counts.min() > 0.9 * (1 << 12) and counts.max() < 1.1 * (1 << 12)
