"""The shared machinery: pruning, EMA with and without feature masks, auto k, distances (scipy)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mega_taxonomy.learn.distance import exact_distances, pairwise
from mega_taxonomy.learn.prototypes import Prototypes, apply_means, auto_k


def protos(vectors, groups, mass):
    return Prototypes(torch.tensor(vectors, dtype=torch.float32), torch.tensor(groups),
                      torch.tensor(mass, dtype=torch.float64), n_groups=max(groups) + 1)


def test_prune_drops_dead_but_never_a_groups_last():
    p = protos([[0.0], [1.0], [2.0], [3.0], [4.0]], [0, 0, 1, 1, 2], [100.0, 0.1, 5.0, 0.0, 0.0])
    assert p.prune() == 2  # group 2 has seen no row: its prototype is kept (no evidence yet)
    assert p.vectors[:, 0].tolist() == [0.0, 2.0, 4.0] and p.groups.tolist() == [0, 1, 2]


def test_ema_moves_by_mass_share_and_masks_per_coordinate():
    p = protos([[0.0, 0.0]], [0], [3.0])
    sums = torch.tensor([[4.0, 4.0]], dtype=torch.float64)  # one row (4, 4)
    apply_means(p, sums, torch.tensor([1.0], dtype=torch.float64), None, "euclidean", decay=1.0)
    np.testing.assert_allclose(p.vectors.numpy(), [[1.0, 1.0]])  # (3 * 0 + 4) / 4
    # The second coordinate missing in the next row: only the first moves.
    coord = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    apply_means(p, torch.tensor([[6.0, 0.0]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                coord, "euclidean", decay=1.0)
    np.testing.assert_allclose(p.vectors.numpy(), [[2.0, 1.0]])  # (4 * 1 + 6) / 5, unchanged


def test_auto_k_grows_with_spread():
    rng = np.random.default_rng(0)
    tight = torch.as_tensor(rng.normal(size=(400, 4)) * 0.01)
    wide = torch.as_tensor(rng.normal(size=(400, 4)))
    assert auto_k(tight, 4.0, limit=100) == 1
    assert auto_k(wide, 4.0, limit=100) == 20  # sqrt(400) at the data's own spread


@pytest.mark.parametrize("metric,scipy_metric", [("euclidean", "sqeuclidean"), ("cosine", "cosine"),
                                                 ("l1", "cityblock")])
def test_distances_against_scipy(metric, scipy_metric):
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(30, 7)), rng.normal(size=(9, 7))
    mask = (rng.random((30, 7)) > 0.3).astype(np.float64)
    ref = cdist(x, c, scipy_metric)
    got = pairwise(torch.as_tensor(x), torch.as_tensor(c), metric).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    masked = np.stack([cdist(x[i:i + 1, mask[i] > 0], c[:, mask[i] > 0], scipy_metric)[0] for i in range(30)])
    got = pairwise(torch.as_tensor(x), torch.as_tensor(c), metric, mask=torch.as_tensor(mask)).numpy()
    np.testing.assert_allclose(got, masked, rtol=1e-9, atol=1e-9)
    idx = torch.as_tensor(np.argsort(ref, 1)[:, :3])
    ex = exact_distances(torch.as_tensor(x), torch.as_tensor(c), idx, metric).numpy()
    np.testing.assert_allclose(ex, np.sort(ref, 1)[:, :3], rtol=1e-12, atol=1e-12)
