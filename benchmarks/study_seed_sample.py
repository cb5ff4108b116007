"""How many sampled rows a node do a level's seeds need? (fitting._SAMPLE_BYTES's floor)

A level is seeded by k-means++ on a sample of each parent's rows, then refined by Lloyd over all
rows. This fits the same 16 x 16 x 16 taxonomy with ``sample_size`` rows a node (64, 32, 16 and 8
a child) from three ``random_state`` each, and reports per level the mean cost of every row to
its node's centroid, in float64:

- ``glove``: the demo's 400k GloVe words (50-d), cosine: mean cosine distance.
- ``zipf_mixture``: 300k x 32 rows of 4,096 Gaussians whose sizes follow a Zipf law (exponent
  0.8), grouped 16 x 16 x 16 by construction (centers 30, 8 and 2.5 apart, unit noise): mean
  squared euclidean distance. Seeding matters here: a small cluster that no seed lands in is
  merged into a neighbour's until Lloyd moves a centroid there.

    python benchmarks/study_seed_sample.py [--sizes 1024,512,256,128] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from common import table, write

from mega_taxonomy import TaxonomyEngine, VectorSource


def glove():
    from mega_taxonomy.demo import glove_files

    path, _ = glove_files()
    x = np.asarray(np.load(path, mmap_mode="r"), dtype=np.float64)
    return VectorSource(str(path)), x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30), "cosine"


def zipf_rows(n, d) -> np.ndarray:
    """``n`` float32 rows of 4,096 Gaussians grouped 16 x 16 x 16, their sizes a Zipf law (0.8)."""
    rng = np.random.default_rng(7)
    top = rng.normal(size=(16, d)) * 30
    mid = np.repeat(top, 16, 0) + rng.normal(size=(256, d)) * 8
    leaf = np.repeat(mid, 16, 0) + rng.normal(size=(4096, d)) * 2.5
    weights = 1.0 / np.arange(1, 4097) ** 0.8
    labels = rng.choice(4096, size=n, p=rng.permutation(weights / weights.sum()))
    return (leaf[labels] + rng.normal(size=(n, d))).astype(np.float32)


def zipf_mixture(n=300_000, d=32):
    x = zipf_rows(n, d)
    return x, x.astype(np.float64), "euclidean"


def level_costs(engine, source, x64, metric):
    paths, costs = engine.predict(source), []
    for level, fitted in enumerate(engine.tree_.levels):
        c = fitted.centroids.astype(np.float64)
        rows = paths[:, level] >= 0
        if metric == "cosine":
            c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-30)
            cost = 1 - np.einsum("nd,nd->n", x64[rows], c[paths[rows, level]])
        else:
            cost = ((x64[rows] - c[paths[rows, level]]) ** 2).sum(1)
        costs.append(float(cost.mean()))
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,512,256,128")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sizes, seeds = [int(s) for s in args.sizes.split(",")], [int(s) for s in args.seeds.split(",")]
    results = []
    for name, make in (("glove", glove), ("zipf_mixture", zipf_mixture)):
        source, x64, metric = make()
        for size in sizes:
            runs = []
            for seed in seeds:
                engine = TaxonomyEngine(n_levels=3, branching_factor=16, metric=metric, sample_size=size,
                                        random_state=seed, device="cpu").fit(source)
                runs.append(level_costs(engine, source, x64, metric))
                print(name, size, seed, [round(v, 5) for v in runs[-1]], flush=True)
            mean = np.mean(runs, 0)
            results.append({"data": name, "rows_a_node": size, "rows_a_child": size // 16,
                            "cost_per_level_mean": mean.tolist(), "cost_per_level_runs": runs})
    for r in results:  # the leaf level against the largest sample, same data
        full = next(f for f in results if f["data"] == r["data"] and f["rows_a_node"] == max(sizes))
        r["leaf_cost_over_largest_sample"] = r["cost_per_level_mean"][-1] / full["cost_per_level_mean"][-1]
    print(table(results, ["data", "rows_a_child", "cost_per_level_mean", "leaf_cost_over_largest_sample"]))
    params = {"branching_factor": [16, 16, 16], "random_states": seeds, "rows_a_node": sizes,
              "engine": "TaxonomyEngine defaults otherwise, device cpu"}
    write("seed_sample", params, results, {}, "python " + " ".join(sys.argv), args.out)


if __name__ == "__main__":
    main()
