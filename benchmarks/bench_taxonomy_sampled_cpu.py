"""Levels trained on samples against levels trained on every row, on the CPU: leaf quality, passes
over the data, wall time (``TaxonomyEngine(max_train_points_per_centroid=256)`` vs ``None``), and
with ``--sides full,sampled,subtrees`` the levels below the first fitted subtree by subtree
(``partition_level=1``, on samples too).

Both sides fit the same taxonomy in the same run, each fit in a fresh process (its peak memory is
its own), with a Store in a temporary folder (checkpoints, tree, assignments, members; no search
index), ``--rounds`` times, the order of the sides alternating from round to round; seconds are
the median of the rounds (all in ``all_seconds``). This 2-core machine is shared with other work:
its timings are noisy (spells of 20% and more); the passes and the quality are exact.

Cases:

- ``hierarchy``: the data of ``bench_taxonomy_cpu.py``: 1M x 64 float32 around the leaves of a
  16 x 16 x 16 tree of centers (every leaf equally likely), 10 parquet files; levels 16,16,16,
  ``--iters`` iterations, tol=0.
- ``zipf``: 1M x 64 rows of 4,096 Gaussians whose sizes follow a Zipf law (exponent 0.8),
  grouped 16 x 16 x 16 by construction (``study_seed_sample.py``'s mixture, larger), one .npy
  file; levels 16,16,16, ``--iters`` iterations, tol=0.
- ``glove``: the demo's 400k GloVe words (50-d, cosine), levels 32,8,8, 10 iterations, the
  default tol (the demo's fit).

Quality: the mean over rows of the cost to the centroid of the row's deepest node (squared L2;
cosine: 1 - cos), in float64, from ``predict`` (the paths the fit assigns); ``ratio`` in
``speedups`` is sampled / full (below 1: the sampled fit is better).

    python benchmarks/bench_taxonomy_sampled_cpu.py [--cases hierarchy,zipf,glove --rounds 3 --iters 10]
    python benchmarks/bench_taxonomy_sampled_cpu.py --sides full,sampled,subtrees   # taxonomy_subtrees_cpu.json
    python benchmarks/bench_taxonomy_sampled_cpu.py --n 100000 --rounds 1 --out /tmp/sampled_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from study_seed_sample import zipf_rows

# The fits compared, as TaxonomyEngine keywords: every level over all rows, levels trained on
# samples, and (--sides full,sampled,subtrees) the levels below the first fitted subtree by subtree.
SIDES = {"full": {"max_train_points_per_centroid": None}, "sampled": {"max_train_points_per_centroid": 256},
         "subtrees": {"max_train_points_per_centroid": 256, "partition_level": 1}}


def make_case(case, args, folder: Path) -> dict:
    """Write the case's data under ``folder``; returns its input and fit parameters."""
    if case == "hierarchy":
        from bench_taxonomy_cpu import make_data

        make_data(args.n, 64, [16, 16, 16], 10, 0, folder)
        return {"input": str(folder / "part-*.parquet"), "branching": [16, 16, 16], "iters": args.iters, "tol": 0.0,
                "metric": "euclidean"}
    if case == "zipf":
        np.save(folder / "zipf.npy", zipf_rows(args.n, 64))
        return {"input": str(folder / "zipf.npy"), "branching": [16, 16, 16], "iters": args.iters, "tol": 0.0,
                "metric": "euclidean"}
    if case == "glove":
        from mega_taxonomy.demo import glove_files

        return {"input": str(glove_files()[0]), "branching": [32, 8, 8], "iters": 10, "tol": 1e-4, "metric": "cosine"}
    raise ValueError(f"unknown case {case!r}")


def mean_leaf_cost(engine, x, metric, chunk=65_536) -> float:
    """Mean over rows of the cost to the deepest node's centroid (float64)."""
    paths = engine.predict(x)
    centroids = [lv.centroids.astype(np.float64) for lv in engine.tree_.levels]
    if metric == "cosine":
        centroids = [c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-30) for c in centroids]
    depth = (paths >= 0).sum(1) - 1
    total = 0.0
    for start in range(0, len(x), chunk):
        xs = np.asarray(x[start:start + chunk], dtype=np.float64)
        ps, ds = paths[start:start + chunk], depth[start:start + chunk]
        c = np.empty_like(xs)
        for level in np.unique(ds):
            on = ds == level
            c[on] = centroids[level][ps[on, level]]
        if metric == "cosine":
            xs /= np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-30)
            total += float((1 - (xs * c).sum(1)).sum())
        else:
            total += float(((xs - c) ** 2).sum())
    return total / len(x)


def run_side(spec: dict, side: str, work: Path, threads: int) -> dict:
    import torch

    from mega_taxonomy.io import VectorSource
    from mega_taxonomy.taxonomy import TaxonomyEngine

    torch.set_num_threads(threads)
    engine = TaxonomyEngine(n_levels=len(spec["branching"]), branching_factor=spec["branching"],
                            max_iter=spec["iters"], tol=spec["tol"], metric=spec["metric"], device="cpu",
                            random_state=0, storage_uri=str(work / "store"), search_index=False, **SIDES[side])
    t = time.perf_counter()
    engine.fit(spec["input"])
    seconds = time.perf_counter() - t
    peak = common.peak_rss_bytes()
    stats = engine.stats_
    source = VectorSource(spec["input"])
    x = np.concatenate([np.asarray(b.vectors) for b in source.blocks()])
    levels = [{k: s.get(k) for k in ("n_nodes", "iterations", "seconds", "inertia", "sample_rows", "sample_passes")}
              for s in stats["levels"]]
    return {"impl": side, **SIDES[side], "seconds": seconds, "peak_bytes": peak,
            "passes": int(stats["passes"]), "sample_passes": int(stats.get("sample_passes", 0)),
            "subtree_passes": stats.get("subtree_passes"), "largest_partition": stats.get("largest_partition"),
            "levels": levels,
            "quality": {"mean_leaf_cost": mean_leaf_cost(engine, x, spec["metric"])}}


COLUMNS = ["case", "impl", "seconds", "passes", "sample_passes", "subtree_passes", "mean_leaf_cost", "peak_bytes"]


def _display(r):
    return {**r, "mean_leaf_cost": r["quality"]["mean_leaf_cost"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="hierarchy,zipf,glove")
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the hierarchy and zipf cases")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", default="full,sampled", help=f"of {','.join(SIDES)}")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/taxonomy_sampled_cpu.json)")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(json.loads(args.spec), args.side, Path(args.work), args.threads)))
        return
    results, speedups, sides = [], {}, args.sides.split(",")
    for case in args.cases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            data.mkdir()
            spec = make_case(case, args, data)
            runs = {side: [] for side in sides}
            for round_ in range(args.rounds):
                order = sides if round_ % 2 == 0 else sides[::-1]
                for side in order:
                    child = ["--side", side, "--spec", json.dumps(spec), "--work", str(Path(tmp) / f"{side}-{round_}"),
                             f"--threads={args.threads}"]
                    runs[side].append(common.run_child(__file__, child))
                    print(common.table([_display({**runs[side][-1], "case": case})], COLUMNS), flush=True)
            by_side = {}
            for side, rs in runs.items():
                seconds = [r["seconds"] for r in rs]
                by_side[side] = {**rs[0], "case": case, "seconds": statistics.median(seconds), "all_seconds": seconds,
                                 "params": {k: v for k, v in spec.items() if k != "input"}}
                results.append(by_side[side])
        full = by_side["full"]
        for side in sides[1:]:
            ours = by_side[side]
            speedups[f"{case} seconds ({side})"] = full["seconds"] / ours["seconds"]
            speedups[f"{case} full-data passes ({side})"] = full["passes"] / ours["passes"]
            speedups[f"{case} leaf cost ratio ({side} / full)"] = (ours["quality"]["mean_leaf_cost"]
                                                                  / full["quality"]["mean_leaf_cost"])
    params = {k: v for k, v in vars(args).items() if k not in ("side", "spec", "work", "out")}
    params["notes"] = ("shared 2-core machine, noisy: seconds are medians of alternating rounds; passes and quality "
                       "are exact; 'full-data passes' and 'seconds' in speedups are full / the side named")
    name = "taxonomy_subtrees_cpu" if "subtrees" in sides else "taxonomy_sampled_cpu"
    path = common.write(name, params, results, speedups, "python " + " ".join(sys.argv),
                        path=args.out)
    print(common.table([_display(r) for r in results], COLUMNS))
    print(json.dumps(speedups, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
