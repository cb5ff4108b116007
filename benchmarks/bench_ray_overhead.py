"""What Ray costs over the in-process runtime: Lloyd iterations on 100 parquet shards x 10k rows x
64 dims, K=256, on LocalRuntime and on a RayRuntime of 2 CPU workers (a local loopback cluster),
and the constants that the cost model (benchmarks/cost_model.py) is calibrated from.

Measured, on the same data in the same run (medians over repeats, the two runtimes alternating so
that the machine's noise falls on both):
- one Lloyd iteration (a pass of partial sums plus the driver's update), warm caches;
- the first pass (decoding the parquet files into the workers' caches);
- a no-op pass of 100 one-block items: the driver's scheduling cost per dispatched item;
- the driver's reduction: adding two float64 partials, per byte; and fetching a partial that a
  worker returns, per byte (Ray's object store).

    python benchmarks/bench_ray_overhead.py [--quick] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("RAY_AUTH_MODE", "token")  # before ray is imported
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import ray  # noqa: E402

from mega_taxonomy.cluster.lloyd_pass import LloydState, LloydTask  # noqa: E402
from mega_taxonomy.cluster.relocate import new_centroids  # noqa: E402
from mega_taxonomy.io import BLOCK_ROWS, VectorSource  # noqa: E402
from mega_taxonomy.runtime import LocalRuntime  # noqa: E402
from mega_taxonomy.runtime.ray import RayRuntime  # noqa: E402


class Count:
    """A no-op task: the rows of a block (what is left is scheduling and transfer)."""

    def __call__(self, block, state, device):
        return len(block.ordinals)


@ray.remote(num_cpus=0)  # the workers hold every CPU slot
def _partial_of(nbytes):
    return np.ones(nbytes // 8)


def write_shards(folder: Path, n_shards: int, rows: int, dim: int) -> str:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(256, dim)).astype(np.float32) * 4
    for i in range(n_shards):
        x = centers[rng.integers(0, 256, rows)] + rng.normal(size=(rows, dim)).astype(np.float32)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)
        pq.write_table(pa.table({"emb": emb}), folder / f"shard-{i:03d}.parquet")
    return str(folder)


def iteration(runtime, source, centroids):
    """One Lloyd iteration: (seconds, new centroids)."""
    started = time.perf_counter()
    partial = runtime.map_reduce(source, LloydTask(), LloydState(centroids, far=True))
    updated, *_ = new_centroids(partial, centroids, source, "euclidean")
    return time.perf_counter() - started, updated


def timed(fn, *args):
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 shards, 3 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--node-ip", default="127.0.0.2", help="the local cluster's address (loopback)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n_shards, rows, dim, k = (20 if args.quick else 100), 10_000, 64, 256
    repeats = 3 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        data = write_shards(Path(tmp), n_shards, rows, dim)
        source_local, source_ray = VectorSource(data), VectorSource(data)
        init = source_local.take(np.arange(k) * (len(source_local) // k)).astype(np.float32)
        local = LocalRuntime("cpu", progress=False)
        with RayRuntime.local(num_cpus=args.workers, node_ip_address=args.node_ip, num_workers=args.workers,
                              progress=False) as remote:
            remote.worker_pids()  # the actors are up before anything is timed
            cold = {"local": timed(iteration, local, source_local, init),
                    f"ray-{args.workers}": timed(iteration, remote, source_ray, init)}
            times = {"local": [], f"ray-{args.workers}": []}
            c_local = c_ray = init
            for _ in range(repeats):  # alternating, so that noise falls on both
                t, c_local = iteration(local, source_local, c_local)
                times["local"].append(t)
                t, c_ray = iteration(remote, source_ray, c_ray)
                times[f"ray-{args.workers}"].append(t)
            identical = bool(np.array_equal(c_local, c_ray))

            # scheduling: a no-op pass of one-block items over 100 blocks (in memory: no decoding)
            blocks = VectorSource(np.zeros((100 * BLOCK_ROWS, 1), np.float32))
            remote.dispatch_units = 1  # one item per block, on the same workers
            remote.map_reduce(blocks, Count(), None)  # warm: the source unpickled in the workers
            noop_ray = statistics.median(timed(remote.map_reduce, blocks, Count(), None) for _ in range(repeats))
            noop_local = statistics.median(timed(local.map_reduce, blocks, Count(), None) for _ in range(repeats))

            # the driver's reduction and the transfer of partials, per byte (32 MiB: K=4096 x D=1024 float64)
            nbytes = 32 << 20
            a, b = np.ones(nbytes // 8), np.ones(nbytes // 8)
            add = statistics.median(timed(np.add, a, b) for _ in range(repeats))
            ray.get(_partial_of.remote(nbytes))
            fetch = statistics.median(timed(lambda: ray.get(_partial_of.remote(nbytes))) for _ in range(repeats))
    t_local, t_ray = (statistics.median(v) for v in times.values())
    n_blocks = source_local.n_blocks
    results = [
        {"case": "lloyd iteration (warm caches)", "impl": name, "seconds": statistics.median(v),
         "all_seconds": v, "peak_bytes": common.peak_rss_bytes() if name == "local" else None,
         "quality": {"centroids_bit_identical_to_local": identical}}
        for name, v in times.items()
    ] + [
        {"case": "first pass (parquet decode)", "impl": name, "seconds": t} for name, t in cold.items()
    ] + [
        {"case": "no-op pass, 100 one-block items", "impl": "local", "seconds": noop_local},
        {"case": "no-op pass, 100 one-block items", "impl": f"ray-{args.workers}", "seconds": noop_ray},
    ]
    constants = {
        "ray_over_local_iteration": t_ray / t_local,
        "scheduling_seconds_per_item": (noop_ray - noop_local) / 100,
        # one worker's time per block of 65,536 x 64 against K=256, its share of the overheads included
        "worker_seconds_per_block_k256_d64": t_ray * args.workers / n_blocks,
        "decode_rows_per_second_per_process": len(source_local) / cold["local"],
        "reduce_add_seconds_per_byte": add / nbytes,
        "partial_fetch_seconds_per_byte": fetch / nbytes,
    }
    params = {"shards": n_shards, "rows_per_shard": rows, "dim": dim, "k": k, "blocks": n_blocks,
              "workers": args.workers, "repeats": repeats, "constants": constants}
    speedups = {"lloyd iteration: local / ray (>= 0.8 is the 1.25x target)": t_local / t_ray}
    print(common.table(results, ["case", "impl", "seconds"]))
    print(json.dumps(constants, indent=1))
    path = common.write("ray_overhead", params, results, speedups, "python " + " ".join(sys.argv),
                        **({"path": Path(args.out)} if args.out else {}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
