"""The Triton kernel of ``topk`` (small k) against its torch twin and a float64 brute force.

Without a GPU the kernel runs in Triton's CPU interpreter (conftest.py).
"""

import numpy as np
import pytest
import torch
from kernel_checks import DEVICE, RTOL, brute_force_distances

from mega_taxonomy.ops import topk
from mega_taxonomy.ops.topk import topk_reference


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
# k below, at and past a power of two; K over several centroid tiles and below one
@pytest.mark.parametrize("n,kc,d,k", [(150, 150, 24, 5), (70, 70, 40, 8), (40, 3, 8, 3), (90, 200, 16, 16)])
def test_kernel_matches_brute_force_and_twin(metric, dtype, n, kc, d, k):
    rng = np.random.default_rng(n + kc + d + k)
    x = torch.tensor(rng.normal(size=(n, d)), dtype=dtype, device=DEVICE)
    c = torch.tensor(rng.normal(size=(kc, d)), dtype=dtype, device=DEVICE)
    dist, idx = topk(x, c, k, metric=metric, backend="triton")
    assert dist.shape == idx.shape == (n, k) and idx.dtype == torch.int64
    full = brute_force_distances(x, c, metric)
    best = full.sort(1).values[:, :k]
    chosen = full.gather(1, idx.cpu())
    scale = float(full.abs().max()) + 1e-12
    assert (idx.cpu()[:, :, None] != idx.cpu()[:, None, :]).sum() == n * k * (k - 1)  # no repeats
    bad = torch.nonzero((chosen - best).abs() > RTOL[dtype] * scale)
    assert len(bad) == 0, f"(row, rank) {bad[:5].tolist()} picked a centroid off the k nearest"
    assert (dist.cpu().diff(dim=1) >= 0).all()
    torch.testing.assert_close(dist.double().cpu(), chosen, rtol=10 * RTOL[dtype], atol=10 * RTOL[dtype] * scale)
    _, twin = topk_reference(x, c, k, metric=metric)
    assert (twin == idx).float().mean().item() >= 0.98


def test_ties_keep_the_lowest_indices_across_tiles():
    x = torch.zeros(3, 8, device=DEVICE)
    c = torch.ones(300, 8, device=DEVICE)  # equal distances over several centroid tiles
    _, idx = topk(x, c, 4, backend="triton")
    assert idx.tolist() == [[0, 1, 2, 3]] * 3


def test_k_limits():
    x, c = torch.zeros(2, 4, device=DEVICE), torch.zeros(40, 4, device=DEVICE)
    with pytest.raises(ValueError, match="k <= 16"):
        topk(x, c, 17, backend="triton")
    with pytest.raises(ValueError, match="between 1"):
        topk(x, c, 41, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        topk(x, c, 2, backend="cuda")
