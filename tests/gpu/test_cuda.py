"""The CUDA paths: the Triton kernel in bf16 (which the CPU interpreter cannot check), KMeans and
TaxonomyEngine on one GPU against their CPU runs. Only where CUDA exists (never in CI; results
of the GPU runs are committed under benchmarks/results/)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from mega_taxonomy import KMeans
from mega_taxonomy.ops import nearest
from mega_taxonomy.taxonomy import TaxonomyEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def clustered(n, k, d, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    return (centers[rng.integers(k, size=n)] + rng.normal(size=(n, d))).astype(np.float32), centers


@pytest.mark.parametrize("d,k", [(1024, 4096), (128, 1000), (50, 37)])
def test_bf16_kernel_agrees_with_float64(d, k):
    x, centers = clustered(200_000, k, d)
    xc = torch.from_numpy(x).cuda()
    c = torch.from_numpy(centers.astype(np.float32)).cuda()
    dist, idx = nearest(xc.bfloat16(), c.bfloat16())
    xb, cb = xc.bfloat16().double(), c.bfloat16().double()  # the inputs the kernel saw
    full = torch.cdist(xb[:20_000], cb) ** 2
    agree = (idx[:20_000] == full.argmin(1)).float().mean().item()
    assert agree >= 0.999
    inertia = full.min(1).values.sum().item()
    assert abs(dist[:20_000].double().sum().item() - inertia) <= 1e-3 * inertia


def test_kmeans_on_cuda_matches_cpu():
    x, _ = clustered(50_000, 20, 32, seed=1)
    init = x[:20]
    cpu = KMeans(20, init=init, tol=0, max_iter=20, device="cpu").fit(x)
    gpu = KMeans(20, init=init, tol=0, max_iter=20, device="cuda").fit(torch.from_numpy(x).cuda())
    assert isinstance(gpu.predict(torch.from_numpy(x[:10]).cuda()), torch.Tensor)
    assert (gpu.labels_ == cpu.labels_).mean() >= 0.999
    assert abs(gpu.inertia_ - cpu.inertia_) <= 1e-3 * cpu.inertia_


def test_taxonomy_on_cuda_matches_cpu(tmp_path):
    x, _ = clustered(30_000, 12, 16, seed=2)
    params = dict(n_levels=2, branching_factor=[4, 3], max_iter=10, random_state=0)
    cpu = TaxonomyEngine(**params, device="cpu").fit(x)
    gpu = TaxonomyEngine(**params, device="cuda", storage_uri=str(tmp_path / "tax")).fit(x)
    for level in range(2):
        assert adjusted_rand_score(cpu.predict(x)[:, level], gpu.predict(x)[:, level]) >= 0.99
    d, ids = gpu.search(x[:5], 3, beam=4)
    assert (ids[:, 0] == np.arange(5)).all()
