"""PathCache: predict through the cache gives the paths of routing every row, routes only the ids
it has not seen (counted), stays within its capacity, starts over for another tree or beam, and
refuses inputs whose ids would clash."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mega_taxonomy import PathCache
from mega_taxonomy.storage.schema import read_paths
from mega_taxonomy.taxonomy import TaxonomyEngine


def write_shard(path, X, ids):
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1])
    pq.write_table(pa.table({"emb": vectors, "id": pa.array(ids, pa.int64())}), path)
    return str(path)


@pytest.fixture
def shards(tmp_path, three_levels):
    """Two shards of the hierarchy's rows with ids 1000 + row, and a third that repeats the
    first's rows and ids in reverse, then 40 rows of the second under new ids."""
    X, _ = three_levels
    half = len(X) // 2
    ids = 1000 + np.arange(len(X))
    a = write_shard(tmp_path / "a.parquet", X[:half], ids[:half])
    b = write_shard(tmp_path / "b.parquet", X[half:], ids[half:])
    again = np.concatenate([np.arange(half)[::-1], np.arange(half, half + 40)])
    c = write_shard(tmp_path / "c.parquet", X[again], np.concatenate([ids[:half][::-1], 10**6 + np.arange(40)]))
    return X, [a, b], c


@pytest.fixture
def engine(shards):
    _, fit_files, _ = shards
    return TaxonomyEngine(n_levels=3, branching_factor=[4, 3, 3], column="emb", id_column="id", device="cpu",
                          random_state=0, batch_size=64).fit(fit_files)


@pytest.mark.parametrize("beam", [1, 3])
def test_cached_paths_are_the_routed_paths_and_repeats_are_not_routed(engine, shards, beam):
    X, fit_files, repeat = shards
    cache = PathCache(10_000)
    first = engine.predict(fit_files, beam=beam, cache=cache)
    np.testing.assert_array_equal(first, engine.predict(fit_files, beam=beam))
    assert (cache.hits, cache.misses) == (0, len(X)) and cache.table.size() == len(X)
    again = engine.predict(repeat, beam=beam, cache=cache)
    np.testing.assert_array_equal(again, engine.predict(repeat, beam=beam))
    assert (cache.hits, cache.misses) == (len(X) // 2, len(X) + 40)  # only the 40 new ids were routed


def test_written_parts_through_the_cache_are_those_of_routing(engine, shards, tmp_path):
    _, fit_files, repeat = shards
    cache = PathCache(10_000)
    engine.predict(fit_files, cache=cache)
    engine.predict(repeat, str(tmp_path / "cached"), cache=cache)
    engine.predict(repeat, str(tmp_path / "routed"))
    cached, routed = (pq.read_table(tmp_path / name / "assignments") for name in ("cached", "routed"))
    np.testing.assert_array_equal(read_paths(cached), read_paths(routed))
    np.testing.assert_array_equal(cached.column("id").to_numpy(), routed.column("id").to_numpy())
    np.testing.assert_array_equal(cached.column("distance").to_numpy(), routed.column("distance").to_numpy())


def test_a_small_cache_holds_at_most_its_capacity_and_still_gives_every_path(engine, shards):
    X, fit_files, _ = shards
    cache = PathCache(128)  # one bucket of 128 slots: the least recently predicted ids give way
    for _ in range(2):
        np.testing.assert_array_equal(engine.predict(fit_files, cache=cache), engine.predict(fit_files))
    assert cache.table.size() == 128 and cache.table.capacity() == 128
    assert cache.hits < len(X) // 2  # most ids had been pushed out by the time they came back


def test_another_tree_or_beam_starts_an_empty_cache(engine, shards):
    X, fit_files, _ = shards
    cache = PathCache(10_000)
    engine.predict(fit_files, cache=cache)
    engine.predict(fit_files, beam=2, cache=cache)
    assert cache.hits == 0 and cache.table.size() == len(X)
    other = TaxonomyEngine(n_levels=2, branching_factor=[3, 2], column="emb", id_column="id", device="cpu",
                           random_state=1, batch_size=64).fit(fit_files)
    np.testing.assert_array_equal(other.predict(fit_files, cache=cache), other.predict(fit_files))
    assert cache.hits == 0 and cache.table.dim == 3  # two levels and the distance
    cache.clear()
    assert cache.table.size() == 0


def test_reserved_ids_are_routed_every_time(engine, three_levels, tmp_path):
    X, _ = three_levels
    path = write_shard(tmp_path / "r.parquet", X[:6], [-1, -2, 5, -3, -4, 6])
    cache = PathCache(1000)
    for _ in range(2):
        np.testing.assert_array_equal(engine.predict(path, cache=cache), engine.predict(path))
    assert (cache.hits, cache.misses) == (2, 10) and cache.table.size() == 2


def test_inputs_whose_ids_would_clash_are_refused(three_levels):
    X, _ = three_levels
    engine = TaxonomyEngine(n_levels=2, branching_factor=[3, 2], device="cpu", random_state=0).fit(X)
    with pytest.raises(ValueError, match="id column"):
        engine.predict(X, cache=PathCache(100))
    with pytest.raises(ValueError, match="capacity"):
        PathCache(0)
    with pytest.raises(TypeError, match="integer ids"):
        PathCache(10).paths(np.array(["a", "b"]), engine.tree_, 1, None)


def test_a_runtime_outside_this_process_is_refused(engine, shards):
    """Ray's workers would each fill a copy of the cache: refused before any pass."""
    from types import SimpleNamespace

    from mega_taxonomy.taxonomy.passes import predict

    _, fit_files, _ = shards
    elsewhere = SimpleNamespace(in_process=False, map_reduce=None)
    with pytest.raises(ValueError, match="in this process"):
        predict(engine.tree_, engine.router_, engine._source(fit_files), elsewhere, cache=PathCache(10))
