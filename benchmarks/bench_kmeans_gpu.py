"""k-means on one GPU: one Lloyd iteration (assignment + centroid update) of ours against
flash-kmeans, fastkmeans (data on the GPU, and through its numpy API) and plain torch, side by
side in one run on the same data (CUDA-event medians).

Shapes of the issue: (N=1M, D=1024, K=4096, bf16), (1M, 128, 1024, fp32 inputs, TF32 products
for everyone: ``torch.backends.cuda.matmul.allow_tf32 = True``, flash-kmeans and fastkmeans
use tl.dot's default, TF32, too), (1M, 1024, 65536, bf16).

- ours: the Triton assignment kernel over a small sweep of tile configs (the best is kept: that
  is our Hopper tuning, recorded), then ``ops.update`` (sort by label, segmented float64 sums,
  no atomics), then sums / counts. Same init as flash-kmeans and torch (random rows).
- flash-kmeans 0.3.1: its assign kernel and its ``_euclid_iter`` (assign + sorted update).
- torch: x @ c.T in row chunks, argmin, index_add update.
- fastkmeans 0.5.0: ``_kmeans_torch_double_chunked`` on the GPU tensor (its Triton kernel,
  dtype = ours, no subsampling), and ``FastKMeans.train`` on a float32 numpy copy (its API,
  fp16 products by its default); one iteration = (median time of calls of 3 iterations - of
  calls of 1) / 2, which leaves out its random init and final copy, and keeps what it does per
  iteration (chunks moved to the GPU, labels moved back); a difference not above 0, or below
  what its products take at the measured GEMM rate, is noise and the row is marked ``invalid``.
  Its init is its own (random rows).

Per implementation: ``seconds`` (one iteration), ``assign_ms``, ``peak_bytes`` (peak GPU memory
allocated during one iteration, the data included; ``data_bytes`` says how much that is), and
``gemm_fraction`` = the iteration's 2NKD flops over its time, as a fraction of the measured
bf16 GEMM rate. Per shape, ``speedup_vs_best_peer`` = the fastest peer's iteration / ours.

    python benchmarks/bench_kmeans_gpu.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mega_taxonomy.ops.assign.triton import nearest_triton  # noqa: E402
from mega_taxonomy.ops.update.triton import cluster_stats_triton  # noqa: E402

SHAPES = [(1 << 20, 1024, 4096, torch.bfloat16), (1 << 20, 128, 1024, torch.float32),
          (1 << 20, 1024, 65536, torch.bfloat16)]
# X_RESIDENT: the row tile stays in registers (D <= BLOCK_K); TMA: tensor-descriptor loads, one
# flattened loop (the default on Hopper).
SWEEP = [dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, num_warps=w, num_stages=s, X_RESIDENT=r, TMA=t)
         for m, n, k, w, s, r, t in [
             (128, 256, 64, 8, 3, False, True), (128, 256, 32, 8, 3, False, True), (128, 256, 32, 8, 4, False, True),
             (128, 128, 64, 4, 4, False, True), (256, 128, 64, 8, 3, False, True), (128, 128, 64, 8, 3, False, True),
             (128, 128, 32, 4, 3, False, True), (128, 128, 64, 4, 3, False, True), (128, 128, 32, 4, 2, False, True),
             (128, 256, 32, 8, 4, False, False), (128, 256, 64, 8, 3, False, False),
             (128, 128, 64, 4, 4, False, False), (128, 64, 128, 8, 1, True, False),
             (128, 128, 128, 8, 2, True, False), (64, 128, 128, 4, 2, True, False)]]


def ms(fn):
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def wall(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def peak(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def per_iteration(fit, iters):
    """(ms per iteration or None, seconds of one 1-iteration call): medians of 3 wall-clock calls
    of 1 and of ``iters`` iterations, their difference over ``iters - 1`` (init, final copies and
    launch of the call left out). None when the difference is not above 0: noise."""
    one = sorted(wall(lambda: fit(1)) for _ in range(3))[1]
    many = sorted(wall(lambda: fit(iters)) for _ in range(3))[1]
    per = (many - one) / (iters - 1) * 1e3
    return (per if per > 0 else None), one


def invalid(per, one, flops, rate):
    """Why a difference of wall-clock calls is not a per-iteration time, or nothing: not above 0,
    or faster than the iteration's products could run at the measured bf16 GEMM rate (noise)."""
    if per is not None and flops / per / 1e9 <= rate:
        return {}
    what = "not above 0" if per is None else f"{per:.3f} ms, faster than the GEMM rate allows"
    return {"invalid": f"the difference of wall-clock calls was {what} (noise); one whole 1-iteration call took "
                       f"{one * 1e3:.1f} ms. Excluded from speedup_vs_best_peer."}


def ours_iteration(x, x_sq, c, cfg):
    k = c.shape[0]
    dist, labels = nearest_triton(x, c, torch.einsum("ij,ij->i", c.float(), c.float()), 2.0, config=cfg)
    sums, counts, _ = cluster_stats_triton(x, labels, dist + x_sq, k)
    new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c.double())
    return new.to(x.dtype), labels


def torch_assign(x, c, c_sq):
    chunk = max(4096, (1 << 29) // c.shape[0])  # bounds the (chunk, K) product at 2 GiB
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for r in range(0, x.shape[0], chunk):
        out[r:r + chunk] = (c_sq[None, :] - 2 * (x[r:r + chunk] @ c.T).float()).argmin(1)
    return out


def torch_iteration(x, c):
    k = c.shape[0]
    labels = torch_assign(x, c, c.float().pow(2).sum(1))
    sums = torch.zeros(k, x.shape[1], dtype=torch.float32, device=x.device).index_add_(0, labels, x.float())
    counts = torch.bincount(labels, minlength=k)
    return (sums / counts.clamp_min(1)[:, None]).to(x.dtype), labels


def gemm_tflops():
    a = torch.randn(262144, 1024, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16)
    t = ms(lambda: a @ b)
    return 2 * 262144 * 1024 * 4096 / t / 1e9


def quality(x, c, labels):
    """Agreement with a float64 brute force (on the inputs as the kernels saw them) on a row
    sample, and the relative inertia gap there."""
    rows = torch.arange(0, x.shape[0], max(1, x.shape[0] // 8192), device=x.device)
    d = torch.cdist(x[rows].double(), c.double()) ** 2
    ref = d.min(1)
    chosen = d.gather(1, labels[rows].long()[:, None]).squeeze(1)
    return {"agreement_vs_float64": float((labels[rows].long() == ref.indices).float().mean()),
            "inertia_rel_gap": float((chosen.sum() - ref.values.sum()) / ref.values.sum())}


def row(case, impl, t_iter_ms, t_assign_ms, peak_bytes, flops, rate, **extra):
    return {"case": case, "impl": impl, "seconds": None if t_iter_ms is None else t_iter_ms / 1e3,
            "assign_ms": t_assign_ms,
            "peak_bytes": peak_bytes, "gemm_fraction": None if t_iter_ms is None else flops / t_iter_ms / 1e9 / rate,
            **extra}


def measure(n, d, k, dtype, quick, rate, peers):
    case = f"N{n}_D{d}_K{k}_{str(dtype).split('.')[-1]}"
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", dtype=torch.float32, generator=g).to(dtype)
    c = x[torch.randperm(n, device="cuda", generator=g)[:k]].clone()
    x_sq = x.float().pow(2).sum(1)
    c_sq = c.float().pow(2).sum(1)
    flops, data_bytes = 2 * n * k * d, x.nbytes + c.nbytes + x_sq.nbytes
    rows = []

    # ours: sweep the tile configs on the assignment, keep the best
    best = None
    for cfg in SWEEP[:3] if quick else SWEEP:
        if cfg["X_RESIDENT"] and d > cfg["BLOCK_K"]:
            continue
        try:
            t = ms(lambda cfg=cfg: nearest_triton(x, c, c_sq, 2.0, config=cfg))
        except Exception as exc:  # e.g. a config over the shared-memory limit: skip it, say so
            print(f"  config {cfg} failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            continue
        print(f"  ours {case} {cfg}: {t:.3f} ms", flush=True)
        if best is None or t < best[0]:
            best = (t, cfg)
    t_assign, cfg = best
    t_iter = ms(lambda: ours_iteration(x, x_sq, c, cfg))
    labels = ours_iteration(x, x_sq, c, cfg)[1]
    rows.append(row(case, "mega_taxonomy", t_iter, t_assign, peak(lambda: ours_iteration(x, x_sq, c, cfg)), flops,
                    rate, data_bytes=data_bytes, config=cfg, quality=quality(x, c, labels),
                    update_ms=t_iter - t_assign))
    print(f"  ours: assign {t_assign:.3f} ms, iteration {t_iter:.3f} ms", flush=True)

    # torch
    rows.append(row(case, "torch", ms(lambda: torch_iteration(x, c)), ms(lambda: torch_assign(x, c, c_sq)),
                    peak(lambda: torch_iteration(x, c)), flops, rate, data_bytes=data_bytes,
                    quality=quality(x, c, torch_iteration(x, c)[1])))

    if "flash" in peers:
        assign, iterate = peers["flash"]
        x3, c3, xs3 = x[None], c[None], x_sq[None]
        rows.append(row(case, "flash-kmeans", ms(lambda: iterate(x3, xs3, c3)), ms(lambda: assign(x3, c3, xs3)),
                        peak(lambda: iterate(x3, xs3, c3)), flops, rate, data_bytes=data_bytes,
                        quality=quality(x, c, assign(x3, c3, xs3)[0])))
    torch.cuda.empty_cache()

    if "fastkmeans" in peers:
        run, api = peers["fastkmeans"]
        fk = dict(dtype=dtype, tol=-1.0, max_points_per_centroid=None, use_triton=True,
                  chunk_size_data=51_200, chunk_size_centroids=10_240)
        try:
            fit = lambda iters: run(x, x_sq, k, torch.device("cuda"), max_iters=iters, **fk)  # noqa: E731
            fit(1)  # a first call at the same shapes: its kernel compiles (and tunes) for them
            per, one = per_iteration(fit, 2 if quick else 3)
            pk = peak(lambda: fit(1))
            rows.append(row(case, "fastkmeans (data on GPU)", per, None, pk, flops, rate, data_bytes=data_bytes,
                            one_call_seconds=one, **invalid(per, one, flops, rate)))
        except Exception as exc:
            print(f"  fastkmeans on GPU failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        host = x.float().cpu().numpy()
        try:
            fit = lambda iters: api(d, k, niter=iters, tol=-1.0, gpu=True, seed=0, verbose=False).train(host)  # noqa: E731
            fit(1)  # compiles at these shapes
            torch.cuda.reset_peak_memory_stats()
            per, one = per_iteration(fit, 2 if quick or k > 16384 else 3)
            rows.append(row(case, "fastkmeans (API, numpy in host memory)", per, None,
                            torch.cuda.max_memory_allocated(), flops, rate, one_call_seconds=one,
                            note="its default dtype (fp16 products); the data travel from host memory",
                            **invalid(per, one, flops, rate)))
        except Exception as exc:
            print(f"  fastkmeans API failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        del host
    torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=64k, small sweep")
    parser.add_argument("--out", default=None)
    parser.add_argument("--shape", type=int, action="append", default=None,
                        help="index into SHAPES (repeatable); default: all")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for fp32 inputs, as flash-kmeans does inside
    peers = {}
    try:
        from flash_kmeans.assign_euclid_triton import euclid_assign_triton
        from flash_kmeans.kmeans_triton_impl import _euclid_iter
        peers["flash"] = (euclid_assign_triton, _euclid_iter)
    except ImportError as exc:
        print(f"flash-kmeans not installed: {exc}")
    try:
        from fastkmeans import FastKMeans
        from fastkmeans.kmeans import _kmeans_torch_double_chunked
        peers["fastkmeans"] = (_kmeans_torch_double_chunked, FastKMeans)
    except ImportError as exc:
        print(f"fastkmeans not installed: {exc}")
    rate = gemm_tflops()
    print(f"bf16 GEMM [262144,1024]x[1024,4096]: {rate:.0f} TFLOP/s", flush=True)
    results, speedups, per_shape = [], {}, {}
    shapes = SHAPES if args.shape is None else [SHAPES[i] for i in args.shape]
    for n, d, k, dtype in shapes:
        rows = measure(1 << 16 if args.quick else n, d, k, dtype, args.quick, rate, peers)
        case, ours, others = rows[0]["case"], rows[0], [r for r in rows[1:] if "invalid" not in r]
        fastest = min(others, key=lambda r: r["seconds"])
        with_assign = [r for r in others if r["assign_ms"] is not None]
        fastest_assign = min(with_assign, key=lambda r: r["assign_ms"])
        ours["speedup_vs_best_peer"] = fastest["seconds"] / ours["seconds"]
        speedups[case] = ours["speedup_vs_best_peer"]
        per_shape[case] = {"speedup_vs_best_peer": ours["speedup_vs_best_peer"], "best_peer": fastest["impl"],
                           "ours_iteration_ms": ours["seconds"] * 1e3,
                           "best_peer_iteration_ms": fastest["seconds"] * 1e3,
                           "assign_speedup_vs_best_peer": fastest_assign["assign_ms"] / ours["assign_ms"],
                           "best_assign_peer": fastest_assign["impl"]}
        results += rows
        print(common.table(rows, ["case", "impl", "seconds", "assign_ms", "gemm_fraction", "peak_bytes"]), flush=True)
    params = {"shapes": [(n, d, k, str(t)) for n, d, k, t in shapes], "quick": args.quick,
              "tf32": "torch.backends.cuda.matmul.allow_tf32 = True; every Triton kernel uses tl.dot's default "
                      "(TF32) for fp32 inputs",
              "bf16_gemm_tflops": rate, "per_shape": per_shape}
    name = "kmeans_gpu" if args.shape is None else "kmeans_gpu_shape" + "_".join(map(str, args.shape))
    path = common.write(name, params, results, speedups, "python " + " ".join(sys.argv),
                        **({"path": Path(args.out)} if args.out else {}))
    print(json.dumps(per_shape, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
