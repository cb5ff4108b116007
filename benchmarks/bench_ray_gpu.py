"""Lloyd iterations on Ray with 2 GPU workers against 1, on the data of bench_kmeans_gpu.py
(N=1M, D=1024, K=4096, bf16), and an in-process LocalRuntime on one GPU for reference.

Each worker generates the data on its own GPU from the same seed (the driver never holds it:
GeneratedSource is a few numbers when pickled), so a pass measures what the runtime adds to the
GPU work: dispatch, the state's broadcast, partial sums back to the driver and its reduction.
The task is one Lloyd step (assignment by our kernel, float64 sums per centroid, counts,
inertia) whose sums stay on the GPU while a worker adds up the blocks of a unit, and cross to
the host once per unit (``--reduce-blocks`` blocks: partials of 4096 x 1024 float64 are 32 MiB).

    python benchmarks/bench_ray_gpu.py [--quick] [--n 1048576,8388608]

``--quick`` runs on the CPU (2 CPU workers against 1, small N): a smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("RAY_AUTH_MODE", "token")  # before ray is imported
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import ray  # noqa: E402

from mega_taxonomy.ops.update import cluster_sums  # noqa: E402
from mega_taxonomy.io import BLOCK_ROWS, Block  # noqa: E402
from mega_taxonomy.ops import nearest  # noqa: E402
from mega_taxonomy.runtime import LocalRuntime  # noqa: E402
from mega_taxonomy.runtime.ray import RayRuntime  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this script


class GeneratedSource:
    """N x D rows drawn from N(0, 1) with a fixed seed, generated where blocks are first read
    (on the worker's device), never pickled: the runtime's source protocol (n_blocks, blocks)."""

    def __init__(self, n, dim, dtype, seed=0):
        self.n, self.dim, self.dtype, self.seed = n, dim, dtype, seed
        self.n_blocks = -(-n // BLOCK_ROWS)
        self._x = None

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"GeneratedSource(n={self.n}, dim={self.dim}, dtype={self.dtype})"

    def __getstate__(self):
        return {**self.__dict__, "_x": None}

    def data(self, device):
        if self._x is None:
            g = torch.Generator(device=device).manual_seed(self.seed)
            x = torch.empty(self.n, self.dim, dtype=getattr(torch, self.dtype), device=device)
            for r in range(0, self.n, BLOCK_ROWS):  # in float32 pieces: no N x D float32 temporary
                rows = min(BLOCK_ROWS, self.n - r)
                x[r:r + rows] = torch.randn(rows, self.dim, generator=g, device=device)
            self._x = x
        return self._x

    def blocks(self, start=0, stop=None):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        x = self.data(device)
        for b in range(start, self.n_blocks if stop is None else stop):
            ordinals = np.arange(b * BLOCK_ROWS, min((b + 1) * BLOCK_ROWS, self.n))
            yield Block(b, ordinals, ordinals, x[b * BLOCK_ROWS:(b + 1) * BLOCK_ROWS])


class Sums:
    """Counts, float64 sums and inertia per centroid; tensors while summed on the device, numpy
    once pickled (that is when a unit leaves its worker)."""

    def __init__(self, counts, sums, inertia):
        self.counts, self.sums, self.inertia = counts, sums, inertia

    def __add__(self, other):
        def add(a, b):
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.device != b.device:
                b = b.to(a.device)
            return a + b
        return Sums(add(self.counts, other.counts), add(self.sums, other.sums), add(self.inertia, other.inertia))

    def __getstate__(self):
        host = lambda t: t.cpu().numpy() if isinstance(t, torch.Tensor) else t  # noqa: E731
        return {k: host(v) for k, v in self.__dict__.items()}

    def numpy(self):
        return [np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v) for v in (self.counts, self.sums, self.inertia)]


class Step:
    """One Lloyd step on a block: assignment, then per-centroid sums (float64), counts, inertia."""

    def __call__(self, block, centroids, device):
        x = block.vectors
        c = torch.as_tensor(centroids, device=device).to(x.dtype)
        dist, labels = nearest(x, c)
        k = c.shape[0]
        counts = torch.bincount(labels, minlength=k)
        inertia = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, labels, dist.double())
        return Sums(counts, cluster_sums(x, labels, k), inertia)


def iterate(runtime, source, centroids, iterations):
    """Per-iteration seconds (a pass plus the driver's update) and the final centroids."""
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        counts, sums, _ = runtime.map_reduce(source, Step(), centroids).numpy()
        filled = counts > 0
        updated = centroids.copy()
        updated[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        centroids = updated
        times.append(time.perf_counter() - started)
    return times, centroids


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="on the CPU, small N: a smoke test")
    parser.add_argument("--n", default="1048576,8388608", help="row counts to run, comma-separated")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--reduce-blocks", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=7)
    parser.add_argument("--node-ip", default="127.0.0.1", help="the local cluster's address")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gpu = torch.cuda.is_available() and not args.quick
    if args.quick:
        sizes, dim, k, dtype, iterations = [4 * BLOCK_ROWS], 64, 256, "float32", 3
    else:
        sizes, dim, k, dtype, iterations = [int(n) for n in args.n.split(",")], args.dim, args.k, args.dtype, args.iterations
    results, speedups = [], {}
    kind = {"gpus_per_worker": 1} if gpu else {"gpus_per_worker": 0}
    ray.init(num_cpus=max(4, os.cpu_count() or 1) if gpu else 2, num_gpus=2 if gpu else 0,
             _node_ip_address=args.node_ip, include_dashboard=False)
    try:
        for n in sizes:
            source = GeneratedSource(n, dim, dtype)
            c0 = np.random.default_rng(0).normal(size=(k, dim)).astype(np.float32)
            case = f"N{n}_D{dim}_K{k}_{dtype}"
            row = {}
            for workers in (1, 2):
                runtime = RayRuntime(num_workers=workers, reduce_blocks=args.reduce_blocks, progress=False, **kind)
                iterate(runtime, source, c0, 1)  # warm-up: actors, data generated, kernels compiled
                times, final = iterate(runtime, source, c0, iterations)
                runtime.close()
                row[workers] = statistics.median(times)
                results.append({"case": case, "impl": f"ray-{workers}-{'gpu' if gpu else 'cpu'}", "seconds": row[workers],
                                "all_seconds": times, "peak_bytes": None,
                                "quality": {"centroid_checksum": float(np.abs(final).sum())}})
            local = LocalRuntime("cuda" if gpu else "cpu", progress=False, reduce_blocks=args.reduce_blocks)
            iterate(local, source, c0, 1)
            times, _ = iterate(local, source, c0, iterations)
            results.append({"case": case, "impl": "local-1", "seconds": statistics.median(times), "all_seconds": times,
                            "peak_bytes": torch.cuda.max_memory_allocated() if gpu else common.peak_rss_bytes()})
            source._x = None
            speedups[f"{case}: 2 workers vs 1"] = row[1] / row[2]
            print(common.table(results[-3:], ["case", "impl", "seconds"]), flush=True)
    finally:
        ray.shutdown()
    params = {"sizes": sizes, "dim": dim, "k": k, "dtype": dtype, "reduce_blocks": args.reduce_blocks,
              "iterations": iterations, "gpu": gpu, "quick": args.quick}
    path = common.write("ray_gpu", params, results, speedups, "python " + " ".join(sys.argv),
                        **({"path": Path(args.out)} if args.out else {}))
    print(json.dumps(speedups, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
