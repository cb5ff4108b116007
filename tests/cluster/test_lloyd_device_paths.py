"""The device-side pieces of a Lloyd pass, checked on the CPU against the host code they replace."""

import importlib
import itertools

import numpy as np
import pytest
import torch

from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask
from mega_taxonomy.cluster.relocate import block_farthest
from mega_taxonomy.partials.farthest import FarthestPerGroup


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # one sort on a packed key, two sorts
@pytest.mark.parametrize("n_groups, n", [(12, 7), (1, 40), (30, 500)])
def test_farthest_per_group_selects_as_the_host_table(n_groups, n, dtype):
    """Device tables of blocks (built and merged here on the CPU), in any merge order, against the
    host selection of all rows: same rows, same order, ties (many) by ordinal, label -1 left out;
    negative, zero, subnormal and huge distances among them."""
    rng = np.random.default_rng(n)
    rows, k = 6000, 5 * n_groups
    values = np.r_[np.arange(-5, 45), -0.0, 1e-45, -1e-45, 3e38, -3e38].astype(dtype)
    distances = torch.from_numpy(rng.choice(values, size=rows))
    labels = torch.from_numpy(rng.integers(-1, k, size=rows))  # -1: a row under a leaf
    groups = np.maximum(labels.numpy(), 0) * n_groups // k
    ordinals = np.arange(100, 100 + rows)
    state = LloydState(np.zeros((k, 2), np.float32), offsets=np.arange(0, k + 1, k // n_groups), far_per_group=n)
    ref = block_farthest(distances, labels, ordinals, groups, state)
    cuts = [0, 1000, 1001, 3500, rows]
    parts = [FarthestPerGroup.of_block(distances[a:b], labels[a:b], torch.from_numpy(ordinals[a:b]),
                                       torch.from_numpy(groups[a:b]), n_groups, n) for a, b in itertools.pairwise(cuts)]
    in_order = parts[0] + parts[1] + parts[2] + parts[3]
    shuffled = (parts[3] + parts[0]) + (parts[2] + parts[1])
    # all rows at once (one group of them: a top-k before the sorts)
    whole = FarthestPerGroup.of_block(distances, labels, torch.from_numpy(ordinals), torch.from_numpy(groups),
                                      n_groups, n)
    for got in (in_order, shuffled, whole):
        for name in ("distance", "ordinal", "label", "group"):
            np.testing.assert_array_equal(got[name], ref[name])


def test_farthest_of_many_rows_with_fewer_in_clusters_than_kept():
    """One group of many rows, fewer of them in a cluster than the selection holds: all of those,
    farthest first, the rest of the table empty."""
    labels = torch.full((5000,), -1)
    labels[[7, 4000, 123, 2500]] = torch.tensor([0, 1, 2, 0])
    distances = torch.arange(5000, dtype=torch.float32) % 7
    part = FarthestPerGroup.of_block(distances, labels, torch.arange(5000), torch.zeros(5000, dtype=torch.int64), 1, 10)
    assert part["ordinal"].tolist() == [123, 4000, 2500, 7]  # distances 123 % 7 = 4, then 3, 1, 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_farthest_rows_tie_on_signed_zeros_by_ordinal(dtype):
    zeros = torch.zeros(5, dtype=torch.int64)
    part = FarthestPerGroup.of_block(torch.tensor([0.0, -0.0, 1.0, 0.0, -0.0], dtype=dtype), zeros,
                                     torch.arange(10, 15), zeros, 1, 5)
    assert part["ordinal"].tolist() == [12, 10, 11, 13, 14]


def test_farthest_per_group_merges_as_host_arrays_after_pickling():
    """A Ray driver gets the tables as numpy arrays (``transfer.to_host``) and adds them there."""
    import pickle

    part = FarthestPerGroup.of_block(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 1, 1]),
                                     torch.tensor([5, 6, 7]), torch.tensor([0, 1, 1]), 2, 1)
    assert part["ordinal"].tolist() == [5, 7]
    on_host = pickle.loads(pickle.dumps(FarthestPerGroup(part.distance.numpy(), part.ordinal.numpy(),
                                                         part.label.numpy())))
    both = on_host + FarthestPerGroup.of_block(torch.tensor([4.0]), torch.tensor([0]), torch.tensor([9]),
                                                     torch.tensor([0]), 2, 1)
    assert both["ordinal"].tolist() == [9, 7] and both["group"].tolist() == [0, 1]


def test_task_moves_centroids_once_per_pass_and_pickles_without_them():
    import pickle

    task, state = LloydTask(), LloydState(np.ones((3, 2), np.float32))
    a = task._centroids(state, torch.device("cpu"))
    assert task._centroids(state, torch.device("cpu")) is a
    assert task._centroids(LloydState(np.ones((3, 2), np.float32)), torch.device("cpu")) is not a
    assert pickle.loads(pickle.dumps(task)).__dict__ == {}


class SumsAsTensors:
    """A CPU LocalRuntime whose Lloyd passes give their statistics as tensors, as sums left on a
    device do: lloyd's path that queues the update behind the pass, run here without a GPU."""

    def __init__(self):
        from mega_taxonomy.runtime import LocalRuntime

        self.runtime = LocalRuntime("cpu", progress=False)

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def map_reduce(self, source, task, state, *, desc=None):
        partial = self.runtime.map_reduce(source, task, state, desc=desc)
        if partial.sums is not None:
            partial.sums, partial.counts, partial.inertia = (
                torch.from_numpy(np.asarray(a)) for a in (partial.sums, partial.counts, partial.inertia))
        return partial


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("empty", [False, True])
def test_an_update_queued_behind_the_pass_gives_the_host_updates_bits(metric, empty):
    """Sums as tensors: the update computed before the counts come back (and, when a cluster went
    empty, the relocation instead) gives the bits of the update from arrays, iteration after
    iteration."""
    from mega_taxonomy.cluster.lloyd import lloyd
    from mega_taxonomy.io import VectorSource
    from mega_taxonomy.runtime import LocalRuntime

    rng = np.random.default_rng(9)
    centers = rng.normal(size=(40, 8)) * 5
    x = (centers[rng.integers(0, 40, 20_000)] + rng.normal(size=(20_000, 8))).astype(np.float32)
    init = np.concatenate([x[:37], x[:3]]) if empty else x[:40].copy()  # > MAX_CHILDREN: no bounds
    want = lloyd(VectorSource(x), init, LocalRuntime("cpu", progress=False), metric=metric, max_iter=5)
    shifts = []
    got = lloyd(VectorSource(x), init, SumsAsTensors(), metric=metric, max_iter=5,
                on_iteration=lambda n, c, shift, p: shifts.append(shift))
    np.testing.assert_array_equal(got.centroids, want.centroids)
    np.testing.assert_array_equal(got.counts, want.counts)
    assert got.n_iter == want.n_iter == 5 and got.inertia == want.inertia
    assert all(isinstance(s, float) and s >= 0 for s in shifts) and len(shifts) == 5


class RecordingPasses(SumsAsTensors):
    """SumsAsTensors that records every pass it runs: (desc, the centroids' bytes)."""

    def __init__(self, as_tensors=True):
        super().__init__()
        self.as_tensors, self.passes = as_tensors, []

    def map_reduce(self, source, task, state, *, desc=None):
        self.passes.append((desc, np.asarray(state.centroids).tobytes()))
        if self.as_tensors:
            return super().map_reduce(source, task, state, desc=desc)
        return self.runtime.map_reduce(source, task, state, desc=desc)


@pytest.mark.parametrize("sums", ["tensors", "arrays"])
@pytest.mark.parametrize("stop", ["max_iter", "tol", "empty"])
def test_passes_launched_ahead_are_the_passes_one_by_one(sums, stop, monkeypatch):
    """Each pass launched before the counts of the one before came back (``look_ahead``) runs on
    the centroids the loop then takes: the same fit, the same iterations reported, and every pass
    of the loop one by one among its passes, in order. One pass at most is wasted: the one ahead
    of convergence; none ahead of the first pass, where clusters empty (nor after a cluster went empty)."""
    from mega_taxonomy.cluster.lloyd import lloyd
    from mega_taxonomy.io import VectorSource

    driver = importlib.import_module("mega_taxonomy.runtime.iterate")  # (the package's ``iterate`` is its function)
    monkeypatch.setattr(driver, "LOOK_AHEAD_MAX_SECONDS", 60.0)  # every pass short, on a loaded machine too

    rng = np.random.default_rng(4)
    # Small integers: the first pass's distances are exact, so the copies x[:3] of the first three
    # centroids tie in any BLAS kernel's summation order, and clusters 37-39 go empty everywhere.
    centers = rng.integers(-12, 13, size=(40, 8))
    x = (centers[rng.integers(0, 40, 20_000)] + rng.integers(-2, 3, size=(20_000, 8))).astype(np.float32)
    init = np.concatenate([x[:37], x[:3]]) if stop == "empty" else x[:40].copy()  # > MAX_CHILDREN: no bounds
    assert len(np.unique(x[:40], axis=0)) == 40  # no copies among the centroids but those made here
    settings = {"max_iter": 100, "tol": 1e-2} if stop == "tol" else {"max_iter": 6}

    def fit(look_ahead):
        runtime, reported, launched = RecordingPasses(as_tensors=sums == "tensors"), [], []

        def on_iteration(n, c, shift, penalty):
            reported.append((n, np.asarray(c).tobytes(), shift))
            launched.append(len(runtime.passes))  # passes launched by then

        result = lloyd(VectorSource(x), init, runtime, look_ahead=look_ahead, on_iteration=on_iteration, **settings)
        return result, reported, runtime.passes, np.array(launched)

    one_by_one, reported, passes, launched = fit(False)
    ahead, reported_ahead, passes_ahead, launched_ahead = fit(None if sums == "tensors" else True)
    np.testing.assert_array_equal(ahead.centroids, one_by_one.centroids)
    np.testing.assert_array_equal(ahead.counts, one_by_one.counts)
    assert (ahead.n_iter, ahead.inertia, reported_ahead) == (one_by_one.n_iter, one_by_one.inertia, reported)
    assert one_by_one.n_iter < 100 if stop == "tol" else one_by_one.n_iter == 6
    remaining = iter(passes_ahead)
    assert all(p in remaining for p in passes)  # in order
    assert len(passes_ahead) - len(passes) == (1 if stop == "tol" else 0)
    if stop == "empty":  # the first pass emptied a cluster: none was launched ahead of it, nor since
        assert passes[1][0] == "lloyd 1 far"
        assert (launched_ahead - launched).tolist() == [0] * one_by_one.n_iter
    else:  # one pass ahead at every iteration but the first and the last (of max_iter)
        assert (launched_ahead - launched).tolist() == [0] + [1] * (one_by_one.n_iter - 2) + [int(stop == "tol")]


def test_no_pass_ahead_after_a_long_pass(monkeypatch):
    """By default a pass is launched ahead only where the one before took at most
    ``LOOK_AHEAD_MAX_SECONDS``: a long pass ahead saves little and is lost when a cluster empties.
    (Here every pass is long: the bound is 0.)"""
    from mega_taxonomy.cluster.lloyd import lloyd
    from mega_taxonomy.io import VectorSource

    driver = importlib.import_module("mega_taxonomy.runtime.iterate")
    x = np.random.default_rng(6).normal(size=(5000, 8)).astype(np.float32)
    for bound, ahead in ((0.0, 0), (60.0, 1)):
        monkeypatch.setattr(driver, "LOOK_AHEAD_MAX_SECONDS", bound)
        runtime, launched = RecordingPasses(as_tensors=True), []
        lloyd(VectorSource(x), x[:40].copy(), runtime, max_iter=4, tol=-1.0,
                     on_iteration=lambda *_, passes=runtime.passes, launched=launched: launched.append(len(passes)))
        assert launched == [1, 2 + ahead, 3 + ahead, 4], bound  # none ahead of the first, nor of the last


def test_no_pass_ahead_where_the_next_depends_on_the_counts():
    """Penalties that follow the sizes (and bounds, and an explicit ``look_ahead=False``) need
    the counts before the next pass: passes run one by one."""
    from mega_taxonomy.cluster.lloyd import lloyd
    from mega_taxonomy.io import VectorSource
    from mega_taxonomy.ops.grouped_assign import MAX_CHILDREN

    rng = np.random.default_rng(5)
    x = rng.normal(size=(5000, 8)).astype(np.float32)
    cases = [(True, 40, {"penalty_strength": 0.5}), (True, 40, {"look_ahead": False}),
             (False, MAX_CHILDREN, {"look_ahead": True})]  # few centroids, in process on the CPU: bounds
    for as_tensors, k, kwargs in cases:
        runtime, launched = RecordingPasses(as_tensors), []
        lloyd(VectorSource(x), x[:k].copy(), runtime, max_iter=4, tol=-1.0, **kwargs,
              on_iteration=lambda *_, passes=runtime.passes, launched=launched: launched.append(len(passes)))
        assert [desc for desc, _ in runtime.passes] == [f"lloyd {n}" for n in range(1, 5)] + ["lloyd assign"]
        assert launched == [1, 2, 3, 4]  # none launched ahead of its iteration
