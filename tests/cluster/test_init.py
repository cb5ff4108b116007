"""k-means++ seeding: a batch of samples (the GPU path of a taxonomy level) draws what each sample
would alone, with its own generator."""

import numpy as np
import pytest
import torch

from mega_taxonomy.cluster.init import kmeans_plusplus, kmeans_plusplus_batch
from mega_taxonomy.taxonomy import levels


def samples_of(sizes, d=12, seed=0):
    rng = np.random.default_rng(seed)
    out = [rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0) + rng.normal(size=d) * 5 for n in sizes]
    out[-1][:] = out[-1][0]  # one sample of identical rows: after its first center, uniform draws
    return out


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_batch_draws_what_each_sample_draws_alone(metric):
    sizes, centers = [40, 17, 64, 9], [5, 3, 16, 4]
    samples = samples_of(sizes)
    alone = [kmeans_plusplus(torch.as_tensor(s), k, np.random.default_rng([7, g]), metric=metric).numpy()
             for g, (s, k) in enumerate(zip(samples, centers))]
    padded = np.stack([np.concatenate([s, np.repeat(s[:1], max(sizes) - len(s), 0)]) for s in samples])
    chosen = kmeans_plusplus_batch(torch.as_tensor(padded), np.array(sizes), np.array(centers),
                                   [np.random.default_rng([7, g]) for g in range(len(sizes))], metric=metric)
    for g, (s, rows) in enumerate(zip(samples, chosen)):
        assert len(rows) == centers[g] and rows.max() < sizes[g]  # never a padding row
        np.testing.assert_array_equal(s[rows], alone[g])


class _Sample:
    """A level's hash sample as seed_children reads it: rows of every node, by node."""

    def __init__(self, samples):
        self.vectors = np.concatenate(samples)
        self.groups = np.repeat(np.arange(len(samples)), [len(s) for s in samples])

    def of_group(self, node):
        return self.vectors[self.groups == node]


def test_batched_seeding_is_the_seeding_node_by_node(monkeypatch):
    samples = samples_of([30, 50, 12, 50, 20])
    n_children = np.array([4, 6, 0, 8, 3])
    args = dict(metric="euclidean", seed=3, level=1, dtype=np.float64)
    by_node = levels.seed_children(_Sample(samples), n_children, device="cpu", **args)
    monkeypatch.setattr(levels, "_SEED_BATCH_BYTES", 2 * 50 * 12 * 8)  # batches of two nodes (float64)
    batches = []
    batch = levels.kmeans_plusplus_batch
    monkeypatch.setattr(levels, "kmeans_plusplus_batch", lambda x, *a, **k: batches.append(len(x)) or batch(x, *a, **k))
    nodes = np.flatnonzero(n_children)
    batched = levels._seed_in_batches([samples[i] for i in nodes], n_children[nodes],
                                      [np.random.default_rng([3, 1, int(i)]) for i in nodes], "euclidean",
                                      np.float64, "cpu")
    assert batches == [2, 2]
    np.testing.assert_array_equal(batched, by_node)
