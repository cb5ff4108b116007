"""k-means on one GPU as users call it: the public ``KMeans.fit``, end to end and per iteration,
data on the GPU and in host memory, against flash-kmeans's and fastkmeans's own fit functions and a
plain torch Lloyd iteration, side by side in one run on the same data and the same initial
centroids; the kernel-only rows of ours beside them.

Twelve shapes (N, D, K, dtype, TF32): see ``SHAPES``. TF32 is torch's switch
(``torch.backends.cuda.matmul.allow_tf32``), set per shape for every side; flash-kmeans and
fastkmeans multiply float32 in TF32 whatever it says (tl.dot's default), so with TF32 off the
target is torch's exact float32 Lloyd iteration, and those peers are reported beside it.

Rows per shape, all in milliseconds per Lloyd iteration (assignment + update), from wall-clock
calls of ``M`` and of 1 iterations: (median of 3 calls of M - median of 3 calls of 1) / (M - 1),
which leaves out what a call does once (init, checks, the final labels); ``fit_seconds`` is the
whole call of M iterations, labels included:

- ``KMeans.fit (data on GPU)``: ``KMeans(K, init=C0, tol=0, max_iter=M).fit(x_cuda)``;
- ``KMeans.fit (data in host memory)``: the same on a CPU tensor (pageable), streamed through
  pinned buffers; its pass rate (bytes per iteration) as a fraction of the host-to-device copy
  rate from pinned memory (``copy_rate_fraction``) and of the slower of that and the copy of its
  rows into pinned memory (``bound_fraction``: the two run side by side, so the slower bounds a
  pass); ``to_device_gbps``: torch's own ``x.to("cuda")`` of the tensor, beside it;
- ``kernels only (ours)``: our assignment kernel + per-cluster sums + update on the whole tensor,
  CUDA-event medians (what the public fit is to approach: ``public_over_kernels``);
- ``flash-kmeans batch_kmeans_Euclid``: its fit function on (1, N, D), ``init_centroids=C0``;
- ``fastkmeans (data on GPU)``: its ``_kmeans_torch_double_chunked`` on the tensor, no
  subsampling; ``fastkmeans FastKMeans.train``: its API on a float32 numpy copy (its own init);
- ``torch``: x @ c.T in row chunks, argmin, index_add (exact float32 with TF32 off).

``speedup_vs_best_peer`` per shape: the fastest peer's iteration / our public fit's on GPU data.
Targets: TF32 on or half precision >= 1.25; TF32 off >= 1.0 against torch.

    python benchmarks/bench_kmeans_gpu.py [--shape I ...] [--iters M] [--sweep] [--out FILE]
    python benchmarks/bench_kmeans_gpu.py --smoke      # tiny shapes, any device: the code runs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from gpu_timing import events_ms, peak, per_iteration, wall  # noqa: E402

from mega_taxonomy import KMeans  # noqa: E402
from mega_taxonomy.ops import nearest  # noqa: E402
from mega_taxonomy.ops.update import cluster_stats  # noqa: E402

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
M1 = 1 << 20
SHAPES = [  # (N, D, K, dtype, TF32)
    (M1, 1024, 4096, BF16, True), (M1, 1024, 65536, BF16, True), (10 * M1, 128, 1024, FP16, True),
    (2 * M1, 512, 8192, FP16, True), (M1 // 4, 256, 4096, BF16, True), (M1, 128, 1024, FP32, True),
    (M1, 128, 1024, FP32, False), (8 * M1, 32, 128, FP32, True), (8 * M1, 32, 128, FP32, False),
    (M1 // 10, 1024, 256, BF16, True), (10 * M1, 64, 16384, FP16, True), (M1, 384, 4096, FP32, True),
]
# Tile configs of the assignment kernel tried by --sweep (tuning; the fit uses the defaults).
SWEEP = [dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, num_warps=w, num_stages=s, X_RESIDENT=r, TMA=t)
         for m, n, k, w, s, r, t in [
             (128, 256, 64, 8, 3, False, True), (128, 256, 32, 8, 3, False, True), (128, 128, 64, 4, 4, False, True),
             (128, 128, 32, 4, 3, False, True), (256, 128, 64, 8, 3, False, True), (128, 256, 32, 8, 4, False, False),
             (128, 64, 128, 8, 1, True, False), (64, 128, 128, 4, 2, True, False)]]


def copy_rates(host, device):
    """GB/s, medians of 3, of what bounds a pass over the pageable tensor ``host``: the
    host-to-device copy from pinned memory (``h2d_gbps``), the copy of its rows into pinned memory
    (``staging_gbps``, torch's threads), and torch's own ``host.to(device)`` (``to_device_gbps``,
    staged by the driver). None off CUDA."""
    if torch.device(device).type != "cuda":
        return {}
    pinned = torch.empty_like(host, pin_memory=True)
    dev = torch.empty_like(host, device=device)

    def rate(fn):
        return host.nbytes / sorted(wall(fn, device)[0] for _ in range(3))[1] / 1e9

    return {"h2d_gbps": rate(lambda: dev.copy_(pinned, non_blocking=True)),
            "staging_gbps": rate(lambda: pinned.copy_(host)), "to_device_gbps": rate(lambda: host.to(device))}


def kernels_iteration(x, c):
    """Our kernels on the whole tensor: assignment, per-cluster float64 sums, new centroids."""
    dist, labels = nearest(x, c)
    sums, counts, _ = cluster_stats(x, labels, dist, c.shape[0])
    return torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c.double()).to(c.dtype)


def torch_iteration(x, c):
    k = c.shape[0]
    c_sq = c.float().pow(2).sum(1)
    chunk = max(4096, (1 << 29) // k)  # bounds the (chunk, K) product at 2 GiB
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for r in range(0, x.shape[0], chunk):
        labels[r:r + chunk] = (c_sq[None, :] - 2 * (x[r:r + chunk] @ c.T).float()).argmin(1)
    sums = torch.zeros(k, x.shape[1], dtype=torch.float32, device=x.device).index_add_(0, labels, x.float())
    counts = torch.bincount(labels, minlength=k)
    return (sums / counts.clamp_min(1)[:, None]).to(x.dtype)


def sweep(x, c, case):
    """The assignment kernel's time per tile config (tuning notes; the fit keeps the defaults)."""
    from mega_taxonomy.ops.assign.triton import nearest_triton

    c_sq = c.float().pow(2).sum(1)
    exact = x.dtype == FP32 and not torch.backends.cuda.matmul.allow_tf32  # as the fit decides it
    out = {}
    for cfg in SWEEP:
        if cfg["X_RESIDENT"] and x.shape[1] > cfg["BLOCK_K"]:
            continue
        try:
            out[str(cfg)] = events_ms(lambda cfg=cfg: nearest_triton(x, c, c_sq, 2.0, exact=exact, config=cfg))
        except Exception as exc:  # a config over the shared-memory limit, say: recorded, skipped
            out[str(cfg)] = f"{type(exc).__name__}: {str(exc)[:100]}"
        print(f"  sweep {case} {cfg}: {out[str(cfg)]}", flush=True)
    return out


def row(case, impl, per_ms, **extra):
    return {"case": case, "impl": impl, "iteration_ms": per_ms, **extra}


def ours(case, x, c0, iters, device):
    """Public fit rows: data on the device, and in host memory."""
    init = c0.float().cpu().numpy()

    def fit(data, m):
        return KMeans(c0.shape[0], init=init, tol=0, max_iter=m, device=device).fit(data)

    fit(x, 2)  # compiles the kernels at these shapes
    per, total = per_iteration(lambda m: fit(x, m), iters, device)
    rows = [row(case, "KMeans.fit (data on GPU)", per, fit_seconds=total,
                peak_bytes=peak(lambda: fit(x, 2), device)[0], data_bytes=x.nbytes)]
    host = x.cpu()
    per_host, total_host = per_iteration(lambda m: fit(host, m), max(3, iters // 3), device)
    rates = copy_rates(host, device)
    fractions = {}
    if rates and per_host:
        pass_gbps = x.nbytes / 1e9 / (per_host / 1e3)
        fractions = {"copy_rate_fraction": pass_gbps / rates["h2d_gbps"],
                     "bound_fraction": pass_gbps / min(rates["h2d_gbps"], rates["staging_gbps"])}
    rows.append(row(case, "KMeans.fit (data in host memory)", per_host, fit_seconds=total_host, **rates, **fractions))
    return rows


def peers(case, x, c0, iters, device, tf32):
    """Rows of the peers that are installed (on CUDA only)."""
    rows = [row(case, "torch", events_ms(lambda: torch_iteration(x, c0)) if x.is_cuda else None,
                precision="float32 products in TF32" if tf32 and x.dtype == FP32 else "exact float32 products"
                if x.dtype == FP32 else "half-precision products")]
    if not x.is_cuda:
        return rows
    try:
        from flash_kmeans.kmeans_triton_impl import batch_kmeans_Euclid

        x3, c3 = x[None], c0[None].clone()
        fit = lambda m: batch_kmeans_Euclid(x3, c0.shape[0], max_iters=m, tol=0.0, init_centroids=c3.clone())  # noqa: E731
        fit(2)
        per, total = per_iteration(fit, iters, device)
        rows.append(row(case, "flash-kmeans batch_kmeans_Euclid", per, fit_seconds=total,
                        precision="float32 in TF32 always" if x.dtype == FP32 else "half-precision products"))
    except ImportError as exc:
        print(f"flash-kmeans not installed: {exc}")
    try:
        from fastkmeans import FastKMeans
        from fastkmeans.kmeans import _kmeans_torch_double_chunked

        x_sq = x.float().pow(2).sum(1)
        kw = dict(dtype=x.dtype, tol=-1.0, max_points_per_centroid=None, use_triton=True,
                  chunk_size_data=51_200, chunk_size_centroids=10_240)
        fit = lambda m: _kmeans_torch_double_chunked(x, x_sq, c0.shape[0], x.device, max_iters=m, **kw)  # noqa: E731
        fit(2)
        per, total = per_iteration(fit, iters, device)
        rows.append(row(case, "fastkmeans (data on GPU)", per, fit_seconds=total, note="its own init (random rows)"))
        host = x.float().cpu().numpy()
        api = lambda m: FastKMeans(x.shape[1], c0.shape[0], niter=m, tol=-1.0, gpu=True, seed=0).train(host)  # noqa: E731
        api(2)
        per, total = per_iteration(api, max(3, iters // 3), device)
        rows.append(row(case, "fastkmeans FastKMeans.train (numpy)", per, fit_seconds=total,
                        note="its API: float32 numpy in host memory, its default products (fp16)"))
    except ImportError as exc:
        print(f"fastkmeans not installed: {exc}")
    except Exception as exc:  # an out-of-memory of its chunks, say: recorded
        rows.append(row(case, "fastkmeans", None, failed=f"{type(exc).__name__}: {str(exc)[:200]}"))
    return rows


def measure(n, d, k, dtype, tf32, iters, device, do_sweep):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    case = f"N{n}_D{d}_K{k}_{str(dtype).split('.')[-1]}" + ("" if dtype != FP32 else "_tf32" if tf32 else "_exact")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, device=device, generator=g).to(dtype)
    c0 = x[torch.randperm(n, device=device, generator=g)[:k]].clone()
    rows = ours(case, x, c0, iters, device)
    kernels = events_ms(lambda: kernels_iteration(x, c0)) if x.is_cuda else None
    rows.append(row(case, "kernels only (ours)", kernels))
    rows += peers(case, x, c0, iters, device, tf32)
    public = rows[0]["iteration_ms"]
    valid = [r for r in rows[3:] if r.get("iteration_ms")]
    if dtype == FP32 and not tf32:  # flash-kmeans and fastkmeans use TF32: reported, not compared
        valid = [r for r in valid if r["impl"] == "torch"]
    summary = {"public_over_kernels": public / kernels if public and kernels else None}
    if public and valid:
        best = min(valid, key=lambda r: r["iteration_ms"])
        summary.update(speedup_vs_best_peer=best["iteration_ms"] / public, best_peer=best["impl"],
                       ours_iteration_ms=public, best_peer_iteration_ms=best["iteration_ms"])
    if do_sweep and x.is_cuda:
        summary["assign_sweep_ms"] = sweep(x, c0, case)
    return case, rows, summary


def write_results(args, shapes, results, speedups, per_shape, device):
    params = {"shapes": [(n, d, k, str(t), f) for n, d, k, t, f in shapes], "iters": args.iters, "device": device,
              "per_shape": per_shape, "tf32": "torch.backends.cuda.matmul.allow_tf32, set per shape for every side"}
    name = "kmeans_gpu" if args.shape is None else "kmeans_gpu_shape" + "_".join(map(str, args.shape))
    out = args.out or (f"/tmp/{name}_smoke.json" if args.smoke else None)
    return common.write(name, params, results, speedups, "python " + " ".join(sys.argv),
                        **({"path": Path(out)} if out else {}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, action="append", default=None, help="index into SHAPES (repeatable)")
    parser.add_argument("--iters", type=int, default=11, help="M: iterations of the long calls")
    parser.add_argument("--sweep", action="store_true", help="also time the assignment kernel's tile configs")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device: the code runs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = SHAPES if args.shape is None else [SHAPES[i] for i in args.shape]
    if args.smoke:
        shapes = [(70_000 if i == 0 else 3000, min(d, 32), min(k, 64), t, f) for i, (n, d, k, t, f) in enumerate(shapes)]
        shapes = [s for s in shapes if device == "cuda" or s[3] == FP32][:3]
    results, speedups, per_shape = [], {}, {}
    for n, d, k, dtype, tf32 in shapes:
        case, rows, summary = measure(n, d, k, dtype, tf32, 3 if args.smoke else args.iters, device, args.sweep)
        if device == "cuda":
            torch.cuda.empty_cache()  # the shape's tensors are gone with measure's frame
        results += rows
        per_shape[case] = summary
        if "speedup_vs_best_peer" in summary:
            speedups[case] = summary["speedup_vs_best_peer"]
        print(common.table(rows, ["case", "impl", "iteration_ms", "fit_seconds", "copy_rate_fraction", "bound_fraction"]),
              flush=True)
        print(json.dumps(summary), flush=True)
        # Written after every shape, so that a run stopped part-way keeps the shapes it finished.
        path = write_results(args, shapes, results, speedups, per_shape, device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
