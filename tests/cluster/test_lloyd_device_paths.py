"""The device-side pieces of a Lloyd pass, checked on the CPU against the host code they replace."""

import numpy as np
import torch

from mega_taxonomy.cluster.lloyd import LloydState, LloydTask, block_farthest, farthest_sorted


def test_farthest_sorted_is_block_farthest():
    rng = np.random.default_rng(0)
    n, k, n_groups = 5000, 60, 12
    distances = torch.from_numpy(rng.integers(0, 50, size=n).astype(np.float64))  # many ties
    labels = torch.from_numpy(rng.integers(0, k, size=n))
    groups = labels.numpy() * n_groups // k
    ordinals = np.arange(100, 100 + n)
    state = LloydState(np.zeros((k, 2), np.float32), offsets=np.arange(0, k + 1, k // n_groups), far_per_group=7)
    ref = block_farthest(distances, labels, ordinals, groups, state)
    got = farthest_sorted(distances, labels, ordinals, groups, 7)
    for name in got:
        np.testing.assert_array_equal(got[name], ref[name])


def test_task_moves_centroids_once_per_pass_and_pickles_without_them():
    import pickle

    task, state = LloydTask(), LloydState(np.ones((3, 2), np.float32))
    a = task._centroids(state, torch.device("cpu"))
    assert task._centroids(state, torch.device("cpu")) is a
    assert task._centroids(LloydState(np.ones((3, 2), np.float32)), torch.device("cpu")) is not a
    assert pickle.loads(pickle.dumps(task)).__dict__ == {}
