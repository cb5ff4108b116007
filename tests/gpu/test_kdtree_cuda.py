"""KDTree.query's CUDA path (the bucket scan and its Triton kernel at full size) against scipy's
cKDTree. Only where CUDA exists (never in CI)."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from mega_taxonomy.index import KDTree
from mega_taxonomy.index.kdtree import GPU_MIN_QUERIES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("kind", ["uniform", "clustered"])
@pytest.mark.parametrize("k", [1, 10, 32])
def test_gpu_query_equals_ckdtree(kind, k):
    rng = np.random.default_rng(k)
    x = rng.random((500_000, 3))
    if kind == "clustered":
        x = np.mod(rng.random((64, 3))[rng.integers(0, 64, len(x))] + rng.normal(scale=0.01, size=x.shape), 1.0)
    q = rng.random((GPU_MIN_QUERIES * 2, 3))
    tree = KDTree(x)
    d, i = tree.query(torch.as_tensor(q, device="cuda"), k=k)  # a CUDA tensor: answered on the GPU
    assert d.is_cuda and i.is_cuda
    ref_d, ref_i = cKDTree(x).query(q, k=k, workers=-1)
    np.testing.assert_array_equal(i.cpu().numpy(), ref_i)
    np.testing.assert_allclose(d.cpu().numpy(), ref_d, rtol=1e-12)
    d2, i2 = tree.query(q, k=k)  # numpy in: the GPU is chosen too, numpy out
    np.testing.assert_array_equal(i2, ref_i)
    np.testing.assert_allclose(d2, ref_d, rtol=1e-12)
    d3, i3 = tree.query(q, k=k, distance_upper_bound=0.01)
    ref_d3, ref_i3 = cKDTree(x).query(q, k=k, distance_upper_bound=0.01)
    np.testing.assert_array_equal(i3, ref_i3)
    np.testing.assert_allclose(d3, ref_d3, rtol=1e-12)
