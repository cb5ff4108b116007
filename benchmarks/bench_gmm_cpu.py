"""Gaussian mixtures on the CPU: mega_taxonomy.GaussianMixture vs scikit-learn's GaussianMixture.

Both fit the same data from the same start (``weights_init``, ``means_init`` and
``precisions_init`` all given, so no k-means runs on either side) for the same number of EM
iterations (``tol=0``), with the same thread count, each implementation in its own process (peak
memory is its own), best of ``--repeats`` fits. Quality: the final lower bound (mean
log-likelihood per row) of each, which should agree to rounding. Cases: diag and full
covariances at two shapes.

    python benchmarks/bench_gmm_cpu.py [--iters 10 --threads 2 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CASES = {"diag_n200000_d32_k32": ("diag", 200_000, 32, 32), "full_n100000_d16_k16": ("full", 100_000, 16, 16)}


def make_data(name, folder: Path, seed=0):
    """Blobs around ``k`` centres, and a start: the centres moved a little, unit precisions."""
    covariance_type, n, d, k = CASES[name]
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    x = centers[rng.integers(k, size=n)] + rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, size=d)
    means = centers + rng.normal(size=(k, d)) * 0.5
    precisions = {"diag": np.ones((k, d)), "full": np.repeat(np.eye(d)[None], k, 0)}[covariance_type]
    np.savez(folder / f"{name}.npz", x=x, weights=np.full(k, 1 / k), means=means, precisions=precisions)


def run_case(impl, name, folder: Path, iters, threads, repeats):
    from threadpoolctl import threadpool_limits

    covariance_type, n, d, k = CASES[name]
    data = np.load(folder / f"{name}.npz")
    start = {"weights_init": data["weights"], "means_init": data["means"], "precisions_init": data["precisions"]}
    if impl == "mega_taxonomy":
        import torch

        from mega_taxonomy import GaussianMixture

        torch.set_num_threads(threads)
        make = lambda: GaussianMixture(k, covariance_type=covariance_type, tol=0, max_iter=iters,  # noqa: E731
                                       device="cpu", **start)
    else:
        from sklearn.mixture import GaussianMixture as SkGaussianMixture

        make = lambda: SkGaussianMixture(k, covariance_type=covariance_type, tol=0, max_iter=iters,  # noqa: E731
                                         **start)
    best, model = np.inf, None
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0 never converges: the iterations are fixed on purpose
        for _ in range(repeats):
            model = make()
            t = time.perf_counter()
            model.fit(data["x"])
            best = min(best, time.perf_counter() - t)
    return {"case": name, "impl": impl, "seconds": best, "seconds_per_iteration": best / model.n_iter_,
            "n_iter": int(model.n_iter_), "peak_bytes": common.peak_rss_bytes(),
            "quality": {"lower_bound": float(model.lower_bound_)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", help="JSON path (default benchmarks/results/gmm_cpu.json)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child mode: impl name
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.name, Path(args.folder), args.iters, args.threads, args.repeats)))
        return
    results, speedups = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            make_data(name, Path(tmp))
            by_impl = {}
            for impl in ("mega_taxonomy", "sklearn"):
                child = ["--case", impl, "--name", name, "--folder", tmp, "--iters", str(args.iters),
                         "--threads", str(args.threads), "--repeats", str(args.repeats)]
                by_impl[impl] = common.run_child(__file__, child)
                results.append(by_impl[impl])
                print(common.table(results[-1:], ["case", "impl", "seconds", "n_iter", "peak_bytes"]), flush=True)
            speedups[f"{name} vs sklearn"] = by_impl["sklearn"]["seconds"] / by_impl["mega_taxonomy"]["seconds"]
            ours, theirs = (by_impl[i]["quality"]["lower_bound"] for i in ("mega_taxonomy", "sklearn"))
            by_impl["mega_taxonomy"]["quality"]["lower_bound_relative_difference"] = abs(ours - theirs) / abs(theirs)
    params = {k: v for k, v in vars(args).items() if k not in ("case", "name", "folder")}
    path = common.write("gmm_cpu", params, results, speedups, "python " + " ".join(sys.argv), path=args.out)
    print(common.table(results, ["case", "impl", "seconds", "seconds_per_iteration", "n_iter", "peak_bytes"]))
    print(json.dumps(speedups, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
