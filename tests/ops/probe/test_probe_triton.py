"""The Triton kernel of ``probe_rerank`` against the float64 brute force and the twin (without a GPU
in Triton's interpreter, set by tests/ops/conftest.py)."""

import numpy as np
import pytest
import torch
from kernel_checks import DEVICE
from test_probe import brute_force, check_close, layout

from mega_taxonomy.ops.probe import probe_rerank


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "inner_product"])
@pytest.mark.parametrize("copies,k", [(1, 5), (2, 8)])
def test_kernel_matches_brute_force(metric, copies, k):
    rng = np.random.default_rng(k)
    _, stored, ids, offsets, _ = layout(rng, 150, 12, 6, copies)
    q = rng.normal(size=(7, 12)).astype(np.float32)
    probes = np.stack([rng.choice(6, 3, replace=False) for _ in range(7)])
    probes[2, 1] = -1
    d, i = probe_rerank(torch.tensor(q, device=DEVICE), torch.tensor(probes, device=DEVICE),
                        torch.tensor(offsets, device=DEVICE), torch.tensor(stored, device=DEVICE),
                        torch.tensor(ids, device=DEVICE), k, metric=metric, dedup=copies > 1, backend="triton")
    ref_d, ref_i = brute_force(q, stored, ids, offsets, probes, metric, k)
    check_close(d.cpu().numpy(), i.cpu().numpy(), ref_d, ref_i)


def test_kernel_pads_short_lists():
    rng = np.random.default_rng(0)
    _, stored, ids, offsets, _ = layout(rng, 12, 4, 6)
    q = rng.normal(size=(3, 4)).astype(np.float32)
    probes = np.array([[0], [-1], [1]])
    d, i = probe_rerank(*(torch.tensor(a, device=DEVICE) for a in (q, probes, offsets, stored, ids)), 16,
                        backend="triton")
    d, i = d.cpu(), i.cpu()
    n = np.diff(offsets)[[0, 1]]
    assert (i[0] >= 0).sum() == n[0] and (i[1] == -1).all() and (i[2] >= 0).sum() == n[1]
    assert torch.isinf(d[i < 0]).all()
