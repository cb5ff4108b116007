"""k-means on the CPU: mega_taxonomy.KMeans vs faiss-cpu Kmeans vs scikit-learn KMeans.

200k x 128 float32 blobs, k=1024, 10 Lloyd iterations from the same initial centroids, the same
thread count for everyone; each implementation runs in its own process (peak memory is its own),
best of ``--repeats`` runs. faiss trains on every point (``max_points_per_centroid`` large enough).

Our fit also makes the final assignment pass that scikit-learn makes (labels and inertia of the
returned centroids); faiss's ``train`` does not, so "faiss+assign" adds the search a faiss user
runs to get them (the same outputs as ours). Speedups are given on total time against every
peer, and per pass over the data.

    python benchmarks/bench_kmeans_cpu.py [--n 200000 --d 128 --k 1024 --iters 10 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def make_data(n, d, k, seed, folder):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)).astype(np.float32) * 2
    x = centers[rng.integers(k, size=n)] + rng.normal(size=(n, d)).astype(np.float32)
    init = x[rng.choice(n, k, replace=False)]
    np.save(folder / "x.npy", x)
    np.save(folder / "init.npy", init)


def inertia(x, c):
    import torch

    from mega_taxonomy.ops import nearest

    d, _ = nearest(torch.from_numpy(x).double(), torch.from_numpy(c).double())
    return float(d.sum())


def run_case(impl, folder, iters, threads, repeats):
    x = np.load(folder / "x.npy")
    init = np.load(folder / "init.npy")
    k, d = init.shape
    import torch

    torch.set_num_threads(threads)
    best, centers = np.inf, None
    for _ in range(repeats):
        if impl == "mega_taxonomy":
            from mega_taxonomy import KMeans

            km = KMeans(k, init=init, max_iter=iters, tol=0, device="cpu")
            t = time.perf_counter()
            km.fit(x)
            seconds = time.perf_counter() - t
            centers = km.cluster_centers_
        elif impl.startswith("faiss"):
            import faiss

            faiss.omp_set_num_threads(threads)
            km = faiss.Kmeans(d, k, niter=iters, max_points_per_centroid=len(x) // k + 1, seed=0, verbose=False)
            t = time.perf_counter()
            km.train(x, init_centroids=init)
            if impl == "faiss+assign":
                km.index.search(x, 1)
            seconds = time.perf_counter() - t
            centers = km.centroids
        elif impl == "sklearn":
            from sklearn.cluster import KMeans as SkKMeans
            from threadpoolctl import threadpool_limits

            with threadpool_limits(threads):
                km = SkKMeans(k, init=init, n_init=1, max_iter=iters, tol=0, algorithm="lloyd")
                t = time.perf_counter()
                km.fit(x)
                seconds = time.perf_counter() - t
            centers = km.cluster_centers_
        best = min(best, seconds)
    # Passes over the data: Lloyd iterations, plus the assignment to the final centroids that
    # scikit-learn and we make (labels_ and inertia_ of the returned centroids) and that a faiss
    # user adds with index.search ("faiss+assign").
    passes = iters + (0 if impl == "faiss" else 1)
    return {"case": f"n{len(x)}_d{d}_k{k}", "impl": impl, "seconds": best, "passes": passes,
            "seconds_per_pass": best / passes, "peak_bytes": common.peak_rss_bytes(),
            "quality": {"inertia": inertia(x, np.asarray(centers))}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--impls", default="mega_taxonomy,faiss,faiss+assign,sklearn")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child mode: impl name
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.folder), args.iters, args.threads, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(args.n, args.d, args.k, 0, folder)
        results = []
        for impl in args.impls.split(","):
            child = ["--case", impl, "--folder", tmp, "--iters", str(args.iters), "--threads", str(args.threads),
                     "--repeats", str(args.repeats)]
            results.append(common.run_child(__file__, child))
            print(common.table(results[-1:], ["impl", "seconds", "passes", "seconds_per_pass", "peak_bytes"]),
                  flush=True)
    ours = next(r for r in results if r["impl"] == "mega_taxonomy")["seconds"]
    case = results[0]["case"]
    speedups = {f"{case} vs {r['impl']}": r["seconds"] / ours for r in results if r["impl"] != "mega_taxonomy"}
    ours_pass = next(r for r in results if r["impl"] == "mega_taxonomy")["seconds_per_pass"]
    speedups.update({f"{case} per pass vs {r['impl']}": r["seconds_per_pass"] / ours_pass
                     for r in results if r["impl"] != "mega_taxonomy"})
    params = {k: v for k, v in vars(args).items() if k not in ("case", "folder")}
    path = common.write("kmeans_cpu", params, results, speedups, "python " + " ".join(sys.argv))
    print(common.table(results, ["case", "impl", "seconds", "passes", "seconds_per_pass", "peak_bytes"]))
    print(json.dumps(speedups, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
