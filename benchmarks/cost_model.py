"""A cost model of a taxonomy fit on a Ray cluster: bytes and time per pass, passes per level,
partial-sum traffic per iteration (flat, with a tree reduction, and the collective runtime's
all-reduce of exact partials), driver memory (and the seeds' sample, by the engine's own rule).

Its per-item and per-byte constants come from runs measured here (benchmarks/results/
ray_overhead.json: scheduling cost per dispatched item, the driver's float64 add and object-store
fetch per byte, parquet decode rate) and the GPU rate from kmeans_gpu.json (a Lloyd iteration of
our kernels, N=1M, D=1024, K=4096 bf16 on an H200). Everything else is a parameter. See
docs/scaling.md.

A level trained on a hash sample (``--max-train-points-per-centroid``, the engine's rule in
``taxonomy/sampled.py``) reads the data once, in its assignment pass, instead of once per
iteration; its iterations on the sample in memory (at most 4 GiB) are not counted. Its sample (or
a level's seeds) is read back from the files after the pass that drew it: every row group holding
one of its rows, a fraction 1 - exp(-rows / row groups) of a pass.

    python benchmarks/cost_model.py [--rows 200e9] [--dim 1024] [--branching 1000,1000,100] [--gpus 512]
    python benchmarks/cost_model.py --max-train-points-per-centroid 0   # every level on every row
    python benchmarks/cost_model.py --partition-level 0   # level-synchronous: every level over all rows
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mega_taxonomy.taxonomy.fitting import seed_sample_size
from mega_taxonomy.taxonomy.sampled import train_rows_per_node

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK_ROWS = 65_536


def constants() -> dict:
    measured = json.loads((RESULTS / "ray_overhead.json").read_text())["params"]["constants"]
    gpu = json.loads((RESULTS / "kmeans_gpu.json").read_text())
    # a whole Lloyd iteration of our kernels (assignment and update) at N=1M, D=1024, K=4096 bf16,
    # counted as the assignment's 2 N D K: a rate a little below the GEMM's
    row = next(r for r in gpu["results"] if r["impl"] == "kernels only (ours)"
               and r["case"] == "N1048576_D1024_K4096_bfloat16")
    flops = 2 * (1 << 20) * 1024 * 4096
    out = {**measured, "gpu_assign_flops_per_second": flops / (row["iteration_ms"] / 1e3), "gpu": gpu["machine"]["gpu"]}
    traffic = RESULTS / "control_traffic.json"  # the driver's time per dispatched item of 1M rows, per full pass
    if traffic.exists():
        rows = json.loads(traffic.read_text())["results"]
        out["driver_s_per_item"] = {r["case"]: r["driver_s_per_item"] for r in rows
                                    if r["case"] in ("sample", "level 0 assign", "partition", "output")}
    return out


# An exact partial (ops/exact): each float64 sum held as a top and three int64 digits
EXACT_BYTES = 32


def model(rows, dim, branching, iterations, gpus, value_bytes, reduce_blocks, read_gbps_per_gpu, fan_in, c,
          max_points=None, allreduce_gbps_per_gpu=25.0, gpu_memory_bytes=141e9):
    n_blocks = math.ceil(rows / BLOCK_ROWS)
    units = math.ceil(n_blocks / reduce_blocks)
    items = units  # one unit per dispatched item at this scale (units are already >= 1M rows)
    pass_bytes = rows * dim * value_bytes
    io_seconds = pass_bytes / (gpus * read_gbps_per_gpu * 1e9)
    levels, k_total = [], 1
    for level, b in enumerate(branching):
        seed_rows = k_total * seed_sample_size(b, k_total, dim * 4)
        seeds = seed_rows * dim * 4  # every parent's rows, float32
        train = train_rows_per_node(max_points, b, k_total, dim * 4)  # None: full-data passes
        sampled = train is not None and k_total * train < rows
        # the level's sample (or its seeds) read back from the files after the pass that drew it
        # (SamplePartial.with_vectors): every row group that holds one of its rows, spread at random
        fetched_rows = k_total * train if sampled else seed_rows
        fetch = -math.expm1(-fetched_rows / n_blocks) * io_seconds
        k_total *= b
        compute = 2 * rows * dim * b / (gpus * c["gpu_assign_flops_per_second"])  # grouped: own parent's b children
        partial = k_total * (dim * 8 + 16)  # dense float64 sums + counts + inertia per centroid
        flat = units * partial  # every unit's partial to the driver
        # tree: workers fold their units (fixed order), then a fixed fan-in tree over workers
        tree_driver = fan_in * partial
        driver_flat = flat * (c["partial_fetch_seconds_per_byte"] + c["reduce_add_seconds_per_byte"])
        driver_tree = math.ceil(math.log(max(gpus, 2), fan_in)) * tree_driver * (
            c["partial_fetch_seconds_per_byte"] + c["reduce_add_seconds_per_byte"])
        schedule = items * c["scheduling_seconds_per_item"]
        # RayRuntime(collective=True): every rank adds its units, then one ring all-reduce of the
        # exact partial (the digits and tops: 2 (W - 1) / W of it through each GPU's link), where
        # it fits a GPU three times (the partial, the collective's buffer, the aligned digits)
        exact = k_total * (dim + 1) * EXACT_BYTES + k_total * 8
        allreduce_bytes = 2 * (gpus - 1) / gpus * exact
        allreduce = allreduce_bytes / (allreduce_gbps_per_gpu * 1e9)
        fits = 3 * exact <= gpu_memory_bytes
        # the driver hands out items while workers compute: it is a bound only when it is the slowest
        pass_seconds = max(io_seconds, compute, schedule) + (allreduce if fits else driver_tree)
        # Lloyd iterations, then the assignment pass that samples the next level; on a sample: that pass only
        passes = 1 if sampled else iterations + 1
        levels.append({
            "level": level, "centroids": k_total, "passes": passes, "trained_on_sample": sampled,
            "train_sample_bytes": k_total // b * train * dim * 4 if sampled else 0,
            "compute_s_per_pass": compute, "io_s_per_pass": io_seconds, "schedule_s_per_pass": schedule,
            "partial_bytes_per_unit": partial, "traffic_flat_bytes_per_iteration": flat,
            "driver_s_per_iteration_flat": driver_flat,
            "traffic_tree_bytes_per_iteration": gpus * partial, "driver_s_per_iteration_tree": driver_tree,
            "exact_partial_bytes": exact, "allreduce_bytes_per_gpu_per_iteration": allreduce_bytes,
            "allreduce_s_per_iteration": allreduce, "allreduce_fits_gpu": fits,
            "driver_memory_bytes": k_total * dim * 4 * 2 + 2 * partial, "seed_sample_bytes": seeds,
            "fetched_rows": fetched_rows, "fetch_seconds": fetch,
            "pass_seconds": pass_seconds, "level_seconds": passes * pass_seconds + fetch,
        })
    total_passes = 1 + sum(level["passes"] for level in levels) + 1  # + sampling pass, + output pass
    total = (2 * max(io_seconds, levels[-1]["compute_s_per_pass"]) + sum(level["level_seconds"] for level in levels))
    return {"bytes_per_pass": pass_bytes, "blocks": n_blocks, "units": units, "passes": total_passes,
            "read_hours": total_passes * io_seconds / 3600, "levels": levels, "hours": total / 3600}


def subtree_model(rows, dim, branching, iterations, gpus, value_bytes, read_gbps_per_gpu, local_gbps_per_gpu,
                  partition_level, c, max_points=None) -> dict:
    """``TaxonomyEngine(partition_level=p)`` (``taxonomy/subtrees.py``): the top ``p`` levels over
    all rows (as :func:`model`), one partition pass (a full read, and each worker writing its
    share to local disk), then each worker's subtrees from its share alone: a gather (read and
    write the share again), per subtree level one local pass if it trains on a sample (the
    engine's rule, within the subtree) else ``iterations + 1``, and one more for the subtrees'
    members; no partial crosses workers below the top. Shares are taken as balanced
    (``largest_partition`` says how far they are not)."""
    top = model(rows, dim, branching[:partition_level], iterations, gpus, value_bytes, 16, read_gbps_per_gpu, 8, c,
                max_points)
    io_seconds = rows * dim * value_bytes / (gpus * read_gbps_per_gpu * 1e9)
    share_bytes = rows / gpus * dim * value_bytes
    local_pass = share_bytes / (local_gbps_per_gpu * 1e9)
    subtree_rows = rows / math.prod(branching[:partition_level])
    levels, parents = [], 1
    for level, b in enumerate(branching[partition_level:], start=partition_level):
        train = train_rows_per_node(max_points, b, parents, dim * 4)
        sampled = train is not None and parents * train < subtree_rows
        passes = 1 if sampled else iterations + 1
        compute = 2 * (rows / gpus) * dim * b / c["gpu_assign_flops_per_second"]
        levels.append({"level": level, "subtree_parents": parents, "trained_on_sample": sampled, "local_passes": passes,
                       "local_pass_seconds": max(local_pass, compute), "partial_bytes": parents * b * (dim * 8 + 16)})
        parents *= b
    full_passes = top["passes"]  # the top's: its sample, its levels, its output pass (here: the output pass)
    full_passes += 1  # the partition pass
    # write, gather (read, write), the subtrees' members (a read), and their levels' passes
    local = 4 * local_pass + sum(lv["local_passes"] * lv["local_pass_seconds"] for lv in levels)
    # the driver's time taking every item's partial, where it outlasts the pass's reading
    # (control_traffic.json: measured here for this plan's shape, scaled by its items)
    driver = {name: s * (rows / BLOCK_ROWS / 16) for name, s in c.get("driver_s_per_item", {}).items()}
    over = sum(max(0.0, s - io_seconds) for s in driver.values())
    seconds = full_passes * io_seconds + local + over + (top["hours"] * 3600 - top["passes"] * io_seconds)
    return {"full_passes": full_passes, "read_hours": full_passes * io_seconds / 3600, "local_hours": local / 3600,
            "share_bytes": share_bytes, "levels": levels, "driver_s_per_pass": driver,
            "driver_hours_beyond_reading": over / 3600, "hours": seconds / 3600, "top": top}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=200e9)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--branching", default="1000,1000,100")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--gpus", type=int, default=512)
    parser.add_argument("--value-bytes", type=int, default=2, help="2 for bf16/fp16 input, 4 for float32")
    parser.add_argument("--reduce-blocks", type=int, default=16, help="blocks per unit: 16 = 1M rows")
    parser.add_argument("--read-gbps-per-gpu", type=float, default=2.0,
                        help="storage read rate per GPU (a parameter: the remote store is not measured; plain fp16 "
                             "parquet decodes at 3.85 GB/s on 16 cores, read_rate_h100_host.json)")
    parser.add_argument("--fan-in", type=int, default=8)
    parser.add_argument("--max-train-points-per-centroid", type=int, default=256,
                        help="TaxonomyEngine's parameter; 0: every level trains on every row")
    parser.add_argument("--partition-level", type=int, default=1,
                        help="TaxonomyEngine's parameter; 0: every level over all rows (level-synchronous)")
    parser.add_argument("--local-gbps-per-gpu", type=float, default=3.0,
                        help="a worker's local disk, read or write (assumed, not measured: NVMe)")
    parser.add_argument("--allreduce-gbps-per-gpu", type=float, default=25.0,
                        help="each GPU's link in a ring all-reduce (assumed: 200 Gbit/s InfiniBand a GPU)")
    args = parser.parse_args()
    c = constants()
    if args.partition_level:
        sub = subtree_model(int(args.rows), args.dim, [int(b) for b in args.branching.split(",")], args.iterations,
                            args.gpus, args.value_bytes, args.read_gbps_per_gpu, args.local_gbps_per_gpu,
                            args.partition_level, c, args.max_train_points_per_centroid or None)
        print(f"subtrees from level {args.partition_level}: {sub['full_passes']} full passes "
              f"({sub['read_hours']:.2f} h of reading), each worker's share {sub['share_bytes'] / 1e9:.0f} GB "
              f"read and written locally ({sub['local_hours']:.2f} h), the driver beyond the reading "
              f"{sub['driver_hours_beyond_reading']:.2f} h, about {sub['hours']:.2f} h in all")
        passes = ", ".join(f"{name} {s:.3g} s" for name, s in sub["driver_s_per_pass"].items())
        print(f"  driver per full pass: {passes} (reading {sub['top']['levels'][0]['io_s_per_pass']:.0f} s)")
        fetches = ", ".join(f"level {lv['level']} {lv['fetched_rows']:.3g} rows, {lv['fetch_seconds']:.0f} s"
                            for lv in sub["top"]["levels"])
        print(f"  samples read back after their pass: {fetches}")
        for lv in sub["levels"]:
            on = "on a sample" if lv["trained_on_sample"] else "on every row"
            print(f"  level {lv['level']}: {lv['subtree_parents']:.3g} parents a subtree, {on}, "
                  f"{lv['local_passes']} local passes of {lv['local_pass_seconds']:.0f} s; a subtree's partial "
                  f"{lv['partial_bytes'] / 1e9:.3g} GB, on its own worker")
        return
    out = model(int(args.rows), args.dim, [int(b) for b in args.branching.split(",")], args.iterations, args.gpus,
                args.value_bytes, args.reduce_blocks, args.read_gbps_per_gpu, args.fan_in, c,
                args.max_train_points_per_centroid or None, args.allreduce_gbps_per_gpu)
    print(f"constants: {json.dumps({k: v for k, v in c.items()}, indent=1)}")
    print(f"bytes per pass {out['bytes_per_pass'] / 1e12:.1f} TB, {out['blocks']} blocks, {out['units']} units, "
          f"{out['passes']} passes ({out['read_hours']:.1f} h of reading), about {out['hours']:.1f} h")
    for lv in out["levels"]:
        on = f" (trained on a {lv['train_sample_bytes'] / 1e9:.3g} GB sample)" if lv["trained_on_sample"] else ""
        print(f"level {lv['level']}: K={lv['centroids']:.3g}, {lv['passes']} passes{on}, per pass "
              f"io {lv['io_s_per_pass']:.0f} s, compute {lv['compute_s_per_pass']:.0f} s, scheduling "
              f"{lv['schedule_s_per_pass']:.0f} s; partial {lv['partial_bytes_per_unit'] / 1e9:.3g} GB/unit, "
              f"traffic/iteration flat {lv['traffic_flat_bytes_per_iteration'] / 1e12:.3g} TB "
              f"({lv['driver_s_per_iteration_flat']:.3g} s on the driver), tree "
              f"{lv['traffic_tree_bytes_per_iteration'] / 1e12:.3g} TB ({lv['driver_s_per_iteration_tree']:.3g} s), "
              f"exact all-reduce {lv['allreduce_bytes_per_gpu_per_iteration'] / 1e9:.3g} GB a GPU "
              f"({lv['allreduce_s_per_iteration']:.3g} s{'' if lv['allreduce_fits_gpu'] else ', does not fit a GPU'}); "
              f"driver memory {lv['driver_memory_bytes'] / 1e9:.3g} GB, and {lv['seed_sample_bytes'] / 1e9:.3g} GB "
              f"for the seeds' sample; its sample read back in {lv['fetch_seconds']:.0f} s")


if __name__ == "__main__":
    main()
