"""A 3-level taxonomy (256 x 16 x 16) on one GPU over data that does not live on the GPU: the time
of each pass over the data against the rate of simply moving the same bytes.

Two parts (``--part``), each in its own process and result file:

- ``pinned``: N x 1024 float16 vectors (default 10M, 20 GB) in pinned host memory (a pinned
  torch tensor). The bound is the host-to-device copy rate, measured here by copying the same
  tensor to the GPU in blocks of 65,536 rows (the pass's blocks) on one stream. Target: every
  Lloyd pass at >= 0.8 of that rate. An untimed fit of the same rows runs first, so that no
  timed pass compiles a kernel (a fit of the first 1M rows left some of the sizes of the upper
  levels' samples uncompiled: the timed fit took 0.8 s more).
- ``parquet``: N x 1024 float16 vectors (default 2M, 4 GB) in parquet files on the local disk
  (fixed_size_list<halffloat>, 8 files, row groups of 65,536). The bound is the plain read rate
  of the same files (``pyarrow.parquet.read_table`` of the vector column, all threads), after a
  first read, so that both see the same page cache. The source's block cache is off
  (``cache_bytes=0``): every pass decodes. Target: every Lloyd pass at >= 0.7 of that rate. An
  untimed fit of 1M rows made in memory compiles the kernels first.
  ``--encoding``: ``dictionary`` (pyarrow's default for float16, about 6x slower to decode) or
  ``plain`` (``use_dictionary=False``, as docs/design.md advises); results in
  ``taxonomy_gpu_parquet.json`` and ``taxonomy_gpu_parquet_plain.json``. ``--partition-level L``:
  the levels from L down fitted subtree by subtree (``TaxonomyEngine(partition_level=L)``), the
  partition and outputs written under ``--dir``; results in ``taxonomy_gpu_parquet_subtrees.json``.

Each pass is timed (CUDA synchronized) through a LocalRuntime that records ``map_reduce`` calls;
a Lloyd pass is one named ``level L i``. ``max_iter`` bounds the passes per level (tol=0), so
the number of passes, not convergence, sets the run time.

    python benchmarks/bench_taxonomy_gpu.py --part pinned [--rows N] [--max-iter 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mega_taxonomy.io import BLOCK_ROWS, VectorSource  # noqa: E402
from mega_taxonomy.runtime import LocalRuntime  # noqa: E402
from mega_taxonomy.taxonomy import TaxonomyEngine  # noqa: E402

D = 1024
BRANCHING = [256, 16, 16]


class TimedRuntime(LocalRuntime):
    """LocalRuntime that records the seconds of every pass."""

    def __init__(self):
        super().__init__("cuda", progress=False)
        self.passes = []

    def map_reduce(self, source, task, state, *, desc=None):
        torch.cuda.synchronize()
        started, host_started = time.perf_counter(), time.thread_time()
        out = super().map_reduce(source, task, state, desc=desc)
        host = time.thread_time() - host_started  # before the sync below, which spins
        torch.cuda.synchronize()
        self.passes.append({"desc": desc, "task": type(task).__name__, "seconds": time.perf_counter() - started,
                            "driver_thread_cpu_seconds": host})
        print(f"  pass {desc}: {self.passes[-1]['seconds']:.3f} s (driver thread busy {host:.3f} s)", flush=True)
        return out


def clustered_chunks(n, seed=0, chunk=1 << 20):
    """float16 chunks (on the GPU) of n rows around 4096 random centers."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    centers = torch.randn(4096, D, device="cuda", generator=g) * 2
    for r in range(0, n, chunk):
        m = min(chunk, n - r)
        lab = torch.randint(0, 4096, (m,), device="cuda", generator=g)
        yield r, (centers[lab] + torch.randn(m, D, device="cuda", generator=g)).half()


def h2d_rate(host):
    """Bytes per second of copying ``host`` (pinned) to the GPU in blocks of BLOCK_ROWS rows."""
    bufs = [torch.empty(BLOCK_ROWS, D, dtype=host.dtype, device="cuda") for _ in range(2)]
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i, r in enumerate(range(0, host.shape[0], BLOCK_ROWS)):
            piece = host[r:r + BLOCK_ROWS]
            bufs[i % 2][: len(piece)].copy_(piece, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return host.nbytes / min(times), times


# Seeds each node's children from a hash sample of 2 x branching rows per node (the root keeps
# the default, 64 x 256). The default (64 x branching per node, kept within 4 GiB) makes the
# sample that seeds level 2 4096 x 256 rows, 2 GB at 1024-d fp16, which the sample partials
# re-copy at every block merge: the assign passes would measure that, not the passes over data.
SAMPLE_SIZE = [None] + [2 * b for b in BRANCHING[1:]]


def fit(data, max_iter, partition_level=None, storage_uri=None):
    runtime = TimedRuntime()
    started = time.perf_counter()
    engine = TaxonomyEngine(n_levels=3, branching_factor=BRANCHING, max_iter=max_iter, tol=0.0, device="cuda",
                            runtime=runtime, random_state=0, sample_size=SAMPLE_SIZE,
                            partition_level=partition_level, storage_uri=storage_uri).fit(data)
    total = time.perf_counter() - started
    return engine, runtime.passes, total


def warm_up(data, args):
    """Fit the first ``--warmup-rows`` rows once, untimed, so that the timed fit does not compile
    the Triton kernels (seconds each at first use; Triton keeps them on disk for later runs)."""
    if args.warmup_rows:
        t = time.perf_counter()
        fit(data[:args.warmup_rows], args.max_iter)
        print(f"warm-up fit of {args.warmup_rows} rows: {time.perf_counter() - t:.1f} s", flush=True)


def summarize(passes, data_bytes, bound_rate):
    for p in passes:
        p["bytes_per_second"] = data_bytes / p["seconds"]
        p["fraction_of_bound"] = p["bytes_per_second"] / bound_rate
    lloyd = [p for p in passes if re.fullmatch(r"level \d+ \d+", p["desc"] or "")]
    if not lloyd:  # every level trained on a sample: the passes over the data are the draws and assignments
        return {"passes_over_data": len(passes),
                "fraction_of_bound_median": statistics.median(p["fraction_of_bound"] for p in passes),
                "fraction_of_bound_min": min(p["fraction_of_bound"] for p in passes)}
    per_level = {}
    for p in lloyd:
        per_level.setdefault(p["desc"].rsplit(" ", 1)[0], []).append(p["fraction_of_bound"])
    return {
        "lloyd_passes": len(lloyd),
        "lloyd_pass_seconds_median": statistics.median(p["seconds"] for p in lloyd),
        "lloyd_fraction_of_bound_median": statistics.median(p["fraction_of_bound"] for p in lloyd),
        "lloyd_fraction_of_bound_min": min(p["fraction_of_bound"] for p in lloyd),
        "lloyd_fraction_of_bound_per_level_median": {k: statistics.median(v) for k, v in per_level.items()},
    }


def part_pinned(args):
    n = args.rows
    t = time.perf_counter()
    host = torch.empty((n, D), dtype=torch.float16, pin_memory=True)
    for r, chunk in clustered_chunks(n):
        host[r:r + len(chunk)].copy_(chunk)
    torch.cuda.synchronize()
    print(f"made {n} x {D} float16 in pinned memory ({host.nbytes / 1e9:.1f} GB) in {time.perf_counter() - t:.1f} s",
          flush=True)
    rate, copy_times = h2d_rate(host)
    print(f"host-to-device copy rate, blocks of {BLOCK_ROWS} rows: {rate / 1e9:.2f} GB/s", flush=True)
    warm_up(host, args)
    engine, passes, total = fit(host, args.max_iter)
    summary = summarize(passes, host.nbytes, rate)
    result = {"case": f"pinned_N{n}_D{D}_fp16", "impl": "mega_taxonomy", "seconds": total,
              "peak_bytes": torch.cuda.max_memory_allocated(), "data_bytes": host.nbytes,
              "h2d_bytes_per_second": rate, "h2d_copy_seconds": copy_times, **summary, "passes": passes,
              "quality": {"levels": engine.stats_["levels"]}}
    return result, {"pinned lloyd pass / h2d copy (median fraction of the copy rate)":
                    summary["lloyd_fraction_of_bound_median"]}


def part_parquet(args):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, n_files = args.rows, 8
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench-taxonomy-gpu-"))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    per_file = -(-n // n_files)

    def write(path, rows):
        table = pa.table({"emb": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), D)})
        pq.write_table(table, path, row_group_size=BLOCK_ROWS, compression="none",
                       use_dictionary=args.encoding == "dictionary")

    def written_before(files):
        """Whether ``files`` hold the n rows in this encoding already (a run before, same --dir)."""
        if not all(f.exists() for f in files):
            return False
        metadata = [pq.ParquetFile(f).metadata for f in files]
        dictionary = "RLE_DICTIONARY" in metadata[0].row_group(0).column(0).encodings
        return sum(m.num_rows for m in metadata) == n and dictionary == (args.encoding == "dictionary")

    files = [folder / "data" / f"part-{i:05d}.parquet" for i in range(n_files)]
    if written_before(files):
        print(f"reusing the {n_files} parquet files of {n} rows in {folder / 'data'}", flush=True)
    else:
        # the files written side by side (pyarrow lets go of the GIL): one after another, 12.9 GB took
        # 128 s on an H100's host, most of a run's time limit
        with ThreadPoolExecutor(n_files) as pool:
            for w in [pool.submit(write, f, chunk.cpu().numpy())
                      for f, (_, chunk) in zip(files, clustered_chunks(n, chunk=per_file))]:
                w.result()
        print(f"wrote {n} x {D} float16 ({args.encoding}) to {n_files} parquet files in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
    files = [str(f) for f in files]
    data_bytes = n * D * 2
    read_times = []
    for _ in range(2):
        t = time.perf_counter()
        for f in files:
            pq.read_table(f, columns=["emb"], use_threads=True)
        read_times.append(time.perf_counter() - t)
    rate = data_bytes / min(read_times[1:])
    print(f"plain parquet read (pyarrow read_table, warm page cache): {rate / 1e9:.2f} GB/s ({read_times})", flush=True)
    if args.warmup_rows:
        warm_up(next(clustered_chunks(args.warmup_rows, seed=1, chunk=args.warmup_rows))[1].cpu(), args)
    source = VectorSource(str(folder / "data"), cache_bytes=0)
    store = None
    if args.partition_level is not None:  # the partition and the fit's outputs beside the data
        store = str(folder / "store")
        shutil.rmtree(store, ignore_errors=True)
    engine, passes, total = fit(source, args.max_iter, args.partition_level, store)
    summary = summarize(passes, data_bytes, rate)
    case = f"parquet_N{n}_D{D}_fp16" + ("_plain" if args.encoding == "plain" else "")
    if args.partition_level is not None:
        case += f"_subtrees_from_level{args.partition_level}"
    result = {"case": case,
              "impl": "mega_taxonomy", "seconds": total,
              "peak_bytes": torch.cuda.max_memory_allocated(), "data_bytes": data_bytes,
              "parquet_read_bytes_per_second": rate, "parquet_read_seconds": read_times, **summary, "passes": passes,
              "quality": {"levels": engine.stats_["levels"]},
              "stats": {key: engine.stats_.get(key) for key in ("passes", "sample_passes", "subtrees",
                                                                 "largest_partition", "subtree_passes")}}
    if "lloyd_passes" not in summary:
        return result, {"parquet pass / plain parquet read (median fraction of the read rate)":
                        summary["fraction_of_bound_median"]}
    return result, {"parquet lloyd pass / plain parquet read (median fraction of the read rate)":
                    summary["lloyd_fraction_of_bound_median"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["pinned", "parquet"], required=True)
    parser.add_argument("--rows", type=int, default=None, help="default: 10M (pinned), 2M (parquet)")
    parser.add_argument("--max-iter", type=int, default=3)
    parser.add_argument("--warmup-rows", type=int, default=None,
                        help="rows of an untimed first fit that compiles the kernels (0: none; default: "
                             "every row (pinned), 1M (parquet))")
    parser.add_argument("--dir", default=None,
                        help="parquet folder (default: a temporary one); files of the same rows there are reused")
    parser.add_argument("--encoding", choices=["dictionary", "plain"], default="dictionary",
                        help="parquet part: how the float16 values are written")
    parser.add_argument("--partition-level", type=int, default=None,
                        help="parquet part: fit the levels from this one down subtree by subtree")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.rows = args.rows or (10_000_000 if args.part == "pinned" else 2_000_000)
    if args.warmup_rows is None:
        args.warmup_rows = args.rows if args.part == "pinned" else 1 << 20
    result, speedups = (part_pinned if args.part == "pinned" else part_parquet)(args)
    params = {"part": args.part, "rows": args.rows, "sample_rows_per_node": "2 x branching below the root", "dim": D, "dtype": "float16", "branching_factor": BRANCHING,
              "max_iter": args.max_iter, "tol": 0.0, "block_rows": BLOCK_ROWS}
    if args.part == "pinned":
        params["warmup_rows"] = args.warmup_rows
    else:
        params["encoding"] = args.encoding
        params["partition_level"] = args.partition_level
    name = f"taxonomy_gpu_{args.part}"
    if args.part == "parquet":
        name += "_subtrees" if args.partition_level is not None else "_plain" if args.encoding == "plain" else ""
    path = common.write(name, params, [result], speedups, "python " + " ".join(sys.argv),
                        **({"path": Path(args.out)} if args.out else {}))
    print(common.table([result], ["case", "seconds", *(key for key in result if "fraction_of_bound" in key)]))
    print(json.dumps(speedups, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
