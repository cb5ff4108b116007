"""The CUDA paths: the Triton kernel in bf16 (which the CPU interpreter cannot check), KMeans and
TaxonomyEngine on one GPU against their CPU runs. Only where CUDA exists (never in CI; results
of the GPU runs are committed under benchmarks/results/)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from mega_taxonomy import KMeans
from mega_taxonomy.io import VectorSource
from mega_taxonomy.ops import nearest
from mega_taxonomy.taxonomy import TaxonomyEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def clustered(n, k, d, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    return (centers[rng.integers(k, size=n)] + rng.normal(size=(n, d))).astype(np.float32), centers


@pytest.mark.parametrize("data", ["clustered", "random"])
@pytest.mark.parametrize("d,k", [(1024, 4096), (128, 1000), (50, 37)])
def test_bf16_kernel_agrees_with_float64(d, k, data):
    x, centers = clustered(200_000, k, d)
    if data == "random":
        rng = np.random.default_rng(1)
        x = rng.normal(size=x.shape).astype(np.float32)
        centers = x[rng.choice(len(x), k, replace=False)]
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


def test_kmeans_on_a_bf16_cuda_tensor_streams_bf16_close_to_the_cpu_fit():
    """A bfloat16 tensor streams as bfloat16 (the kernels' bf16 path, half the bytes a pass), not
    as float32. The kernel takes the centroids rounded to bfloat16 too, so the fit is close to
    the CPU's float32 fit of the same rows, not the same: on an H200, 98.9% of the labels."""
    x, _ = clustered(50_000, 20, 32, seed=1)
    x = torch.from_numpy(x).bfloat16()
    (block,) = [b for b in VectorSource(x.cuda()).blocks(0, 1)]
    assert block.vectors.dtype == torch.bfloat16 and block.vectors.is_cuda
    init = x[:20].float().numpy()
    cpu = KMeans(20, init=init, tol=0, max_iter=20, device="cpu").fit(x)
    gpu = KMeans(20, init=init, tol=0, max_iter=20, device="cuda").fit(x.cuda())
    assert adjusted_rand_score(cpu.labels_, gpu.labels_) >= 0.97
    assert abs(gpu.inertia_ - cpu.inertia_) <= 1e-2 * cpu.inertia_


def test_taxonomy_on_cuda_matches_cpu(tmp_path):
    x, _ = clustered(30_000, 12, 16, seed=2)
    params = dict(n_levels=2, branching_factor=[4, 3], max_iter=10, random_state=0)
    cpu = TaxonomyEngine(**params, device="cpu").fit(x)
    gpu = TaxonomyEngine(**params, device="cuda", storage_uri=str(tmp_path / "tax")).fit(x)
    for level in range(2):
        assert adjusted_rand_score(cpu.predict(x)[:, level], gpu.predict(x)[:, level]) >= 0.99
    d, ids = gpu.search(x[:5], 3, beam=4)
    assert (ids[:, 0] == np.arange(5)).all()


@pytest.mark.parametrize("rows", ["bf16", "fp32 of magnitudes far apart"])
def test_update_matches_float64_and_repeats_bit_for_bit(rows):
    """bf16 rows sum exactly in float64; float32 rows of magnitudes far apart do not, so there
    the repeats check the order of the additions too."""
    from mega_taxonomy.ops.update import cluster_stats

    g = torch.Generator(device="cuda").manual_seed(0)
    n, d, k = 300_000, 256, 1000
    x = torch.randn(n, d, device="cuda", generator=g)
    if rows == "bf16":
        x = x.bfloat16()
    else:
        x *= torch.exp(8 * torch.randn(n, 1, device="cuda", generator=g))
    labels = torch.randint(0, k, (n,), device="cuda", generator=g)
    labels[: n // 3] = 7  # one big cluster: many chunks
    dist = torch.rand(n, device="cuda", generator=g)
    first = cluster_stats(x, labels, dist, k)
    for _ in range(3):
        again = cluster_stats(x, labels, dist, k)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
    ref = torch.zeros(k, d, dtype=torch.float64).index_add_(0, labels.cpu(), x.double().cpu())
    scale = x.double().abs().sum(0).max().item()
    assert (first[0].cpu() - ref).abs().max().item() <= 1e-9 * scale
    assert torch.equal(first[1].cpu(), torch.bincount(labels.cpu(), minlength=k))
    ref_w = torch.zeros(k, dtype=torch.float64).index_add_(0, labels.cpu(), dist.double().cpu())
    torch.testing.assert_close(first[2].cpu(), ref_w, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_grouped_kernel_agrees_with_float64(dtype):
    from mega_taxonomy.ops import grouped_nearest

    rng = np.random.default_rng(4)
    n_groups, d = 256, 1024
    counts = rng.integers(0, 33, size=n_groups)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    c = rng.normal(size=(offsets[-1], d)).astype(np.float32)
    groups = rng.integers(0, n_groups, size=65_536)
    x = (c[np.minimum(offsets[groups] + rng.integers(0, 4, size=len(groups)), offsets[-1] - 1)]
         + rng.normal(size=(len(groups), d)).astype(np.float32) * 0.5)
    xt, ct = torch.from_numpy(x).cuda().to(dtype), torch.from_numpy(c).cuda().to(dtype)
    dist, idx = grouped_nearest(xt, torch.from_numpy(groups).cuda(), ct, torch.from_numpy(offsets).cuda())
    x64, c64 = xt.double().cpu().numpy(), ct.double().cpu().numpy()
    agree, total, inertia, ours = 0, 0, 0.0, 0.0
    idx, dist = idx.cpu().numpy(), dist.cpu().numpy()
    for g in range(n_groups):
        rows = np.flatnonzero(groups == g)
        if counts[g] == 0:
            assert (idx[rows] == -1).all()
            continue
        full = ((x64[rows, None, :] - c64[None, offsets[g]:offsets[g + 1]]) ** 2).sum(-1)
        agree += int((full.argmin(1) + offsets[g] == idx[rows]).sum())
        total += len(rows)
        inertia += full.min(1).sum()
        ours += dist[rows].astype(np.float64).sum()
    assert agree / total >= 0.999
    assert abs(ours - inertia) <= 1e-3 * inertia


def test_streamed_passes_are_the_bits_of_device_passes():
    from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask
    from mega_taxonomy.runtime import LocalRuntime

    x, _ = clustered(300_000, 50, 64, seed=3)
    x16 = x.astype(np.float16)
    state = LloydState(x16[:50].copy(), device_sums=False)
    runtime = LocalRuntime("cuda", progress=False)
    on_device = runtime.map_reduce(VectorSource(torch.from_numpy(x16).cuda()), LloydTask(), state)
    for data in (x16, torch.from_numpy(x16).pin_memory()):  # numpy (staged), pinned tensor (direct)
        streamed = runtime.map_reduce(VectorSource(data), LloydTask(), state)
        assert np.array_equal(streamed.sums, on_device.sums)
        assert np.array_equal(streamed.counts, on_device.counts)
        assert np.array_equal(streamed.inertia, on_device.inertia)


def test_kmeans_on_cuda_repeats_bit_for_bit():
    x, _ = clustered(200_000, 64, 48, seed=5)
    xt = torch.from_numpy(x).cuda()
    a = KMeans(64, init=x[:64], tol=0, max_iter=8, device="cuda").fit(xt)
    b = KMeans(64, init=x[:64], tol=0, max_iter=8, device="cuda").fit(xt)
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_


def test_fp32_kernel_is_float64_except_near_ties():
    """torch's default (TF32 off): 3xTF32 products, the float64 labels wherever the float64 gap
    between the two best centroids is above 1e-6 |x|^2."""
    assert not torch.backends.cuda.matmul.allow_tf32
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(100_000, 128, device="cuda", generator=g)
    c = torch.randn(1000, 128, device="cuda", generator=g)
    _, idx = nearest(x, c)
    assert nearest.__module__ == "mega_taxonomy.ops.assign"
    full = torch.cdist(x.double(), c.double()) ** 2
    ref = full.argmin(1)
    wrong = torch.nonzero(idx != ref).squeeze(1)
    gap = full[wrong, idx[wrong]] - full[wrong, ref[wrong]]
    scale = x[wrong].double().pow(2).sum(1)
    assert (gap <= 1e-6 * scale).all(), f"{len(wrong)} differ, worst gap {(gap / scale).max().item():.3g}"


@pytest.mark.parametrize("copies", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kmeans_on_a_device_tensor_is_kmeans_on_host_rows(dtype, copies, monkeypatch):
    """A tensor on the GPU is computed on whole (``LloydTask.whole``: one assignment, per-block sums
    added in order in one launch); rows in host memory go a run of blocks at a time, or a block at
    a time: the same bits. Copies among the starts leave clusters empty: the passes that keep the
    farthest rows to refill them are whole too (a top-k of all rows, then sorts)."""
    from mega_taxonomy.runtime import local

    x, _ = clustered(200_000, 48, 40, seed=11)  # 4 blocks, the last short
    xt = torch.from_numpy(x).to(dtype)
    init = xt[:40].float().numpy()
    init = np.concatenate([init, init[:copies]])
    fit = lambda rows: KMeans(len(init), init=init, tol=0, max_iter=5, device="cuda").fit(rows)  # noqa: E731
    on_gpu, from_host = fit(xt.cuda()), fit(xt)
    monkeypatch.setattr(local, "run_blocks", lambda source, device: None)
    by_blocks = fit(xt)
    for other in (from_host, by_blocks):
        assert np.array_equal(on_gpu.cluster_centers_, other.cluster_centers_)
        np.testing.assert_array_equal(on_gpu.labels_, other.labels_)
        assert on_gpu.inertia_ == other.inertia_ and on_gpu.n_iter_ == other.n_iter_
    assert not copies or len(np.unique(on_gpu.labels_)) == len(init)  # the empty clusters refilled


def test_starts_given_as_device_tensors_are_those_arrays():
    """``KMeans(init=)`` and GaussianMixture's ``*_init`` taken as tensors on the GPU (numpy could
    not convert them: a TypeError), the same fits as with the arrays."""
    from mega_taxonomy import GaussianMixture

    x, _ = clustered(20_000, 8, 16, seed=3)
    xc = torch.from_numpy(x).cuda()
    fits = [KMeans(8, init=init, tol=0, max_iter=3, device="cuda").fit(xc) for init in (x[:8], xc[:8])]
    assert np.array_equal(fits[0].cluster_centers_, fits[1].cluster_centers_)
    starts = dict(weights_init=np.full(8, 1 / 8), means_init=x[:8].astype(np.float64),
                  precisions_init=np.ones((8, 16)))
    mixtures = [GaussianMixture(8, covariance_type="diag", max_iter=2, tol=0, device="cuda", **kw).fit(xc)
                for kw in (starts, {key: torch.as_tensor(v, device="cuda") for key, v in starts.items()})]
    assert np.array_equal(mixtures[0].means_, mixtures[1].means_)


@pytest.mark.parametrize("data", ["numpy", "pinned tensor", "bfloat16 tensor"])
def test_host_rows_by_runs_are_the_blocks_one_by_one(data, monkeypatch):
    """Rows in host memory go to the GPU a run of blocks at a time (``io.streaming.stream_runs``),
    each run one ``LloydTask.whole`` call: the bits of the blocks streamed one by one. (A
    bfloat16 tensor, which numpy cannot name, failed to be cut into runs.)"""
    from mega_taxonomy.io import BLOCK_ROWS, streaming
    from mega_taxonomy.runtime import local

    x, _ = clustered(5 * BLOCK_ROWS + 123, 40, 32, seed=12)
    rows = {"numpy": lambda: x, "pinned tensor": lambda: torch.from_numpy(x).pin_memory(),
            "bfloat16 tensor": lambda: torch.from_numpy(x).bfloat16()}[data]()
    monkeypatch.setattr(streaming, "RUN_BYTES", 2 * BLOCK_ROWS * 32 * 4)  # runs of 2 blocks, the last short
    by_runs = KMeans(40, init=x[:40], tol=0, max_iter=4, device="cuda").fit(rows)
    monkeypatch.setattr(local, "run_blocks", lambda source, device: None)
    by_blocks = KMeans(40, init=x[:40], tol=0, max_iter=4, device="cuda").fit(rows)
    assert np.array_equal(by_runs.cluster_centers_, by_blocks.cluster_centers_)
    np.testing.assert_array_equal(by_runs.labels_, by_blocks.labels_)
    assert by_runs.inertia_ == by_blocks.inertia_


@pytest.mark.parametrize("ctype", ["diag", "spherical"])
def test_an_m_step_on_the_gpu_is_the_bits_of_the_host_m_step(ctype):
    """``em.m_step`` of sums on the GPU (torch there, queued behind a pass) and of the same sums on
    the host (numpy): the same parameters to the bit, over sums of many magnitudes."""
    from mega_taxonomy.cluster.em import EMPartial, m_step

    rng = np.random.default_rng(21)
    k, d = 4096, 64
    resp = rng.uniform(0, 1, k) * 10.0 ** rng.integers(-6, 6, k)
    x_sum = rng.normal(size=(k, d)) * resp[:, None]
    x2_sum = (x_sum / resp[:, None]) ** 2 * resp[:, None] * rng.uniform(1, 3, (k, d))
    host = m_step(EMPartial(10, 0.0, resp, x_sum, x2_sum), ctype, 1e-6)
    gpu = m_step(EMPartial(10, 0.0, *(torch.from_numpy(v).cuda() for v in (resp, x_sum, x2_sum))), ctype, 1e-6,
                 check=False)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_array_equal(getattr(gpu, name).cpu().numpy(), getattr(host, name), err_msg=name)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("ctype", ["diag", "spherical", "full"])
def test_gaussian_mixture_on_the_gpu_whole_or_by_runs_is_the_blocks_one_by_one(ctype, monkeypatch):
    """The E-step of a tensor on the GPU in one call (its M-step queued there, the next pass
    launched ahead on it), and of host rows by runs (``EStepTask.whole``): the bits of the blocks
    streamed one by one."""
    from mega_taxonomy import GaussianMixture
    from mega_taxonomy.io import BLOCK_ROWS, streaming
    from mega_taxonomy.runtime import local

    x, _ = clustered(3 * BLOCK_ROWS + 77, 12, 16, seed=14)
    monkeypatch.setattr(streaming, "RUN_BYTES", 2 * BLOCK_ROWS * 16 * 4)  # runs of 2 blocks, the last short

    def fit(rows):  # seeded: the k-means that starts the weights and covariances differs from fit to fit unseeded
        return GaussianMixture(12, covariance_type=ctype, means_init=x[:12], max_iter=4, tol=0, random_state=0,
                               device="cuda").fit(rows)

    fits = [fit(torch.from_numpy(x).cuda()), fit(x)]
    monkeypatch.setattr(local, "run_blocks", lambda source, device: None)
    monkeypatch.setattr(local, "resident", lambda source, device: None)
    want = fit(x)
    for got in fits:
        for name in ("weights_", "means_", "covariances_"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert got.lower_bound_ == want.lower_bound_


def test_a_bad_row_of_a_run_is_named_or_skipped_as_block_by_block(monkeypatch):
    from mega_taxonomy.errors import DataError
    from mega_taxonomy.io import BLOCK_ROWS, streaming
    from mega_taxonomy.runtime import local

    x, _ = clustered(4 * BLOCK_ROWS + 9, 8, 16, seed=13)
    x[2 * BLOCK_ROWS + 17, 4] = np.nan
    monkeypatch.setattr(streaming, "RUN_BYTES", 2 * BLOCK_ROWS * 16 * 4)
    with pytest.raises(DataError, match=f"row {2 * BLOCK_ROWS + 17}"):
        KMeans(8, init=x[:8], tol=0, max_iter=2, device="cuda").fit(x)
    skipped = KMeans(8, init=x[:8], tol=0, max_iter=2, device="cuda").fit(VectorSource(x, on_invalid="skip"))
    monkeypatch.setattr(local, "run_blocks", lambda source, device: None)
    want = KMeans(8, init=x[:8], tol=0, max_iter=2, device="cuda").fit(VectorSource(x, on_invalid="skip"))
    assert np.array_equal(skipped.cluster_centers_, want.cluster_centers_) and skipped.inertia_ == want.inertia_


@pytest.mark.parametrize("dtype,k", [(torch.bfloat16, 4096), (torch.float32, 1024), (torch.float16, 16)])
def test_sums_of_many_blocks_at_once_are_the_blocks_one_by_one(dtype, k):
    from mega_taxonomy.ops.exact import ExactSum
    from mega_taxonomy.ops.update import cluster_stats

    g = torch.Generator(device="cuda").manual_seed(12)
    n, block = 300_000, 65_536
    x = (torch.randn(n, 96, device="cuda", generator=g) * 10).to(dtype)
    labels = torch.randint(-1, k, (n,), device="cuda", generator=g)
    values = torch.rand(n, device="cuda", generator=g)
    exact = cluster_stats(x, labels, values, k, block_rows=block)  # the blocks' sums added exactly
    at_once = (exact[0].value(), exact[1], exact[2].value())
    total = None
    for lo in reversed(range(0, n, block)):  # in any order
        sums, counts, w = cluster_stats(x[lo:lo + block], labels[lo:lo + block], values[lo:lo + block], k)
        part = (ExactSum.of(sums), counts, ExactSum.of(w))
        total = part if total is None else tuple(a + b for a, b in zip(total, part))
    total = (total[0].value(), total[1], total[2].value())
    for a, b in zip(at_once, total):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_topk_kernel_agrees_with_float64(dtype):
    from mega_taxonomy.ops import topk

    x, centers = clustered(100_000, 512, 256, seed=6)
    xt, ct = torch.from_numpy(x).cuda().to(dtype), torch.from_numpy(centers.astype(np.float32)).cuda().to(dtype)
    dist, idx = topk(xt, ct, 8, backend="triton")
    full = torch.cdist(xt[:10_000].double(), ct.double()) ** 2
    ref = full.topk(8, largest=False).indices
    assert (idx[:10_000] == ref).float().mean().item() >= 0.999
    chosen = full.gather(1, idx[:10_000])
    assert abs(chosen.sum().item() - dist[:10_000].double().sum().item()) <= 1e-3 * chosen.sum().item()


def test_centroids_from_device_sums_are_the_bits_of_host_sums():
    """The update turns sums left on the GPU into centroids there (no (K, d) array through the
    host): the same bits as from the same sums on the host, empty clusters relocated alike."""
    from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask
    from mega_taxonomy.cluster.relocate import counts_on_host, new_centroids
    from mega_taxonomy.runtime import LocalRuntime

    x, _ = clustered(150_000, 40, 32, seed=7)
    init = np.concatenate([x[:40], x[:2]])  # copies lose their ties to the originals: two empty clusters
    source = VectorSource(torch.from_numpy(x).cuda())
    for metric in ("euclidean", "cosine"):
        state = LloydState(init, metric=metric, far=True, device_sums=True)
        partial = LocalRuntime("cuda", progress=False).map_reduce(source, LloydTask(), state)
        assert isinstance(partial.sums, torch.Tensor) and partial.sums.is_cuda
        partial = counts_on_host(partial)
        on_device, counts, shift = new_centroids(partial, init, source, metric)
        partial.sums = partial.sums.cpu().numpy()
        on_host, host_counts, host_shift = new_centroids(partial, init, source, metric)
        assert isinstance(on_device, torch.Tensor) and isinstance(on_host, np.ndarray)
        assert np.array_equal(on_device.cpu().numpy(), on_host) and np.array_equal(counts, host_counts)
        assert shift.item() == pytest.approx(host_shift, rel=1e-12)
        assert (counts[40:] == 1).all()  # relocated


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_collective_kmeans_on_two_gpus_is_bit_identical_to_local():
    """RayRuntime(collective=True) on 2 GPUs (NCCL) gives LocalRuntime's centroids on one."""
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    ray = pytest.importorskip("ray")
    from mega_taxonomy.runtime import LocalRuntime
    from mega_taxonomy.runtime.ray import RayRuntime

    x, _ = clustered(6 * 65536 + 99, 64, 96, seed=8)
    fit = lambda runtime: KMeans(64, init=x[:64], tol=0, max_iter=5, device="cuda", runtime=runtime).fit(x)  # noqa: E731
    local = fit(LocalRuntime("cuda", progress=False, reduce_blocks=2))
    ray.init(num_cpus=4, num_gpus=2, _node_ip_address="127.0.0.1", include_dashboard=False)
    try:
        runtime = RayRuntime(num_workers=2, reduce_blocks=2, collective=True, progress=False)
        remote = fit(runtime)
        runtime.close()
    finally:
        ray.shutdown()
    assert np.array_equal(local.cluster_centers_, remote.cluster_centers_)
    assert np.array_equal(local.labels_, remote.labels_) and local.inertia_ == remote.inertia_


def test_farthest_rows_on_the_device_are_the_host_selection():
    """A grouped pass on the GPU keeps the farthest rows per group on the device: the same rows,
    in the same order, as the host's selection from the same pass's labels and distances."""
    from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask
    from mega_taxonomy.cluster.relocate import block_farthest
    from mega_taxonomy.runtime import LocalRuntime

    x, _ = clustered(200_000, 64, 32, seed=11)
    n_groups, per = 8, 6
    offsets = np.concatenate([np.arange(0, n_groups * per, per), [n_groups * per]])
    offsets[-2] = offsets[-1]  # the last group is a leaf: its rows have no cluster (label -1)
    groups = np.random.default_rng(0).integers(0, n_groups, len(x))
    source = VectorSource(torch.from_numpy(x).cuda())
    blocks = {b.index: groups[b.ordinals] for b in source.blocks()}
    state = LloydState(x[:offsets[-1]].copy(), update=False, far=True, keep_labels=True, offsets=offsets,
                       groups=blocks, far_per_group=5)
    partial = LocalRuntime("cuda", progress=False).map_reduce(source, LloydTask(), state)
    assert isinstance(partial.far.distance, torch.Tensor) and partial.far.distance.is_cuda
    labels, distances = partial.ordered_labels()
    assert (labels == -1).any()
    ref = block_farthest(torch.from_numpy(distances), torch.from_numpy(labels), np.arange(len(x)), groups, state)
    for name in ("distance", "ordinal", "label", "group"):
        np.testing.assert_array_equal(partial.far[name], ref[name])


def test_a_passs_sample_on_the_device_is_the_host_draw():
    """A grouped pass that draws the next level's sample selects it on the GPU (LowestPerGroup):
    the same rows, in the same order, as the host's draw from the same pass's labels."""
    from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask
    from mega_taxonomy.partials import LowestPerGroup, block_sample
    from mega_taxonomy.runtime import LocalRuntime

    x, _ = clustered(300_000, 64, 32, seed=12)
    n_groups, per = 8, 6
    offsets = np.concatenate([np.arange(0, n_groups * per, per), [n_groups * per]])
    offsets[-2] = offsets[-1]  # the last group is a leaf: its rows have no cluster (label -1)
    groups = np.random.default_rng(1).integers(0, n_groups, len(x))
    source = VectorSource(torch.from_numpy(x))  # host rows, streamed block by block
    blocks = {b.index: groups[b.ordinals] for b in source.blocks()}
    state = LloydState(x[:offsets[-1]].copy(), update=False, keep_labels=True, offsets=offsets, groups=blocks,
                       sample=(700, 3))
    partial = LocalRuntime("cuda", progress=False).map_reduce(source, LloydTask(), state)
    assert isinstance(partial.sample.rows, LowestPerGroup)
    labels, _ = partial.ordered_labels()
    assert (labels == -1).any()
    block = type("Block", (), {"ids": np.arange(len(x)), "ordinals": np.arange(len(x)), "vectors": x})
    ref = block_sample(block, 700, 3, groups=labels, moments=False)
    for name in ("hashes", "ordinals", "groups"):
        np.testing.assert_array_equal(getattr(partial.sample, name), getattr(ref, name))
    assert partial.sample.count == len(x)


@pytest.mark.parametrize("below", [None, 2**64 // 300], ids=["every row", "rows below a hash bound"])
def test_sample_pass_on_the_device_is_the_host_draw(below):
    """A sample pass over device blocks draws there (LowestPerGroup) and adds their float64
    moments there (no copy back per block); the mean variance read at the end is the float64
    one of all the rows, and the sample is the rows of lowest hash (below the bound, when one is
    given: about 500 of the 150,000 rows)."""
    from mega_taxonomy.ops.hashing import hash_ids
    from mega_taxonomy.partials import LowestPerGroup
    from mega_taxonomy.partials.sampling import SampleTask
    from mega_taxonomy.runtime import LocalRuntime

    x, _ = clustered(150_000, 16, 24, seed=5)
    source = VectorSource(torch.from_numpy(x).half().cuda())
    state = (100, 0) if below is None else (1000, 0, below)
    partial = LocalRuntime("cuda", progress=False).map_reduce(source, SampleTask(), state)
    assert isinstance(partial.rows, LowestPerGroup)
    assert isinstance(partial.total, torch.Tensor) and partial.total.is_cuda
    rows = torch.from_numpy(x).half().double().numpy()
    assert partial.mean_variance == pytest.approx(float(rows.var(0).mean()), rel=1e-9)
    hashes = hash_ids(np.arange(len(x)), 0)
    lowest = np.argsort(hashes, kind="stable")[:state[0]]
    if below is not None:
        lowest = lowest[hashes[lowest] <= np.uint64(below)]
        assert 300 < len(lowest) < 700
    assert partial.ordinals.tolist() == lowest.tolist()


def test_batched_seeding_on_the_gpu_is_the_cpu_seeding():
    """A level's k-means++ seeding in batches of nodes on the GPU picks the rows that the CPU's
    node-by-node seeding picks (float64: no rounding apart)."""
    from mega_taxonomy.taxonomy import levels

    x, _ = clustered(6000, 40, 16, seed=2)
    groups = np.random.default_rng(1).integers(0, 30, len(x))
    order = np.argsort(groups, kind="stable")

    class Sample:
        vectors = x[order].astype(np.float64)

        def of_group(self, node):
            return self.vectors[groups[order] == node]

    n_children = np.random.default_rng(4).integers(0, 12, 30)
    args = dict(metric="euclidean", seed=5, level=2, dtype=np.float64)
    on_gpu = levels.seed_children(Sample(), n_children, device="cuda", **args)
    assert on_gpu.is_cuda  # kept there for the level's first pass
    on_cpu = levels.seed_children(Sample(), n_children, device="cpu", **args)
    np.testing.assert_array_equal(on_gpu.cpu().numpy(), on_cpu)


def test_small_copies_reuse_a_pinned_buffer_only_once_its_copy_is_done():
    """``io.device.to_device`` stages through a few pinned buffers: with the stream kept busy,
    every copy still delivers its own values (a buffer refilled too early would not)."""
    from mega_taxonomy.io.device import to_device

    busy = torch.randn(4096, 4096, device="cuda")
    copies = []
    for i in range(80):
        busy = busy @ busy / 64  # keeps the copies queued behind it
        array = np.full(1000 + 997 * i, i, dtype=np.int64 if i % 2 else np.int32)
        copies.append((array, to_device(array, "cuda")))
    for array, tensor in copies:
        assert tensor.dtype == torch.from_numpy(array).dtype
        assert np.array_equal(tensor.cpu().numpy(), array)


def test_host_copies_arrive_with_the_device_values():
    """HostCopy queues the copies out without waiting; its arrays are the tensors' values, also
    when the kernels that made them are still running as the copies are queued."""
    from mega_taxonomy.io.device import HostCopy

    x = torch.randn(4096, 4096, device="cuda")
    labels = (x @ x).argmax(1)  # a long kernel before the copy
    dist = x.sum(1)
    copies = HostCopy({"labels": labels, "dist": dist})
    arrays = copies.arrays()
    np.testing.assert_array_equal(arrays["labels"], labels.cpu().numpy())
    np.testing.assert_array_equal(arrays["dist"], dist.cpu().numpy())


def test_a_levels_group_ids_are_copied_once():
    """The same live numpy array of group ids gives the same device tensor, pass after pass."""
    from mega_taxonomy.io.device import kept, kept_on_device

    groups = np.random.default_rng(0).integers(0, 100, 65536)
    on = kept_on_device(groups, "cuda")
    assert kept_on_device(groups, "cuda") is on and kept_on_device(groups.copy(), "cuda") is not on
    np.testing.assert_array_equal(on.cpu().numpy(), groups)
    kept_bytes = sum(kept._bytes.values())
    del groups
    assert sum(kept._bytes.values()) == kept_bytes - on.numel() * 8


def test_gpu_lloyd_tasks_defer_their_host_half():
    """A pass that keeps labels returns Deferred partials on the GPU; finished, they hold the
    labels that the CPU task computes."""
    from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask
    from mega_taxonomy.runtime import Deferred

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(8, 16)) * 10
    X = (centers[rng.integers(0, 8, 5000)] + rng.normal(size=(5000, 16))).astype(np.float32)  # no near-ties
    state = LloydState(centers.astype(np.float32), update=False, keep_labels=True)
    (block,) = VectorSource(X).blocks()
    result = LloydTask()(block, state, torch.device("cuda"))
    assert isinstance(result, Deferred)
    gpu_labels, _ = result.finish().labels[0]
    cpu_labels, _ = LloydTask()(block, state, torch.device("cpu")).labels[0]
    np.testing.assert_array_equal(gpu_labels, cpu_labels)


@pytest.mark.parametrize("data", ["pinned tensor", "numpy", "tensor on the device"])
def test_streamed_rows_are_checked_on_the_device_as_on_the_host(data):
    """The first pass over in-memory data checks its rows on the GPU: a bad row raises the
    host's error (naming the row), or is skipped as the host skips it; good blocks are then
    recorded as checked."""
    from mega_taxonomy.errors import DataError
    from mega_taxonomy.io import BLOCK_ROWS
    from mega_taxonomy.io.streaming import stream

    X = np.random.default_rng(4).normal(size=(3 * BLOCK_ROWS + 7, 8)).astype(np.float32)
    X[BLOCK_ROWS + 5, 3] = np.inf
    vectors = {"pinned tensor": torch.from_numpy(X).pin_memory(), "numpy": X,
               "tensor on the device": torch.from_numpy(X).cuda()}[data]
    with pytest.raises(DataError, match=f"row {BLOCK_ROWS + 5}: value inf at dimension 3"):
        for _ in stream(VectorSource(vectors), "cuda"):
            pass
    source = VectorSource(vectors, on_invalid="skip")
    got = [(b.index, b.ordinals, b.vectors.cpu().numpy()) for b in stream(source, "cuda")]
    want = [(b.index, b.ordinals, b.vectors) for b in VectorSource(X, on_invalid="skip").blocks()]
    assert [g[0] for g in got] == [w[0] for w in want] == [0, 1, 2, 3]
    for (_, ordinals, vectors), (_, want_ordinals, want_vectors) in zip(got, want):
        np.testing.assert_array_equal(ordinals, want_ordinals)
        np.testing.assert_array_equal(vectors, want_vectors)
    assert all(checked for _, checked in source.unchecked_blocks())  # on the GPU, or by the host (block 1)


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_a_source_on_the_device_streams_without_reader_threads(device):
    """Blocks of a tensor on the GPU are streamed in the caller's thread (no reader thread to
    start per pass): the same blocks, bad rows raising as they do from the host."""
    import threading

    from mega_taxonomy.errors import DataError
    from mega_taxonomy.io import BLOCK_ROWS
    from mega_taxonomy.io.streaming import stream

    X = np.random.default_rng(5).normal(size=(2 * BLOCK_ROWS + 3, 8)).astype(np.float32)
    source = VectorSource(torch.from_numpy(X).cuda())
    assert source.device == torch.device("cuda", 0)
    blocks = stream(source, device)
    first = next(blocks)
    assert not [t for t in threading.enumerate() if t.name.startswith("mega-taxonomy-h2d")]
    got = [first, *blocks]
    assert [b.index for b in got] == [0, 1, 2]
    np.testing.assert_array_equal(torch.cat([b.vectors for b in got]).cpu().numpy(), X)
    X[BLOCK_ROWS + 1, 2] = np.nan
    with pytest.raises(DataError, match=f"row {BLOCK_ROWS + 1}"):
        list(stream(VectorSource(torch.from_numpy(X).cuda()), device))


def test_host_arrays_come_back_with_one_wait():
    """host_arrays: device tensors (after a long kernel) copied out together, CPU tensors as
    arrays, None as it is."""
    from mega_taxonomy.io.device import host_arrays

    x = torch.randn(4096, 4096, device="cuda")
    labels = (x @ x).argmax(1)
    shift = x.double().square().sum()
    got = host_arrays(labels, None, torch.arange(3), shift)
    np.testing.assert_array_equal(got[0], labels.cpu().numpy())
    assert got[1] is None and got[2].tolist() == [0, 1, 2] and float(got[3]) == shift.item()


def test_lloyd_on_the_device_refills_empty_clusters_as_on_the_cpu():
    """With sums on the GPU the update is queued behind the pass; a cluster gone empty sends the
    iteration through the relocation instead, as on the CPU."""
    from mega_taxonomy.cluster.lloyd import lloyd
    from mega_taxonomy.runtime import LocalRuntime

    x, _ = clustered(60_000, 12, 16, seed=8)
    init = np.concatenate([x[:12], x[:3]])  # duplicates: three clusters empty in the first pass
    cpu = lloyd(VectorSource(x), init, LocalRuntime("cpu", progress=False), max_iter=6)
    gpu = lloyd(VectorSource(torch.from_numpy(x).cuda()), init, LocalRuntime("cuda", progress=False), max_iter=6)
    assert (gpu.counts > 0).all() and np.array_equal(gpu.counts, cpu.counts)
    np.testing.assert_allclose(gpu.centroids, cpu.centroids, rtol=1e-4, atol=1e-4)
    assert gpu.n_iter == cpu.n_iter


@pytest.mark.parametrize("stop", ["max_iter", "tol", "empty"])
def test_lloyd_passes_launched_ahead_on_the_gpu_are_the_passes_one_by_one(stop):
    """On a GPU each pass is launched before the counts of the one before are back (look_ahead,
    on by default for passes of milliseconds): the bits of passes one by one, with a pass ahead at
    every iteration after the first until a cluster goes empty."""
    from mega_taxonomy.cluster.lloyd import lloyd
    from mega_taxonomy.runtime import LocalRuntime

    class Counting:
        def __init__(self):
            self.runtime, self.passes = LocalRuntime("cuda", progress=False), 0

        def __getattr__(self, name):
            return getattr(self.runtime, name)

        def map_reduce(self, *args, **kwargs):
            self.passes += 1
            return self.runtime.map_reduce(*args, **kwargs)

    rng = np.random.default_rng(9)  # clusters that overlap: dozens of iterations to converge
    x = ((rng.normal(size=(64, 96)) * 0.5)[rng.integers(64, size=300_000)] + rng.normal(size=(300_000, 96)))
    x = x.astype(np.float32)
    init = np.concatenate([x[:61], x[:3]]) if stop == "empty" else x[:64]  # copies: clusters empty
    settings = {"max_iter": 200, "tol": 1e-3} if stop == "tol" else {"max_iter": 8}
    source = VectorSource(torch.from_numpy(x).cuda().bfloat16())

    def fit(look_ahead):
        runtime, ahead = Counting(), []  # passes launched beyond the iterations reported
        result = lloyd(source, init, runtime, look_ahead=look_ahead, **settings,
                       on_iteration=lambda n, *_: ahead.append(runtime.passes - n))
        return result, ahead

    (one_by_one, _), (looked_ahead, ahead) = fit(False), fit(None)
    assert np.array_equal(looked_ahead.centroids, one_by_one.centroids)
    assert np.array_equal(looked_ahead.counts, one_by_one.counts)
    assert (looked_ahead.n_iter, looked_ahead.inertia) == (one_by_one.n_iter, one_by_one.inertia)
    if stop == "empty":  # the far pass of the first; none ahead of the first, nor since
        assert ahead == [1] * one_by_one.n_iter
    else:  # none ahead of the first; ahead of the last, unless it was the last allowed
        n_iter = one_by_one.n_iter
        assert ahead == [0] + [1] * (n_iter - 2) + [int(n_iter < settings["max_iter"])] and n_iter > 2


@pytest.mark.parametrize("ctype", ["full", "tied", "diag", "spherical"])
def test_gaussian_mixture_on_cuda_matches_cpu_and_scikit_learn(ctype):
    """EM's E-step and statistics on the GPU (float64 there too) give the CPU fit up to the order of
    the GPU's float64 sums, and scikit-learn's fit from the same start; tensors come back on the GPU."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from mega_taxonomy import GaussianMixture

    rng = np.random.default_rng(4)
    x = (rng.normal(size=(6, 5)) * 3)[rng.integers(6, size=150_000)] + rng.normal(size=(150_000, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s = SkGaussianMixture(6, covariance_type=ctype, max_iter=1, random_state=3,
                              init_params="random_from_data").fit(x)
        start = {"weights_init": s.weights_, "means_init": s.means_, "precisions_init": s.precisions_}
        ref = SkGaussianMixture(6, covariance_type=ctype, max_iter=20, tol=0, **start).fit(x)
        kw = dict(covariance_type=ctype, max_iter=20, tol=0, **start)  # tol=0: 20 iterations, never converged
        cpu = GaussianMixture(6, device="cpu", **kw).fit(x)
        cuda = GaussianMixture(6, device="cuda", **kw).fit(x)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(cuda, name), getattr(cpu, name), rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(getattr(cuda, name), getattr(ref, name), rtol=1e-6, atol=1e-9, err_msg=name)
    assert cuda.n_iter_ == cpu.n_iter_ == ref.n_iter_ == 20
    np.testing.assert_allclose(cuda.lower_bound_, ref.lower_bound_, rtol=1e-9)
    labels = cuda.predict(torch.from_numpy(x[:1000]).cuda())
    assert labels.is_cuda and np.array_equal(labels.cpu().numpy(), ref.predict(x[:1000]))


@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("ctype", ["diag", "spherical"])
def test_gaussian_mixture_of_float32_rows_on_cuda_takes_the_triton_estep(ctype, tf32):
    """float32 rows on the GPU: the Triton E-step (3xTF32, or TF32 where torch allows it), against
    scikit-learn's float64 fit from the same start: the lower bound within 1e-4 relative (TF32:
    3e-3), every variance at least reg_covar, nothing NaN."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from mega_taxonomy import GaussianMixture

    rng = np.random.default_rng(5)
    x = ((rng.normal(size=(16, 24)) * 3)[rng.integers(16, size=200_000)] + rng.normal(size=(200_000, 24)) + 40)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s = SkGaussianMixture(16, covariance_type=ctype, max_iter=1, random_state=3,
                              init_params="random_from_data").fit(x.astype(np.float64))
        start = {"weights_init": s.weights_, "means_init": s.means_, "precisions_init": s.precisions_}
        ref = SkGaussianMixture(16, covariance_type=ctype, max_iter=10, tol=0, **start).fit(x.astype(np.float64))
        # set and put back by hand: monkeypatch's undo deletes the attribute, which torch's
        # cuBLAS switches do not allow
        before, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, tf32
        try:
            cuda = GaussianMixture(16, covariance_type=ctype, max_iter=10, tol=0, device="cuda", **start).fit(
                torch.from_numpy(x).cuda())
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
    # TF32 rounds the rows and their squares to 10 bits before the expanded quadratic form: on
    # these rows (about 10 from their mixture's mean) the lower bound moved by 1.1e-3 relative
    np.testing.assert_allclose(cuda.lower_bound_, ref.lower_bound_, rtol=3e-3 if tf32 else 1e-4)
    np.testing.assert_allclose(cuda.means_, ref.means_, rtol=0, atol=1e-3 * (1 + np.abs(ref.means_).max()))
    assert np.isfinite(cuda.covariances_).all() and (cuda.covariances_ >= 1e-6).all()


def test_exact_sums_on_the_gpu_are_the_bits_of_the_twin():
    """The Triton kernel adds float64 values into exact sums integer for integer as the torch twin."""
    from mega_taxonomy.ops.exact import ExactSum

    g = torch.Generator().manual_seed(21)
    parts = [torch.randn(4096, 33, generator=g, dtype=torch.float64) * torch.exp2(
        torch.randint(-80, 80, (4096, 33), generator=g).double()) for _ in range(5)]
    on_gpu, on_cpu = ExactSum.of(parts[0].cuda()), ExactSum.of(parts[0])
    for part in parts[1:]:
        on_gpu += ExactSum.of(part.cuda())
        on_cpu += ExactSum.of(part)
    assert torch.equal(on_gpu.tops.cpu(), on_cpu.tops) and torch.equal(on_gpu.digits.cpu(), on_cpu.digits)
    assert torch.equal(on_gpu.value().cpu(), on_cpu.value())


def test_a_gpu_tables_lookups_refuse_reserved_keys():
    """A lookup on the GPU flags reserved keys in its own kernel, read after the launch: a
    reserved key still raises, naming its row, and other keys are found after it."""
    from mega_taxonomy.kv import HashTable

    t = HashTable(dim=4, init_capacity=1024, max_capacity=1024, device="cuda")
    keys = torch.arange(10, device="cuda")
    t.insert_or_assign(keys, torch.ones(10, 4, device="cuda"))
    for call in (t.find, t.contains, t.find_ptr):
        with pytest.raises(ValueError, match="row 2"):
            call(torch.tensor([1, 2, -1], device="cuda"))
    assert t.contains(keys).all() and torch.equal(t.find(keys)[0], torch.ones(10, 4, device="cuda"))
