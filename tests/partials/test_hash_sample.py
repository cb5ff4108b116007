"""hash_sample: only rows below a hash bound travel, and the sample is the rows of lowest hash
all the same, brute force's; where too few fall below the bound, a second pass without it."""

import numpy as np
import pytest

from mega_taxonomy.io import VectorSource
from mega_taxonomy.ops.hashing import hash_ids
from mega_taxonomy.partials import sampling
from mega_taxonomy.runtime import CountingRuntime, LocalRuntime


@pytest.mark.parametrize("candidates,passes", [(4, 1), (0.01, 2)])
def test_the_rows_of_lowest_hash_through_a_bound(monkeypatch, candidates, passes):
    monkeypatch.setattr(sampling, "CANDIDATES_PER_ROW", candidates)
    x = np.random.default_rng(0).normal(size=(300_000, 3)).astype(np.float32)
    source = VectorSource(x)
    runtime = CountingRuntime(LocalRuntime("cpu", progress=False))
    assert sampling.hash_bound(1000, len(source)) is not None
    sample = sampling.hash_sample(source, 1000, 7, runtime)
    hashes = hash_ids(np.arange(len(x)), 7)
    expected = np.argsort(hashes, kind="stable")[:1000]
    np.testing.assert_array_equal(sample.ordinals, expected)
    np.testing.assert_array_equal(sample.vectors, x[expected])
    assert sample.count == len(x) and runtime.passes == passes
    np.testing.assert_allclose(sample.mean_variance, x.astype(np.float64).var(0).mean(), rtol=1e-9)


def test_no_bound_where_the_sample_is_most_of_the_rows():
    assert sampling.hash_bound(1000, 5000) is None and sampling.hash_bound(10, 10**9) == int(40 / 1e9 * 2.0**64)
