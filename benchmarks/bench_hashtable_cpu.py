"""HashTable on the CPU (numba's loops) against a Python dict and a sorted-array baseline (torch
``unique`` / ``searchsorted``), HierarchicalKV's protocol scaled to a small CPU: batches of
``--batch`` keys, 60% of them present, the table pre-filled to load factor 0.5.

Each side keeps the same thing: key -> a row of ``dim`` float32 values. The dict maps keys to row
numbers of a growing numpy array (a Python dict of vectors would be slower still); the sorted
baseline keeps keys sorted with their rows and merges new keys with ``torch.unique``. Rates in
million keys per second (M-KV/s), median of ``--repeats`` runs, sides alternated; inserts run
on fresh batches (60% present), so the load factor rises a little from run to run.

    flock /tmp/bench.lock python benchmarks/bench_hashtable_cpu.py [--batch 262144 --capacity 4194304]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from mega_taxonomy.kv import EvictStrategy, HashTable


class DictSide:
    def __init__(self, dim):
        self.index, self.rows = {}, np.zeros((0, dim), np.float32)

    def insert(self, keys, values):
        keys = keys.tolist()
        new = [k for k in dict.fromkeys(keys) if k not in self.index]
        base = len(self.rows)
        self.index.update(zip(new, range(base, base + len(new))))
        self.rows = np.concatenate([self.rows, np.zeros((len(new), values.shape[1]), np.float32)])
        self.rows[[self.index[k] for k in keys]] = values.numpy()

    def find(self, keys):
        idx = np.fromiter((self.index.get(k, -1) for k in keys.tolist()), np.int64, len(keys))
        out = self.rows[idx]
        out[idx < 0] = 0
        return torch.from_numpy(out), torch.from_numpy(idx >= 0)


class SortedSide:
    def __init__(self, dim):
        self.keys, self.rows = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dim)

    def insert(self, keys, values):
        merged, inverse = torch.unique(torch.cat([self.keys, keys]), return_inverse=True)
        rows = torch.zeros(len(merged), values.shape[1])
        rows[inverse[:len(self.keys)]] = self.rows
        rows[inverse[len(self.keys):]] = values
        self.keys, self.rows = merged, rows

    def find(self, keys):
        pos = torch.searchsorted(self.keys, keys).clamp_max(len(self.keys) - 1)
        found = self.keys[pos] == keys
        out = self.rows[pos]
        out[~found] = 0
        return out, found


class TableSide:
    def __init__(self, dim, capacity):
        self.t = HashTable(dim=dim, init_capacity=capacity, max_capacity=capacity, max_load_factor=1.0,
                           evict_strategy=EvictStrategy.LRU, device="cpu")

    def insert(self, keys, values):
        self.t.insert_or_assign(keys, values)

    def find(self, keys):
        values, found, _ = self.t.find(keys)
        return values, found


def batch(rng, present, n, hit=0.6):
    old = present[rng.integers(len(present), size=int(n * hit))]
    new = rng.integers(2**40, 2**62, size=n - len(old))
    return torch.from_numpy(rng.permutation(np.concatenate([old, new])))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1 << 18)
    p.add_argument("--capacity", type=int, default=1 << 22)
    p.add_argument("--dims", default="8,64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    results, speedups = [], {}
    for dim in map(int, a.dims.split(",")):
        rng = np.random.default_rng(dim)
        prefill = rng.choice(2**40, a.capacity // 2, replace=False)
        sides = {"mega_taxonomy.HashTable": TableSide(dim, a.capacity), "python_dict": DictSide(dim),
                 "torch_sorted": SortedSide(dim)}
        for side in sides.values():
            for i in range(0, len(prefill), 1 << 20):
                k = torch.from_numpy(prefill[i:i + (1 << 20)])
                side.insert(k, torch.ones(len(k), dim))
        sides["mega_taxonomy.HashTable"].t.find(torch.from_numpy(prefill[:8]))  # compile
        times = {(name, api): [] for name in sides for api in ("find", "insert_or_assign")}
        for r in range(a.repeats):
            keys = batch(rng, prefill, a.batch)
            values = torch.from_numpy(rng.normal(size=(a.batch, dim)).astype(np.float32))
            want = None
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                side = sides[name]
                t0 = time.perf_counter()
                side.insert(keys, values)
                times[(name, "insert_or_assign")].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                got, found = side.find(keys)
                times[(name, "find")].append(time.perf_counter() - t0)
                want = (got, found) if want is None else want
                assert torch.equal(found, want[1]) and torch.equal(got, want[0]), name  # all sides agree
        for (name, api), ts in times.items():
            sec = statistics.median(ts)
            results.append({"case": f"dim{dim}_{api}", "impl": name, "seconds": sec, "mkv_per_s": a.batch / sec / 1e6})
        for api in ("find", "insert_or_assign"):
            ours = statistics.median(times[("mega_taxonomy.HashTable", api)])
            for peer in ("python_dict", "torch_sorted"):
                speedups[f"dim{dim}_{api}_vs_{peer}"] = statistics.median(times[(peer, api)]) / ours
    print(common.table(results, ["case", "impl", "seconds", "mkv_per_s"]))
    params = {"batch": a.batch, "capacity": a.capacity, "load_factor_start": 0.5, "hit_rate": 0.6,
              "repeats": a.repeats, "threads": 1, "strategy": "LRU",
              "notes": "2-core VM shared with other work: timings are noisy; sides alternate order, medians. "
                       "All three sides return the same values for every batch (checked)."}
    command = "flock /tmp/bench.lock python benchmarks/bench_hashtable_cpu.py " + " ".join(sys.argv[1:])
    print(common.write("hashtable_cpu", params, results, speedups, command.strip(), a.output))


if __name__ == "__main__":
    main()
