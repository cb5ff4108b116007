"""A pass over every block at once (``LloydTask.whole``, taken by LocalRuntime for a tensor on its
GPU), checked on the CPU against the blocks one by one: the same bits."""

import numpy as np
import pytest
import torch

from mega_taxonomy import KMeans
from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask
from mega_taxonomy.errors import DataError
from mega_taxonomy.io import BLOCK_ROWS, VectorSource
from mega_taxonomy.runtime import LocalRuntime, local, settled


def rows(n=2 * BLOCK_ROWS + 1000, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=g) * 4
    # magnitudes far apart: float64 sums whose bits depend on the order of the additions
    return (centres[torch.randint(0, 8, (n,), generator=g)] + torch.randn(n, d, generator=g)) * torch.exp(
        3 * torch.randn(n, 1, generator=g))


@pytest.mark.parametrize("update,keep_labels,penalty,far", [(True, True, False, False), (False, True, True, False),
                                                            (True, False, False, False), (True, False, False, True),
                                                            (False, False, False, True)])
def test_whole_pass_is_the_blocks_one_by_one(update, keep_labels, penalty, far):
    x = rows()
    source = VectorSource(x)
    c = x[:: x.shape[0] // 11][:11].numpy()
    state = LloydState(c, update=update, keep_labels=keep_labels, far=far, far_per_group=500,
                       penalty=np.linspace(0, 3, 11) if penalty else None)
    whole = settled(LloydTask().whole(source.whole_block(), state, torch.device("cpu")))
    by_blocks = LocalRuntime("cpu", progress=False).map_reduce(source, LloydTask(), state)
    np.testing.assert_array_equal(whole.counts.numpy() if torch.is_tensor(whole.counts) else whole.counts,
                                  by_blocks.counts)
    for name in ("inertia", "sums") if update else ("inertia",):
        a, b = getattr(whole, name), getattr(by_blocks, name)
        assert np.array_equal(np.asarray(a), np.asarray(b)), name
    if keep_labels:
        for a, b in zip(whole.ordered_labels(), by_blocks.ordered_labels()):
            np.testing.assert_array_equal(np.asarray(a), b)
    if far:  # the farthest rows of all blocks at once (500 of 132,072: a top-k first) and merged
        for name in ("distance", "ordinal", "label", "group"):
            np.testing.assert_array_equal(whole.far[name], by_blocks.far[name])
    else:
        assert whole.far is None and by_blocks.far is None


def test_whole_pass_declines_what_needs_the_blocks():
    source = VectorSource(rows(1000))
    c = np.zeros((3, 6), np.float32)
    for state in (LloydState(c, sample=(5, 0)), LloydState(c, track_bounds=True),
                  LloydState(c, offsets=np.array([0, 1, 3]), groups={0: np.zeros(1000, np.int64)})):
        assert LloydTask().whole(source.whole_block(), state, torch.device("cpu")) is None


def test_kmeans_on_a_whole_tensor_is_kmeans_block_by_block(whole_on_cpu):
    x = rows(seed=1).float()
    init = x[:: x.shape[0] // 9][:9].numpy()
    whole = KMeans(9, init=init, max_iter=6, tol=0, device="cpu").fit(x)
    by_blocks = KMeans(9, init=init, max_iter=6, tol=0, device="cpu").fit(x.numpy())  # arrays: never whole
    np.testing.assert_array_equal(whole.cluster_centers_, by_blocks.cluster_centers_)
    np.testing.assert_array_equal(whole.labels_, by_blocks.labels_)
    assert isinstance(whole.labels_, np.ndarray) and whole.inertia_ == by_blocks.inertia_
    labels = whole.predict(x)
    assert torch.is_tensor(labels) and np.array_equal(labels.numpy(), by_blocks.labels_)
    # the tensor's 6 iterations and final assignment, the array's (never whole), predict on the tensor
    assert whole_on_cpu == [True] * 7 + [False] * 7 + [True]


def test_kmeans_refilling_empty_clusters_on_a_whole_tensor_is_kmeans_block_by_block(whole_on_cpu):
    """Copies among the initial centroids leave clusters empty: the passes that keep the farthest
    rows to refill them are whole passes too, and move the same rows."""
    x = rows(seed=4).float()
    init = np.repeat(x[:: x.shape[0] // 3][:3].numpy(), 3, axis=0)  # 9 centroids, 3 distinct
    whole = KMeans(9, init=init, max_iter=5, tol=0, device="cpu").fit(x)
    by_blocks = KMeans(9, init=init, max_iter=5, tol=0, device="cpu").fit(x.numpy())
    np.testing.assert_array_equal(whole.cluster_centers_, by_blocks.cluster_centers_)
    np.testing.assert_array_equal(whole.labels_, by_blocks.labels_)
    assert whole.inertia_ == by_blocks.inertia_ and len(np.unique(whole.labels_)) == 9
    # the passes, the one that first finds the farthest rows among them, and the labels' pass: all whole
    assert len(whole_on_cpu) == 7 + 7 and all(whole_on_cpu[:7]) and not any(whole_on_cpu[7:])


def test_a_bad_row_of_a_whole_tensor_is_named_as_block_by_block(whole_on_cpu):
    x = rows(5000).float()
    x[4321, 2] = float("nan")
    source = VectorSource(x)
    assert source.whole_block() is None
    with pytest.raises(DataError, match="4321"):
        KMeans(3, init=x[:3].numpy(), max_iter=2, tol=0, device="cpu").fit(x)
    assert whole_on_cpu == [False]


@pytest.mark.parametrize("device_sums", [False, True])
@pytest.mark.parametrize("update,keep_labels", [(True, True), (False, True), (True, False)])
def test_runs_of_blocks_add_up_to_the_blocks_one_by_one(update, keep_labels, device_sums):
    x = rows(5 * BLOCK_ROWS + 77)
    source = VectorSource(x)
    c = x[:: x.shape[0] // 11][:11].numpy()
    state = LloydState(c, update=update, keep_labels=keep_labels, device_sums=device_sums)
    runs = [source.unchecked_run(start, min(start + 2, source.n_blocks))[0] for start in range(0, source.n_blocks, 2)]
    assert [run.index for run in runs] == [0, 2, 4] and sum(len(run.ordinals) for run in runs) == len(x)
    total = None
    for run in runs:
        part = LloydTask().whole(run, state, torch.device("cpu"), part=True)
        total = part if total is None else total + part
    total = settled(total)
    by_blocks = LocalRuntime("cpu", progress=False).map_reduce(source, LloydTask(), state)
    np.testing.assert_array_equal(np.asarray(total.counts), by_blocks.counts)
    for name in ("inertia", "sums") if update else ("inertia",):
        a, b = getattr(total, name), getattr(by_blocks, name)
        assert np.array_equal(np.asarray(a), np.asarray(b)), name
        assert device_sums or type(a) is type(b), name  # read on the host: arrays, as block by block
    if keep_labels:
        for a, b in zip(total.ordered_labels(), by_blocks.ordered_labels()):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_a_run_is_its_blocks_rows_in_place_and_knows_what_was_checked():
    x = rows(3 * BLOCK_ROWS + 5).numpy()
    source = VectorSource(x)
    run, checked = source.unchecked_run(1, 3)
    assert run.index == 1 and not checked and np.shares_memory(run.vectors, x)
    np.testing.assert_array_equal(run.ordinals, np.arange(BLOCK_ROWS, 3 * BLOCK_ROWS))
    source.mark_run_checked(1, 3)
    assert source.unchecked_run(1, 3)[1] and not source.unchecked_run(0, 2)[1]
    assert [checked for _, checked in source.unchecked_blocks()] == [False, True, True, False]
    x[5, 1] = np.nan
    skipping = VectorSource(x, on_invalid="skip")
    list(skipping.blocks(0, 1))  # validated: block 0 lost a row
    assert skipping.unchecked_run(0, 2) is None and skipping.unchecked_run(1, 3) is not None


def test_kmeans_by_runs_is_kmeans_block_by_block(runs_on_cpu, monkeypatch):
    x = rows(4 * BLOCK_ROWS + 300, seed=2).float().numpy()
    init = x[:: x.shape[0] // 9][:9]
    runs, whole = [], LloydTask.whole

    def counted(self, block, state, device, part=False):
        out = whole(self, block, state, device, part)
        runs.append((block.index, len(block.ordinals), out is not None))
        return out

    monkeypatch.setattr(LloydTask, "whole", counted)
    # cosine: on the CPU, euclidean passes keep Hamerly's bounds, which need the blocks one by one
    by_runs = KMeans(9, init=init, max_iter=4, tol=0, metric="cosine", device="cpu").fit(x)
    assert runs_on_cpu and all(runs_on_cpu)
    # 4 Lloyd passes and the labels' pass, each in runs of 2 blocks (the last one short)
    assert runs == [(0, 2 * BLOCK_ROWS, True), (2, 2 * BLOCK_ROWS, True), (4, 300, True)] * 5
    runs_on_cpu.clear()
    local.run_blocks = lambda source, device: None  # the fixture's monkeypatch restores it
    by_blocks = KMeans(9, init=init, max_iter=4, tol=0, metric="cosine", device="cpu").fit(x)
    np.testing.assert_array_equal(by_runs.cluster_centers_, by_blocks.cluster_centers_)
    np.testing.assert_array_equal(by_runs.labels_, by_blocks.labels_)
    assert by_runs.inertia_ == by_blocks.inertia_


def test_a_bad_row_in_a_run_is_named_or_skipped_as_block_by_block(runs_on_cpu):
    x = rows(3 * BLOCK_ROWS + 9, seed=3).float().numpy()
    x[BLOCK_ROWS + 17, 4] = np.inf
    with pytest.raises(DataError, match=f"row {BLOCK_ROWS + 17}"):
        KMeans(3, init=x[:3], max_iter=2, tol=0, device="cpu").fit(x)
    skipped = KMeans(3, init=x[:3], max_iter=2, tol=0, device="cpu").fit(VectorSource(x, on_invalid="skip"))
    local.run_blocks = lambda source, device: None
    want = KMeans(3, init=x[:3], max_iter=2, tol=0, device="cpu").fit(VectorSource(x, on_invalid="skip"))
    np.testing.assert_array_equal(skipped.cluster_centers_, want.cluster_centers_)
    assert skipped.inertia_ == want.inertia_
