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


@pytest.fixture
def whole_on_cpu(monkeypatch):
    """LocalRuntime takes the whole-source path on the CPU too (there, only for a GPU's tensors);
    the passes made so are counted."""
    taken = []

    def resident(source, device):
        block = source.whole_block()
        taken.append(block is not None)
        return block

    monkeypatch.setattr(local, "resident", resident)
    return taken


@pytest.mark.parametrize("update,keep_labels,penalty", [(True, True, False), (False, True, True), (True, False, False)])
def test_whole_pass_is_the_blocks_one_by_one(update, keep_labels, penalty):
    x = rows()
    source = VectorSource(x)
    c = x[:: x.shape[0] // 11][:11].numpy()
    state = LloydState(c, update=update, keep_labels=keep_labels,
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


def test_whole_pass_declines_what_needs_the_blocks():
    source = VectorSource(rows(1000))
    c = np.zeros((3, 6), np.float32)
    for state in (LloydState(c, far=True), LloydState(c, sample=(5, 0)), LloydState(c, track_bounds=True),
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


def test_a_bad_row_of_a_whole_tensor_is_named_as_block_by_block(whole_on_cpu):
    x = rows(5000).float()
    x[4321, 2] = float("nan")
    source = VectorSource(x)
    assert source.whole_block() is None
    with pytest.raises(DataError, match="4321"):
        KMeans(3, init=x[:3].numpy(), max_iter=2, tol=0, device="cpu").fit(x)
    assert whole_on_cpu == [False]
