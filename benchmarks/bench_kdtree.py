"""Exact kNN on the CPU: mega_taxonomy's KDTree vs scipy's cKDTree, pykdtree and scikit-learn's KDTree.

Data: 1M uniform and 1M clustered 3-D points (64 Gaussian clumps of different widths, as galaxies
or N-body particles gather). Per data set: build time; 100k queries (drawn like the data), k=10;
all-points kNN (every point's 10 nearest others: ``query_self(k=10)`` here, ``query(data, k=11)``
less the point itself for the peers). Every side uses all cores (``workers=-1``; pykdtree's
OpenMP threads; scikit-learn's KDTree has no thread option and runs on one). All sides run in
this process, in an order that alternates from repetition to repetition; the figure is the
median of ``--repeats``. Each side's answer is checked against ours (same rows, same distances).

    python benchmarks/bench_kdtree.py [--n 1000000 --queries 100000 --k 10 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def make_points(kind, n, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.random((n, 3)), rng.random((n // 10, 3))
    centres = rng.random((64, 3))
    widths = 10 ** rng.uniform(-3, -1.3, 64)
    def draw(m):
        which = rng.integers(0, 64, m)
        return np.mod(centres[which] + rng.normal(size=(m, 3)) * widths[which, None], 1.0)
    return draw(n), draw(n // 10)


def sides(leafsize_ours=32):
    """name -> (build(x) -> tree, query(tree, q, k) -> (d, i), self(tree, x, k) -> (d, i))."""
    from pykdtree.kdtree import KDTree as PyKDTree
    from scipy.spatial import cKDTree
    from sklearn.neighbors import KDTree as SkKDTree

    from mega_taxonomy.index import KDTree

    def drop_self(d, i):
        # the nearest is the point itself except among duplicates: continuous data has none
        return d[:, 1:], i[:, 1:]

    return {
        "mega_taxonomy": (lambda x: KDTree(x, leafsize=leafsize_ours), lambda t, q, k: t.query(q, k=k),
                          lambda t, x, k: t.query_self(k=k)),
        "cKDTree": (lambda x: cKDTree(x), lambda t, q, k: t.query(q, k=k, workers=-1),
                    lambda t, x, k: drop_self(*t.query(x, k=k + 1, workers=-1))),
        "cKDTree_leafsize32": (lambda x: cKDTree(x, leafsize=32), lambda t, q, k: t.query(q, k=k, workers=-1),
                               lambda t, x, k: drop_self(*t.query(x, k=k + 1, workers=-1))),
        "pykdtree": (lambda x: PyKDTree(x), lambda t, q, k: _pyk(t.query(q, k=k)),
                     lambda t, x, k: drop_self(*_pyk(t.query(x, k=k + 1)))),
        "sklearn_KDTree": (lambda x: SkKDTree(x), lambda t, q, k: t.query(q, k=k),
                           lambda t, x, k: drop_self(*t.query(x, k=k + 1))),
    }


def _pyk(result):
    d, i = result
    return d.astype(np.float64), i.astype(np.int64)


CPU_SECONDS = {}  # (side, operation) -> CPU seconds of this process per repetition (all its threads)


def timed(fn, *args, key=None):
    cpu, start = time.process_time(), time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - start
    if key is not None:
        CPU_SECONDS.setdefault(key, []).append(time.process_time() - cpu)
    return seconds, out


def run(kind, n, n_queries, k, repeats, skip_self):
    x, q = make_points(kind, n)
    q = q[:n_queries]
    impls = sides()
    times = {name: {"build": [], "query": [], "self": []} for name in impls}
    for build, query, self_knn in impls.values():  # warm-up: numba loads (or compiles) its kernels once a process
        tree = build(x[:2000])
        query(tree, q[:100], k)
        self_knn(tree, x[:2000], k)
    answers = {}
    order = list(impls)
    for rep in range(repeats):
        for name in order if rep % 2 == 0 else order[::-1]:
            build, query, self_knn = impls[name]
            seconds, tree = timed(build, x, key=(name, "build"))
            times[name]["build"].append(seconds)
            seconds, answer = timed(query, tree, q, k, key=(name, "query"))
            times[name]["query"].append(seconds)
            answers.setdefault((name, "query"), answer)
            # the all-points kNN of scikit-learn (one thread) takes minutes at 1M: once is enough
            if name not in skip_self and (rep == 0 or name != "sklearn_KDTree"):
                seconds, answer = timed(self_knn, tree, x, k, key=(name, "self"))
                times[name]["self"].append(seconds)
                answers.setdefault((name, "self"), answer)
            del tree
    results = []
    for name in impls:
        for op in ("build", "query", "self"):
            if not times[name][op]:
                continue
            d, i = answers.get((name, op), (None, None)) if op != "build" else (None, None)
            ours = answers.get(("mega_taxonomy", op))
            quality = {}
            if d is not None:
                quality = {"same_rows": float(np.mean(i == ours[1])),
                           "max_abs_distance_difference": float(np.max(np.abs(d - ours[0])))}
            cpu = CPU_SECONDS.pop((name, op))
            results.append({"case": f"{kind}_{op}", "impl": name, "seconds": statistics.median(times[name][op]),
                            "all_seconds": times[name][op], "cpu_seconds": statistics.median(cpu),
                            "all_cpu_seconds": cpu, **quality})
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-self", default="", help="comma-separated sides whose all-points kNN is not run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    for kind in ("uniform", "clustered"):
        results += run(kind, args.n, args.queries, args.k, args.repeats, set(filter(None, args.skip_self.split(","))))
    ours = {r["case"]: r["seconds"] for r in results if r["impl"] == "mega_taxonomy"}
    speedups = {f"{r['case']}_vs_{r['impl']}": r["seconds"] / ours[r["case"]]
                for r in results if r["impl"] != "mega_taxonomy" and r["case"] in ours}
    ours_cpu = {r["case"]: r["cpu_seconds"] for r in results if r["impl"] == "mega_taxonomy"}
    cpu_speedups = {f"{r['case']}_vs_{r['impl']}": r["cpu_seconds"] / ours_cpu[r["case"]]
                    for r in results if r["impl"] != "mega_taxonomy" and r["case"] in ours_cpu}
    per_core = {case: (args.n if case.endswith(("build", "self")) else args.queries) / seconds / common.machine()["cores"]
                for case, seconds in ours.items()}
    params = {"n": args.n, "queries": args.queries, "k": args.k, "dim": 3, "repeats": args.repeats,
              "leafsize": 32, "per_core_per_second": per_core, "cpu_time_speedups": cpu_speedups,
              "notes": "One shared 2-core VM whose cores other work used at the same time: figures are noisy; the "
                       "sides ran side by side in one process, alternating order, medians of the repetitions. "
                       "cpu_seconds: the CPU time of the process (all threads) in the same call, which other "
                       "work's share of the cores disturbs less than the wall clock; cpu_time_speedups compare "
                       "those. "
                       "'self' is the all-points kNN (each point's k nearest others). scikit-learn's KDTree "
                       "runs on one thread (it has no thread option). Every side is warmed up on 2,000 points first (numba "
                       "loads its compiled kernels once a process: about 1 s from its cache, a minute to compile)."}
    command = "python benchmarks/bench_kdtree.py " + " ".join(sys.argv[1:])
    path = common.write("kdtree", params, results, speedups, command.strip(), path=args.out)
    print(common.table(results, ["case", "impl", "seconds", "cpu_seconds", "same_rows", "max_abs_distance_difference"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
