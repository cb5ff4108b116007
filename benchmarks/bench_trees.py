"""The same fits on two source trees of mega_taxonomy (before and after a change): result hashes and times.

A refactor must keep the bits and the speed. This runs, in one run on one machine, the fits of
``bench_kmeans_cpu.py`` (KMeans from the same init), ``bench_taxonomy_cpu.py`` (a 3-level taxonomy
of parquet files) and the GloVe demo, each in a fresh process that imports mega_taxonomy from one
tree or the other: best of ``--rounds`` processes of ``--fits`` fits each (a process's first fit
also loads numba's cached kernels). The trees take turns, in the opposite order every other round:
this 2-core VM has spells of 10-20% that would otherwise fall on one tree more than the other.
Each fit's outputs (centroids, labels; the tree, every row's path and distance) are hashed: equal
hashes are equal bits.

    python benchmarks/bench_trees.py --old /path/to/old/src [--new src] [--rounds 3] [--fits 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

CASES = ("kmeans", "taxonomy", "demo")


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def tree_and_assignments(engine, storage: str) -> dict:
    import pyarrow.parquet as pq

    levels = [(lv.centroids, lv.parent, lv.counts, lv.child_offsets) for lv in engine.tree_.levels]
    table = pq.read_table(sorted(Path(storage, "assignments").glob("*.parquet")))
    paths = np.stack(table.column("path").to_numpy(zero_copy_only=False))
    rows = (table.column("id").to_numpy(), paths, table.column("distance").to_numpy())
    return {"tree": digest(*[a for level in levels for a in level]), "assignments": digest(*rows)}


def run_case(case: str, folder: Path, threads: int, fits: int) -> dict:
    """The best of ``fits`` fits of ``case`` in this process: its seconds and its outputs' hashes
    (every fit's must be equal)."""
    import torch

    torch.set_num_threads(threads)
    runs = [fit_once(case, folder) for _ in range(fits)]
    hashes = {json.dumps(r["hashes"], sort_keys=True) for r in runs}
    assert len(hashes) == 1, f"{case}: fits in one process disagree: {hashes}"
    return {"seconds": min(r["seconds"] for r in runs), "hashes": runs[0]["hashes"]}


def fit_once(case: str, folder: Path) -> dict:
    if case == "kmeans":
        from mega_taxonomy import KMeans

        x, init = np.load(folder / "kmeans" / "x.npy"), np.load(folder / "kmeans" / "init.npy")
        t = time.perf_counter()
        km = KMeans(len(init), init=init, max_iter=10, tol=0, device="cpu").fit(x)
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "hashes": {"centroids": digest(km.cluster_centers_),
                                               "labels": digest(km.labels_, km.counts_)}}
    with tempfile.TemporaryDirectory() as work:
        storage = str(Path(work) / "store")
        if case == "taxonomy":
            from mega_taxonomy import TaxonomyEngine

            engine = TaxonomyEngine(n_levels=3, branching_factor=[16, 16, 16], max_iter=10, tol=0, device="cpu",
                                    random_state=0, storage_uri=storage, search_index=False)
            t = time.perf_counter()
            engine.fit(str(folder / "taxonomy" / "part-*.parquet"), output=str(Path(storage) / "assignments"))
            seconds = time.perf_counter() - t
        else:
            from mega_taxonomy.demo import run_demo

            _, engine, seconds = run_demo(device="cpu", storage=storage)
        return {"seconds": seconds, "hashes": tree_and_assignments(engine, storage)}


def child(src: str, case: str, folder: str, threads: int, fits: int) -> dict:
    """``run_case`` in a fresh process importing mega_taxonomy from ``src``."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, __file__, "--case", case, "--folder", folder, "--threads", str(threads),
            "--fits", str(fits)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        out.check_returncode()
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_data(folder: Path, n: int, d: int):
    import bench_kmeans_cpu
    import bench_taxonomy_cpu

    (folder / "kmeans").mkdir()
    (folder / "taxonomy").mkdir()
    bench_kmeans_cpu.make_data(200_000, 128, 1024, 0, folder / "kmeans")
    bench_taxonomy_cpu.make_data(n, d, [16, 16, 16], 10, 0, folder / "taxonomy")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="src folder of the tree before the change")
    parser.add_argument("--new", default=str(HERE.parent / "src"), help="src folder of the tree after it")
    parser.add_argument("--rounds", type=int, default=3, help="processes per tree and case")
    parser.add_argument("--fits", type=int, default=2, help="fits per process")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the taxonomy case")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", help="JSON path (default benchmarks/results/trees_cpu.json)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.folder), args.threads, args.fits)))
        return
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    results, speedups, same = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp), args.n, args.d)
        for case in args.cases.split(","):
            runs = {"old": [], "new": []}
            for round_ in range(args.rounds):
                for name in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                    runs[name].append(child(trees[name], case, tmp, args.threads, args.fits))
            for name, got in runs.items():
                hashes = {json.dumps(r["hashes"], sort_keys=True) for r in got}
                assert len(hashes) == 1, f"{case} on {name}: runs disagree: {hashes}"
                results.append({"case": case, "impl": name, "seconds": min(r["seconds"] for r in got),
                                "all_seconds": [r["seconds"] for r in got], "hashes": got[0]["hashes"]})
                print(common.table(results[-1:], ["case", "impl", "seconds", "hashes"]), flush=True)
            old, new = results[-2], results[-1]
            same[case] = old["hashes"] == new["hashes"]
            speedups[f"{case} new vs old"] = old["seconds"] / new["seconds"]
    params = {**{k: v for k, v in vars(args).items() if k not in ("case", "folder")}, "same_bits": same}
    path = common.write("trees_cpu", params, results, speedups, "python " + " ".join(sys.argv), path=args.out)
    print(json.dumps({"same_bits": same, "speedups": speedups}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
