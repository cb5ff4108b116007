"""The driver's memory of a taxonomy fit against the rows it fits: nothing per row on the driver.

A fit with ``partition_level=1`` on a RayRuntime of ``--workers`` CPU workers (a loopback cluster
started here), rows streamed from parquet (float32, D=16, written plainly, in files of 1M rows),
at N = 2M and N = 20M (``--sizes``): the driver's peak resident memory (this process's; the
workers are processes of their own), with the source's block cache off (``cache_bytes=0``), so
that no decoded rows are kept anywhere on the driver; and the peak of its private part
(``RssAnon``), which leaves out the pages of Ray's object store that the driver maps when it
reads the workers' partials. The level-synchronous fit
(``partition_level=None``) is measured beside it at the same sizes: it keeps each level's row
groups and labels on the driver. Each fit runs in a fresh process.

Data: rows of a 16 x 16 x 16 tree of Gaussians (``bench_taxonomy_cpu.make_data``' law, D=16),
levels 16,16,16, 5 iterations a level, no search index.

    python benchmarks/bench_taxonomy_driver.py [--sizes 2000000,20000000 --workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")  # before ray is imported

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

D, FILE_ROWS = 16, 1 << 20
SIDES = {"subtrees": 1, "level-synchronous": None}


def write_rows(n: int, folder: Path) -> None:
    """``n`` rows around the leaves of a 16 x 16 x 16 tree of centres, in parquet files of 1M rows."""
    rng = np.random.default_rng(0)
    top = rng.normal(size=(16, D)) * 30
    leaves = (np.repeat(np.repeat(top, 16, 0) + rng.normal(size=(256, D)) * 8, 16, 0)
              + rng.normal(size=(4096, D)) * 2.5)
    for i, start in enumerate(range(0, n, FILE_ROWS)):
        rows = min(FILE_ROWS, n - start)
        x = (leaves[rng.integers(0, 4096, rows)] + rng.normal(size=(rows, D))).astype(np.float32)
        vector = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)
        pq.write_table(pa.table({"vector": vector}), folder / f"part-{i:05d}.parquet", use_dictionary=False)


class MemoryWatch:
    """The peaks of this process's resident memory, read from /proc/self/status every 20 ms:
    ``VmRSS`` (what ``ru_maxrss`` also gives) and ``RssAnon``, its private part, which leaves out
    mapped files and shared memory (Ray's object store maps the objects a driver reads into it)."""

    def __init__(self):
        self.peaks = {"VmRSS": 0, "RssAnon": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.wait(0.02):
            self.read()

    def read(self):
        with open("/proc/self/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in self.peaks:
                    self.peaks[name] = max(self.peaks[name], int(value.split()[0]) * 1024)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.read()
        return self.peaks


def run_side(data: str, side: str, work: str, workers: int, node_ip: str) -> dict:
    from mega_taxonomy.io import VectorSource
    from mega_taxonomy.runtime.ray import RayRuntime
    from mega_taxonomy.taxonomy import TaxonomyEngine

    source = VectorSource(data, cache_bytes=0)
    watch = MemoryWatch()
    with RayRuntime.local(num_cpus=workers, node_ip_address=node_ip, num_workers=workers, progress=False) as runtime:
        engine = TaxonomyEngine(n_levels=3, branching_factor=16, max_iter=5, tol=0.0, device="cpu", runtime=runtime,
                                storage_uri=work, search_index=False, partition_level=SIDES[side])
        t = time.perf_counter()
        engine.fit(source)
        seconds = time.perf_counter() - t
    stats, peaks = engine.stats_, watch.stop()
    return {"impl": side, "rows": len(source), "driver_peak_bytes": common.peak_rss_bytes(),
            "driver_peak_private_bytes": peaks["RssAnon"], "seconds": seconds,
            "passes": stats["passes"], "subtree_passes": stats.get("subtree_passes"),
            "largest_partition": stats.get("largest_partition"), "leaf_inertia": stats["levels"][-1]["inertia"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000000,20000000")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--node-ip", default="127.0.0.2")
    parser.add_argument("--out", default=None)
    parser.add_argument("--side", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.data, args.side, args.work, args.workers, args.node_ip)))
        return
    results = []
    for n in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            data.mkdir()
            write_rows(n, data)
            for side in args.sides.split(","):
                child = ["--side", side, "--data", str(data), "--work", str(Path(tmp) / side),
                         f"--workers={args.workers}", f"--node-ip={args.node_ip}"]
                results.append(common.run_child(__file__, child))
                print(common.table(results[-1:], list(results[-1])), flush=True)
    speedups = {}
    for side in args.sides.split(","):
        for key in ("driver_peak_bytes", "driver_peak_private_bytes"):
            peaks = [r[key] for r in results if r["impl"] == side]
            if len(peaks) > 1:
                speedups[f"{side}: {key}, largest N / smallest N"] = peaks[-1] / peaks[0]
    params = {"sizes": args.sizes, "workers": args.workers, "dim": D,
              "notes": "driver = this benchmark's child process; workers are Ray processes; block cache off"}
    path = common.write("taxonomy_driver", params, results, speedups, "python " + " ".join(sys.argv), path=args.out)
    print(json.dumps(speedups, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
