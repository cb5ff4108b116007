"""The driver's side of the 200B plan, replayed on this machine: for every full-data pass of a
``TaxonomyEngine(partition_level=1)`` fit of 200B x 1024 rows with branching 1000,1000,100 on
512 workers, what one dispatched item (``reduce_blocks=16``: 16 blocks, 1M rows) sends back, and
what the driver spends taking it, then those figures times the pass's 190,735 items, against the
pass's reading time on the cluster (the cost model's, 400 s at 2 GB/s a GPU).

Each item's partial is made of the project's own partial types (the ones the passes return, at
the plan's node counts; D=16 where a partial holds vectors: the per-node sums scale with D and
are reported so) and pickled as Ray ships it (``io.transfer.to_host``, protocol 5). The driver's
work per item is what ``RayRuntime`` does with it: unpickle, then ``OrderedReducer.add`` into the
running total (exact sums, selections, counts), timed after a warm-up, over ``--items`` items
(the per-item cost is steady once the running total is full). The workers' own work (reading,
assigning, selecting within an item) is not the driver's and is not timed.

Passes (a full read each; ``docs/scaling.md``):

- ``sample``: the root's hash sample, 256 rows a child: each item sends its rows below
  ``hash_sample``'s bound (about 5); ``sample without a bound``: its 256,000 lowest hashes, as
  before that bound
- ``level 0 assign``: the root level's one pass over every row (counts and exact inertia, K=1000)
- ``partition``: rows written per node (counts, and a checksum entry per block file)
- ``output``: paths and members: the ``members=100`` rows nearest each node of level 0 (1e3
  nodes) among the item's rows; the levels below are the subtrees' (``taxonomy/subtrees.py``);
  ``output with every level's members``: also levels of 1e6 and 1e8 nodes, as before that

    python benchmarks/bench_control_traffic.py [--items 24]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mega_taxonomy.cluster.lloyd_pass import LloydPartial
from mega_taxonomy.io.transfer import to_host
from mega_taxonomy.ops.exact import ExactSum
from mega_taxonomy.partials import BestPerGroup, SamplePartial
from mega_taxonomy.partials.sampling import hash_bound
from mega_taxonomy.runtime import OrderedReducer
from mega_taxonomy.taxonomy.partitions import PartitionPartial
from mega_taxonomy.taxonomy.passes import MembersPartial

ROWS, DIM, GPUS, BRANCHING = 200e9, 1024, 512, (1000, 1000, 100)
ITEM_ROWS = 1 << 20  # reduce_blocks=16 blocks of 65,536 rows: one unit an item at this scale
D = 16  # of the vectors in partials here
MEMBERS, TRAIN_POINTS, PARTITION_LEVEL = 100, 256, 1
READ_SECONDS_PER_PASS = ROWS * DIM * 2 / (GPUS * 2e9)  # bf16 at 2 GB/s a GPU: the cost model's parameter


def sample_item(rng, item, bound=True):
    """The root sample's partial of an item: its rows of hash below ``hash_sample``'s bound
    (``bound=False``: its 256,000 lowest), one group, moments of D columns."""
    size = TRAIN_POINTS * BRANCHING[0]
    hashes = rng.integers(0, 2**64, ITEM_ROWS, dtype=np.uint64)
    keep = hashes <= np.uint64(hash_bound(size, int(ROWS))) if bound else slice(None)
    ordinals = item * ITEM_ROWS + np.arange(ITEM_ROWS)
    rows = {"hash": hashes[keep], "ordinal": ordinals[keep], "group": np.zeros(ITEM_ROWS, np.int64)[keep]}
    return SamplePartial(size, BestPerGroup(size, rows, key="hash").selected(), ITEM_ROWS,
                         ExactSum.of(rng.normal(size=D)), ExactSum.of(rng.normal(size=D)))


def assign_item(rng, item):
    k = BRANCHING[0]
    return LloydPartial(rng.integers(0, 2000, k), ExactSum.of(rng.random(k) * 1e3))


def partition_item(rng, item):
    files = {(f"partitions/block-{item * 16 + b:08d}.parquet"): {"sha256": f"{rng.integers(2**63):064x}",
                                                                 "bytes": int(rng.integers(1 << 26))}
             for b in range(16)}
    return PartitionPartial(rng.integers(0, 2000, BRANCHING[0]), files)


def output_item(rng, item, member_levels=PARTITION_LEVEL):
    """Per level whose members the output pass selects (those above ``partition_level``: the
    subtrees' workers select the others), the members' selection of an item's rows (each row's
    node at that level)."""
    levels, nodes = [], 1
    ordinals = item * ITEM_ROWS + np.arange(ITEM_ROWS)
    for b in BRANCHING[:member_levels]:
        nodes *= b
        columns = {"node": rng.integers(0, nodes, ITEM_ROWS), "distance": rng.random(ITEM_ROWS).astype(np.float32),
                   "ordinal": ordinals, "id": ordinals}
        levels.append(BestPerGroup(MEMBERS, columns, key="distance", group="node").compact())
    files = {("store", f"assignments/block-{item * 16 + b:08d}.parquet"): {"sha256": "0" * 64, "bytes": 1 << 24}
             for b in range(16)}
    return MembersPartial(MEMBERS, levels, ITEM_ROWS, files)


PASSES = {"sample": sample_item, "sample without a bound": lambda rng, item: sample_item(rng, item, bound=False),
          "level 0 assign": assign_item, "partition": partition_item, "output": output_item,
          "output with every level's members": lambda rng, item: output_item(rng, item, len(BRANCHING))}


def replay(make, items: int, warmup: int) -> dict:
    """Items made and pickled as workers send them, then taken by the driver one after the other
    (unpickle + add), as it takes them off the wire; the items after ``warmup`` timed together."""
    rng = np.random.default_rng(0)
    payloads = [pickle.dumps(to_host(make(rng, item)), protocol=5) for item in range(items)]
    reducer = OrderedReducer(items)
    for item in range(warmup):
        reducer.add(item, pickle.loads(payloads[item]))
    start = time.perf_counter()
    for item in range(warmup, items):
        reducer.add(item, pickle.loads(payloads[item]))
    seconds = (time.perf_counter() - start) / (items - warmup)
    total = reducer.result()
    return {"item_bytes": float(np.mean([len(p) for p in payloads])), "driver_s_per_item": seconds,
            "running_total_bytes": len(pickle.dumps(to_host(total), protocol=5))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="items replayed per pass (output: a quarter)")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--passes", default=",".join(PASSES))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    n_items = int(np.ceil(ROWS / ITEM_ROWS))
    results = []
    for name in args.passes.split(","):
        big = name.startswith("output with")  # 60 MB an item: fewer
        row = replay(PASSES[name], args.items // 4 if big else args.items, args.warmup // 4 if big else args.warmup)
        row.update(case=name, impl="ours", items_per_pass=n_items,
                   traffic_bytes_per_pass=row["item_bytes"] * n_items,
                   driver_s_per_pass=row["driver_s_per_item"] * n_items,
                   read_s_per_pass=READ_SECONDS_PER_PASS)
        row["driver_share_of_read"] = row["driver_s_per_pass"] / READ_SECONDS_PER_PASS
        results.append(row)
        print(common.table([row], ["case", "item_bytes", "driver_s_per_item", "traffic_bytes_per_pass",
                                   "driver_s_per_pass", "read_s_per_pass", "running_total_bytes"]), flush=True)
    params = {"rows": ROWS, "dim": DIM, "gpus": GPUS, "branching": list(BRANCHING), "item_rows": ITEM_ROWS,
              "partition_level": PARTITION_LEVEL,
              "partial_dim": D, "members": MEMBERS, "max_train_points_per_centroid": TRAIN_POINTS,
              "items_replayed": args.items, "warmup": args.warmup,
              "read_rate": "2 GB/s a GPU, bf16 (a parameter of the cost model, not measured)"}
    command = "python benchmarks/bench_control_traffic.py " + " ".join(sys.argv[1:])
    print(common.write("control_traffic", params, results, {}, command.strip(), path=args.out))


if __name__ == "__main__":
    main()
