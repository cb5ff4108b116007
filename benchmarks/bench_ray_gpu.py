"""Lloyd iterations (KMeans's loop, ``cluster.lloyd``) on Ray with 2 GPU workers against 1, on
the data of bench_kmeans_gpu.py (N=1M, D=1024, K=4096, bf16), and an in-process LocalRuntime on
one GPU for reference.

Each worker generates the data on its own GPU from the same seed (the driver never holds it:
GeneratedSource is a few numbers when pickled), so an iteration measures what the runtime adds
to the GPU work. The ways to run:

- ``collective``: the loop runs on every worker in lockstep, partials exchanged GPU to GPU
  (NCCL), no driver in the loop (``RayRuntime(collective=True)``, ``runtime/collective.py``);
- ``collective-shared``: the same, each actor seeing every GPU of the node (Ray's
  ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``, as Ray Train does) and using its own;
- ``dispatch``: the driver runs the loop, and every pass dispatches units to the workers and
  adds their partials (float64 sums of 4096 x 1024: 32 MiB per unit of ``--reduce-blocks``
  blocks) on the host;
- ``processes``: the collective without Ray: the same ``CollectiveRuntime`` in plain processes
  (``torch.multiprocessing``), which tells what Ray adds to it; ``processes-isolated``: the same,
  each process seeing its own GPU alone (``CUDA_VISIBLE_DEVICES``), as Ray makes an actor's
  (NCCL picks its transport from what it sees).

All give the same centroids as LocalRuntime with the same ``--reduce-blocks`` (checked here).

    python benchmarks/bench_ray_gpu.py [--quick] [--n 1048576,8388608]
        [--modes collective,collective-shared,dispatch,processes,processes-isolated]

``--quick`` runs on the CPU (2 CPU workers against 1, small N): a smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

os.environ.setdefault("RAY_AUTH_MODE", "token")  # before ray is imported
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import ray  # noqa: E402

from mega_taxonomy.cluster.lloyd import lloyd  # noqa: E402
from mega_taxonomy.io import BLOCK_ROWS, Block  # noqa: E402
from mega_taxonomy.runtime import LocalRuntime  # noqa: E402
from mega_taxonomy.runtime.collective import CollectiveRuntime, join_group  # noqa: E402
from mega_taxonomy.runtime.ray import RayRuntime  # noqa: E402
from mega_taxonomy.threads import set_cpu_threads  # noqa: E402

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

    @property
    def device(self):  # where blocks are made: streamed there without copies
        return torch.device(self._device())

    def take(self, ordinals):  # the initial centroids, rows that refill empty clusters
        return self.data(self._device())[torch.as_tensor(ordinals, device=self._x.device)]

    @staticmethod
    def _device():
        return "cuda" if torch.cuda.is_available() else "cpu"

    def blocks(self, start=0, stop=None):
        x = self.data(self._device())
        for b in range(start, self.n_blocks if stop is None else stop):
            ordinals = np.arange(b * BLOCK_ROWS, min((b + 1) * BLOCK_ROWS, self.n))
            yield Block(b, ordinals, ordinals, x[b * BLOCK_ROWS:(b + 1) * BLOCK_ROWS])


def timed_lloyd(source, centroids, iterations, runtime):
    """Seconds of each Lloyd iteration, from the end of one to the end of the next (the host waits
    for every iteration's counts and shift: in steady state, the time of a pass), and the final
    centroids."""
    stamps = [time.perf_counter()]
    result = lloyd(source, centroids, runtime, max_iter=iterations, tol=0.0, desc="bench",
                   on_iteration=lambda *_: stamps.append(time.perf_counter()))
    return np.diff(stamps).tolist(), result.centroids


def _process_rank(rank, world, endpoint, source, c0, iterations, reduce_blocks, gpu, isolated, results):
    """Rank ``rank`` of the ``processes`` modes: the collective's runtime, joined without Ray."""
    if isolated:  # before CUDA starts in this process: it sees its GPU alone, as a Ray actor does
        os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)
    device = torch.device("cuda", 0 if isolated else rank) if gpu else torch.device("cpu")
    torch.set_num_threads(1)  # the threads of a Ray actor of one CPU (Ray sets OMP_NUM_THREADS to its CPUs)
    set_cpu_threads(1)
    runtime = CollectiveRuntime(rank, world, device, reduce_blocks, join_group(endpoint, rank, world, device, 600))
    try:
        timed_lloyd(source, c0, 2, runtime)  # warm-up, as on Ray
        times, final = timed_lloyd(source, c0, iterations, runtime)
        if rank == 0:
            results.put((times, final))
    finally:
        dist.destroy_process_group()


def in_processes(world, source, c0, iterations, reduce_blocks, gpu, isolated=False):
    """``timed_lloyd`` by ``world`` plain processes in lockstep: rank 0's times and centroids."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{probe.getsockname()[1]}"
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_process_rank, args=(rank, world, endpoint, source, c0, iterations,
                                                         reduce_blocks, gpu, isolated, results))
             for rank in range(world)]
    for process in ranks:
        process.start()
    try:
        return results.get(timeout=600)
    finally:
        for process in ranks:
            process.join(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="on the CPU, small N: a smoke test")
    parser.add_argument("--n", default="1048576,8388608", help="row counts to run, comma-separated")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--reduce-blocks", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--modes", default="collective,dispatch,processes",
                        help="ways to run (see above), comma-separated")
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
    modes = args.modes.split(",")
    ray.init(num_cpus=max(4, os.cpu_count() or 1) if gpu else 2, num_gpus=2 if gpu else 0,
             _node_ip_address=args.node_ip, include_dashboard=False)

    def record(case, impl, times, final, reference, **extra):
        # Left out: the first iteration, which also generates the data where it runs, and the last,
        # whose pass was launched ahead and ran during the one before (lloyd's look_ahead).
        results.append({"case": case, "impl": impl, "seconds": statistics.median(times[1:-1]), "all_seconds": times,
                        "same_centroids_as_local": bool(np.array_equal(final, reference)), **extra})
        return results[-1]["seconds"]

    try:
        for n in sizes:
            source = GeneratedSource(n, dim, dtype)
            # k rows of the data (KMeans's init="random"): centroids in the data, as any init gives
            rows = np.sort(np.random.default_rng(0).choice(n, k, replace=False))
            c0 = source.take(rows).float().cpu().numpy()
            case = f"N{n}_D{dim}_K{k}_{dtype}"
            local = LocalRuntime("cuda" if gpu else "cpu", progress=False, reduce_blocks=args.reduce_blocks)
            timed_lloyd(source, c0, 2, local)  # warm-up: kernels compiled
            times, reference = timed_lloyd(source, c0, iterations, local)
            record(case, "local-1", times, reference, reference,
                   peak_bytes=torch.cuda.max_memory_allocated() if gpu else common.peak_rss_bytes())
            source._x = None
            for mode in modes:
                row = {}
                for workers in (1, 2):
                    if mode.startswith("processes"):
                        times, final = in_processes(workers, source, c0, iterations, args.reduce_blocks, gpu,
                                                    isolated=mode == "processes-isolated")
                    else:
                        shared = {"runtime_env": {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}}
                        runtime = RayRuntime(num_workers=workers, reduce_blocks=args.reduce_blocks, progress=False,
                                             collective=mode.startswith("collective"), **kind,
                                             ray_remote_args=shared if mode == "collective-shared" else None)
                        try:
                            runtime.drive(timed_lloyd, source, c0, 2)  # warm-up: actors, group, kernels compiled
                            times, final = runtime.drive(timed_lloyd, source, c0, iterations)
                        finally:
                            runtime.close()
                    prefix = "" if mode.startswith("processes") else "ray-"
                    row[workers] = record(case, f"{prefix}{mode}-{workers}-{'gpu' if gpu else 'cpu'}", times, final,
                                          reference, peak_bytes=None)
                speedups[f"{case} {mode}: 2 workers vs 1"] = row[1] / row[2]
            print(common.table([r for r in results if r["case"] == case], ["case", "impl", "seconds",
                                                                           "same_centroids_as_local"]), flush=True)
    finally:
        ray.shutdown()
    params = {"sizes": sizes, "dim": dim, "k": k, "dtype": dtype, "reduce_blocks": args.reduce_blocks,
              "iterations": iterations, "modes": modes, "gpu": gpu, "quick": args.quick}
    path = common.write("ray_gpu", params, results, speedups, "python " + " ".join(sys.argv),
                        **({"path": Path(args.out)} if args.out else {}))
    print(json.dumps(speedups, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
