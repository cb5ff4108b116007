"""HashTable on one GPU beside the original (HierarchicalKV, CUDA), in one run.

The original's protocol (``../shared/peers/hierarchicalkv/benchmark/merlin_hashtable_benchmark.cc.cu``):
batches of 2**20 uint64 keys, float32 values, LRU, capacity 2**27 keys at dim 8 and 32, 2**26 at
dim 64, load factor 0.50 / 0.75 / 1.00 reached by pre-filling, 60% of a batch's keys present,
values all in GPU memory (and a hybrid case), B-KV/s = keys per second / 2**30. This script
builds the original with nvcc (about 2 minutes): its benchmark's functions, driven by a main of
the same calls for the chosen dims and load factors (``original_source``; its own main runs
every dim at three load factors, then hybrid tables, for many minutes). It runs it, parses its
tables, then measures ours at the same shapes (CUDA events, median of ``--repeats`` calls per
API; ``--tune`` first picks our kernels' launch configurations on the first case; beside each,
the call's device time alone, its kernels under torch's profiler: "kernels only") and writes
``benchmarks/results/hashtable_gpu.json`` with a ratio per API (ours / original's B-KV/s, call
against call: > 1 means faster).

    python benchmarks/bench_hashtable_gpu.py [--dims 8,64 --load-factors 0.5,0.75 --tune --hybrid]
    python benchmarks/bench_hashtable_gpu.py --hkv-output saved_hkv_stdout.txt   # original run before

Its stdout is kept beside (``--workdir``/hkv_stdout.txt); give it with ``--hkv-output`` to
measure ours alone.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from gpu_timing import kernel_seconds, profile

from mega_taxonomy.kv import EvictStrategy, HashTable
from mega_taxonomy.ops.hash_table import triton as kernels

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "hierarchicalkv"
BUILD = ("nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -Iinclude -Ibenchmark "
         "--expt-relaxed-constexpr benchmark/merlin_hashtable_benchmark.cc.cu -o {out}")
BATCH = 1 << 20
APIS = ["insert_or_assign", "find", "find_or_insert", "assign", "find*", "find_or_insert*", "insert_and_evict",
        "export_batch", "export_batch_if", "contains"]
# Ours, the device's time alone: the kernels and copies of a call (``gpu_timing.kernel_seconds``),
# beside the calls' rates, which count the host's time too, as the original's do.
KERNELS = "kernels only"
# Ours only (the original times inserting calls on hits alone): insert_or_assign on fresh batches
# at the protocol's hit rate, 40% of the keys new at every call (``time_inserts``).
NEW_KEYS = "insert_or_assign_40%_new"


# The original's pure-HBM configurations: dim -> (capacity, GB of values in GPU memory).
ORIGINAL_CASES = {8: (1 << 27, 4), 32: (1 << 27, 16), 64: (1 << 26, 16)}


def original_source(peer: Path, dims, load_factors) -> str:
    """The original's benchmark with a main of the same calls for ``dims`` and ``load_factors``
    only (its own main runs every dim at 0.5, 0.75 and 1.0, then hybrid tables of tens of GB)."""
    text = (peer / "benchmark" / "merlin_hashtable_benchmark.cc.cu").read_text()
    lfs = ", ".join(f"{lf:.2f}f" for lf in load_factors)
    calls = []
    for dim in dims:
        capacity, hbm = ORIGINAL_CASES[dim]
        calls.append(f"""
    std::cout << "\\n* dim = {dim}, capacity = {capacity >> 20} Million-KV, HBM = {hbm} GB, HMEM = 0 GB\\n";
    print_title_a();
    test_main(apis_a, {dim}, {capacity}UL, key_num_per_op, {hbm}, 1.0f, false, {{{lfs}}});
    print_title_b();
    test_main(apis_b, {dim}, {capacity}UL, key_num_per_op, {hbm}, 1.0f, false, {{{lfs}}});""")
    main = """
int main() {
  size_t key_num_per_op = 1 * 1024 * 1024UL;
  std::vector<API_Select> apis_a{API_Select::insert_or_assign, API_Select::find, API_Select::find_or_insert,
                                 API_Select::assign, API_Select::find_ptr, API_Select::find_or_insert_ptr,
                                 API_Select::insert_and_evict};
  std::vector<API_Select> apis_b{API_Select::export_batch, API_Select::export_batch_if, API_Select::contains};
  test_mode = Test_Mode::pure_hbm;
  try {""" + "".join(calls) + """
    CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const nv::merlin::CudaException& e) {
    std::cerr << e.what() << std::endl;
  }
  return 0;
}
"""
    return text[:text.index("int main() {")] + main


def build_original(peer: Path, workdir: Path, dims, load_factors) -> Path:
    """The original's binary for ``dims`` and ``load_factors`` in ``workdir``, built unless there."""
    binary = workdir / "hkv_bench"
    if not binary.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        (peer / "benchmark" / "selected_benchmark.cc.cu").write_text(original_source(peer, dims, load_factors))
        subprocess.run(BUILD.format(out=binary).replace("merlin_hashtable_benchmark", "selected_benchmark"),
                       shell=True, check=True, cwd=peer)
    return binary


def run_original(peer: Path, workdir: Path, dims, load_factors) -> str:
    binary = build_original(peer, workdir, dims, load_factors)
    return subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout


def parse_original(text: str) -> dict:
    """{(dim, hbm_gb, hmem_gb, load_factor): {api: B-KV/s}} from the original's markdown tables."""
    out, config, header = {}, None, None
    for line in text.splitlines():
        m = re.search(r"dim = (\d+), capacity = (\d+) Million-KV, HBM = (\d+) GB, HMEM = (\d+) GB", line)
        if m:
            config = (int(m[1]), int(m[3]), int(m[4]))
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or config is None:
            continue
        if cells[0] in ("λ", "\u03bb"):
            header = cells[1:]
        elif header and re.fullmatch(r"\d\.\d+", cells[0]):
            row = out.setdefault((*config, float(cells[0])), {})
            row.update({api: float(v) for api, v in zip(header, cells[1:]) if re.fullmatch(r"[\d.]+", v)})
    return out


def batch_keys(rng, present: np.ndarray, n: int, hit=0.6):
    old = present[rng.integers(len(present), size=int(n * hit))]
    new = rng.integers(2**40, 2**62, size=n - len(old))
    return torch.from_numpy(rng.permutation(np.concatenate([old, new]))).cuda()


def time_call(fn, repeats):
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


# Launch configurations of our kernels tried by ``--tune`` (module constants of ops/hash_table/triton.py).
LOOKUPS = [(kind, block, warps) for kind in ("bytes", "words") for block in (16, 32, 64) for warps in (2, 4)]
UPSERTS = [(block, warps) for block in (16, 32, 64) for warps in (1, 2, 4)]


def time_inserts(t, fresh, values, repeats):
    """Median seconds of insert_or_assign on batches that ``fresh()`` makes (keys the table
    misses among them), the new keys erased after each, untimed: the loop's kernel has work at
    every call, and the table stays as it was."""
    times = []
    for _ in range(repeats):
        keys = fresh()
        new = keys[~t.contains(keys)]
        times.append(time_call(lambda: t.insert_or_assign(keys, values), 1))
        t.erase(new)
    return statistics.median(times)


def tune(t, keys, fresh, values, repeats) -> dict:
    """The fastest lookup and upsert configurations through the public calls (find* on the case's
    keys; insert_or_assign on fresh batches of the case's hit rate, ``time_inserts``), set in the
    module; every time kept."""
    tried, failed = {"lookup": {}, "upsert": {}}, {}

    def rate(kind, config, fn, timed=time_call):
        try:
            fn()  # compile, warm up
            tried[kind][config] = BATCH / timed(fn, repeats) / 2**30
        except Exception as exc:  # noqa: BLE001 - a configuration that fails to compile is reported, not chosen
            failed[config] = f"{type(exc).__name__}: {str(exc)[:200]}"
            tried[kind][config] = 0.0

    for kind, block, warps in LOOKUPS:
        kernels.LOOKUP, kernels.BLOCK, kernels.LOOKUP_WARPS = kind, block, warps
        rate("lookup", f"{kind} block {block} warps {warps}", lambda: t.find_ptr(keys))
    for block, warps in UPSERTS:
        kernels.UPSERT_BLOCK, kernels.UPSERT_WARPS = block, warps
        rate("upsert", f"block {block} warps {warps}", lambda: t.insert_or_assign(keys, values),
             lambda _, repeats: time_inserts(t, fresh, values, repeats))
    best_lookup = max(zip(tried["lookup"].values(), LOOKUPS))[1]
    best_upsert = max(zip(tried["upsert"].values(), UPSERTS))[1]
    kernels.LOOKUP, kernels.BLOCK, kernels.LOOKUP_WARPS = best_lookup
    kernels.UPSERT_BLOCK, kernels.UPSERT_WARPS = best_upsert
    return {"bkv_per_s": tried, "failed": failed, "chosen": {"lookup": best_lookup, "upsert": best_upsert}}


def measure_ours(dim, load_factor, hbm_bytes, repeats, seed=0, profiled=False, tuned=None) -> dict:
    capacity = (1 << 27) if dim <= 32 else (1 << 26)
    t = HashTable(dim=dim, init_capacity=capacity, max_capacity=capacity, max_hbm_for_vectors=hbm_bytes,
                  max_load_factor=1.0, evict_strategy=EvictStrategy.LRU, device="cuda")
    rng = np.random.default_rng(seed)
    present = rng.choice(2**40, int(capacity * load_factor), replace=False)
    for i in range(0, len(present), BATCH):
        k = torch.from_numpy(present[i:i + BATCH]).cuda()
        t.insert_or_assign(k, torch.ones(len(k), dim, device="cuda"))
    keys = batch_keys(rng, present, BATCH)
    values = torch.ones(BATCH, dim, device="cuda")

    def fresh():  # another batch of the protocol's hit rate (``time_inserts``)
        return batch_keys(rng, present, BATCH)

    if tuned is not None:
        tuned.update(tune(t, keys, fresh, values, repeats))
    calls = {
        "insert_or_assign": lambda: t.insert_or_assign(keys, values),
        "find": lambda: t.find(keys),
        "find_or_insert": lambda: t.find_or_insert(keys, values),
        "assign": lambda: t.assign(keys, values),
        "find*": lambda: t.find_ptr(keys),
        "find_or_insert*": lambda: t.find_or_insert_ptr(keys, values),
        "insert_and_evict": lambda: t.insert_and_evict(keys, values),
        "export_batch": lambda: t.export_batch(BATCH, 0),
        "export_batch_if": lambda: t.export_batch_if(0, 0, BATCH, 0),
        "contains": lambda: t.contains(keys),
    }
    out = {}
    for api, fn in calls.items():
        fn()  # compile, warm up
        # Inserting calls change the table: like the original, they run on the same keys again
        # (hits then), so the load factor stays where the pre-fill put it.
        out[api] = BATCH / time_call(fn, repeats) / 2**30
        out[api, KERNELS] = BATCH / kernel_seconds(fn) / 2**30
        if profiled:
            profile(api, fn)
    out[NEW_KEYS] = BATCH / time_inserts(t, fresh, values, repeats) / 2**30
    out["real_load_factor"] = t.load_factor()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dims", default="8,64")
    p.add_argument("--load-factors", default="0.5,0.75")
    p.add_argument("--hybrid", action="store_true", help="also dim 64 with 16 GB of values in GPU memory")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--hkv-output", default=None, help="the original's stdout saved earlier (skip building it)")
    p.add_argument("--peer", default=str(PEER), help="the original's source tree (../shared/peers/hierarchicalkv)")
    p.add_argument("--workdir", default="/tmp")
    p.add_argument("--output", default=None)
    p.add_argument("--profile", action="store_true", help="print where each call's time goes (the first case)")
    p.add_argument("--tune", action="store_true", help="choose our kernels' launch configurations on the first case")
    p.add_argument("--build-only", action="store_true", help="build the original into --workdir and stop")
    a = p.parse_args()
    dims, load_factors = [int(d) for d in a.dims.split(",")], [float(lf) for lf in a.load_factors.split(",")]
    if a.build_only:  # ahead of the run: nvcc works on the CPU while the GPU runs something else
        build_original(Path(a.peer), Path(a.workdir), dims, load_factors)
        return
    if a.hkv_output:
        text = Path(a.hkv_output).read_text()
    else:
        text = run_original(Path(a.peer), Path(a.workdir), dims, load_factors)
        Path(a.workdir, "hkv_stdout.txt").write_text(text)
    original = parse_original(text)
    results, speedups = [], {}
    cases = [(d, lf, None) for d in dims for lf in load_factors]
    if a.hybrid:
        cases += [(64, lf, 16 << 30) for lf in map(float, a.load_factors.split(","))]
    params = {"batch": BATCH, "hit_rate": 0.6, "strategy": "LRU", "value_dtype": "float32",
              "targets": ">= 1.0 for find, find*, contains, assign; >= 0.7 for inserting and erasing calls",
              "original_build": BUILD.format(out="hkv_bench"), "original_commit": "ae24eec"}
    params["launch"] = {"lookup": (kernels.LOOKUP, kernels.BLOCK, kernels.LOOKUP_WARPS),
                        "upsert": (kernels.UPSERT_BLOCK, kernels.UPSERT_WARPS)}
    command = "python benchmarks/bench_hashtable_gpu.py " + " ".join(sys.argv[1:])
    for dim, lf, hbm in cases:
        capacity = (1 << 27) if dim <= 32 else (1 << 26)
        hbm_bytes = capacity * dim * 4 if hbm is None else hbm
        tuned = {} if a.tune and not results else None
        ours = measure_ours(dim, lf, hbm_bytes, a.repeats, profiled=a.profile and not results, tuned=tuned)
        if tuned:
            params["tuning"] = {"case": f"dim{dim}_lf{lf}", **tuned}
            params["launch"] = tuned["chosen"]
        hbm_gb, hmem_gb = hbm_bytes >> 30, max(0, (capacity * dim * 4 - hbm_bytes) >> 30)
        peer = original.get((dim, hbm_gb, hmem_gb, lf), {})
        case = f"dim{dim}_lf{lf}" + ("_hybrid" if hbm is not None else "")
        for api in APIS + [NEW_KEYS]:
            results.append({"case": f"{case}_{api}", "impl": "mega_taxonomy.HashTable", "bkv_per_s": ours[api],
                            "load_factor": ours["real_load_factor"]})
            if (api, KERNELS) in ours:
                results.append({"case": f"{case}_{api}", "impl": f"mega_taxonomy.HashTable ({KERNELS})",
                                "bkv_per_s": ours[api, KERNELS]})
            if api in peer:
                results.append({"case": f"{case}_{api}", "impl": "HierarchicalKV", "bkv_per_s": peer[api]})
                speedups[f"{case}_{api}"] = ours[api] / peer[api]
        torch.cuda.empty_cache()
        # after every case, so that a run stopped part-way keeps what it finished
        print(common.table([r for r in results if r["case"].startswith(case + "_")], ["case", "impl", "bkv_per_s"]))
        print(common.write("hashtable_gpu", params, results, speedups, command.strip(), a.output), flush=True)


if __name__ == "__main__":
    main()
