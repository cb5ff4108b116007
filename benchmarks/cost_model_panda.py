"""A cost model of PANDA's exact kNN on a Ray cluster: PANDA's own run (189B 3-D points built in
48 s, 19B queries answered in 12 s on 50,000 cores) laid out on Ray actors with our kernels.

Per-core rates come from runs measured here: the local kd-tree's build, query and all-points
kNN rates (benchmarks/results/kdtree.json, 1M uniform 3-D points, counted on 2 cores though the
shared machine gave the process about one: conservative), scaled by the depth of a tree of a
node's points against one of 1M, and the routing
counters of the distributed scheme (benchmarks/results/panda.json: workers visited per query,
bytes moved). Network bandwidth, cores and memory per node are parameters. See docs/scaling.md.

    python benchmarks/cost_model_panda.py [--points 189e9 --queries 19e9 --cores 50000 --cores-per-node 64]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BYTES_PER_POINT_IN_TREE = 24 + 8 + 8 + 10  # float64 x, y, z; its row; its global id; node arrays (~1/16 node a point)
BYTES_PER_POINT_MOVED = 12 + 8  # float32 x, y, z and an int64 id, as read from the files
BYTES_PER_QUERY_HOP = 24 + 10 * 16  # the query out, k=10 (distance, id) pairs back


def measured() -> dict:
    kd = json.loads((RESULTS / "kdtree.json").read_text())
    cores = kd["machine"]["cores"]
    ours = {r["case"]: r["seconds"] for r in kd["results"] if r["impl"] == "mega_taxonomy"}
    n, q = kd["params"]["n"], kd["params"]["queries"]
    panda = json.loads((RESULTS / "panda.json").read_text())
    uniform = next(r for r in panda["results"] if r["case"].startswith("uniform"))
    return {"measured_points": n, "build_points_per_core_s": n / ours["uniform_build"] / cores,
            "query_per_core_s": q / ours["uniform_query"] / cores,
            "self_points_per_core_s": n / ours["uniform_self"] / cores,
            "visits_per_query": uniform["visits_per_query"]}


def model(points, queries, cores, cores_per_node, node_gbps, node_memory_gb, c):
    nodes = math.ceil(cores / cores_per_node)
    actors = nodes  # one actor a node holds the node's region; its kernels use the node's threads
    levels = math.ceil(math.log2(actors))
    per_node = points / nodes
    memory = per_node * BYTES_PER_POINT_IN_TREE / 1e9
    # redistribution: every point crosses the network once (all-to-all), at each node's bandwidth
    shuffle = per_node * BYTES_PER_POINT_MOVED / (node_gbps * 1e9)
    # a deeper tree costs more per point: levels of the local trees here against at 1M points
    depth = math.log2(per_node / 32) / math.log2(c["measured_points"] / 32)
    local_build = depth * per_node / (c["build_points_per_core_s"] * cores_per_node)
    # global tree, per level: 256 sampled coordinates a worker to the driver and a split back (a round
    # trip, 10 ms), then one partition pass over the node's points, as one level of a local build costs
    global_tree = levels * (0.01 + local_build / math.log2(per_node / 32))
    hops = queries * c["visits_per_query"]
    query_compute = depth * hops / (c["query_per_core_s"] * cores)
    query_network = hops / nodes * BYTES_PER_QUERY_HOP / (node_gbps * 1e9)
    self_knn = depth * points / (c["self_points_per_core_s"] * cores)
    return {
        "nodes": nodes, "ray_actors": actors, "global_tree_levels": levels, "points_per_node": per_node,
        "depth_factor": depth,
        "tree_memory_gb_per_node": memory, "fits_in_memory": memory < 0.8 * node_memory_gb,
        "build_seconds": {"shuffle": shuffle, "global_tree": global_tree, "local_trees": local_build,
                          "total": shuffle + global_tree + local_build},
        "query_seconds": {"compute": query_compute, "network": query_network,
                          "total (overlapped: the larger)": max(query_compute, query_network)},
        "all_points_knn_seconds": self_knn,
        "per_core_all_points_knn_per_s": points / self_knn / cores,
        "per_core": {"build_points_per_s": points / (shuffle + global_tree + local_build) / cores,
                     "queries_per_s": queries / max(query_compute, query_network) / cores},
        "panda_per_core": {"build_points_per_s": 189e9 / 48 / 50_000, "queries_per_s": 19e9 / 12 / 50_000},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=float, default=189e9)
    parser.add_argument("--queries", type=float, default=19e9)
    parser.add_argument("--cores", type=int, default=50_000)
    parser.add_argument("--cores-per-node", type=int, default=64)
    parser.add_argument("--node-gbps", type=float, default=12.5, help="network GB/s per node (12.5: 100 Gbit/s)")
    parser.add_argument("--node-memory-gb", type=float, default=512)
    args = parser.parse_args()
    c = measured()
    out = model(args.points, args.queries, args.cores, args.cores_per_node, args.node_gbps, args.node_memory_gb, c)
    print(json.dumps({"measured_constants": c, "args": vars(args), "model": out}, indent=1))


if __name__ == "__main__":
    main()
