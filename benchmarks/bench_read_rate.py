"""The rate at which a host reads and decodes plain float16 parquet into blocks: the constant the
200B plan rests on (``docs/scaling.md``: 2 GB/s a GPU is a parameter of the cost model).

``--files`` parquet files of ``--file-rows`` x ``--dim`` float16 vectors (a fixed_size_list
column, written plainly: ``use_dictionary=False``) are written to ``--folder``, then read back
through ``VectorSource.blocks`` (the path every pass takes: pyarrow's reader, our list decoding and
validation, no block cache) by 1, 2, 4, ... ``--threads`` threads at once, each over its own run
of blocks; bytes of vectors decoded per second, all threads together, best of ``--repeats``.
The files were just written, so they come from the page cache: a local NVMe's best case, not
object storage.

    python benchmarks/bench_read_rate.py [--files 4 --file-rows 262144 --dim 1024 --threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mega_taxonomy.io import VectorSource


def write_files(folder: Path, files: int, rows: int, dim: int) -> None:
    # one table written to every file: drawing 2 GB of normal values a file took most of the
    # run on a GPU machine's host, and the files' bytes, not their values, make the read rate
    x = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
    table = pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)})
    for i in range(files):
        pq.write_table(table, folder / f"part-{i:05d}.parquet", use_dictionary=False, row_group_size=65_536)
    print(f"wrote {files} files of {rows} x {dim} float16", flush=True)


def read_rate(folder: Path, threads: int) -> tuple[float, int]:
    """(seconds, bytes) of every block read once by ``threads`` threads, each over its own run."""
    source = VectorSource(str(folder), cache_bytes=0)
    cuts = np.linspace(0, source.n_blocks, threads + 1).astype(int)
    done = [0] * threads

    def read(t):
        for block in source.blocks(int(cuts[t]), int(cuts[t + 1])):
            done[t] += block.vectors.nbytes

    workers = [threading.Thread(target=read, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start, sum(done)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--file-rows", type=int, default=1 << 18)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2, help="the most threads tried (1, 2, 4, ... up to it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    counts = sorted({min(2**i, args.threads) for i in range(args.threads.bit_length() + 1)})
    results = []
    with tempfile.TemporaryDirectory(dir=args.folder) as where:
        folder = Path(where)
        write_files(folder, args.files, args.file_rows, args.dim)
        read_rate(folder, 1)  # the first read: files opened, numba's decoding compiled
        for threads in counts:
            best, total = min(read_rate(folder, threads) for _ in range(args.repeats))
            results.append({"case": f"{threads} threads", "impl": "VectorSource.blocks", "threads": threads,
                            "seconds": best, "bytes": total, "gb_per_s": total / best / 1e9})
            print(common.table(results[-1:], ["case", "seconds", "bytes", "gb_per_s"]), flush=True)
    params = {"files": args.files, "file_rows": args.file_rows, "dim": args.dim, "dtype": "float16",
              "encoding": "plain (use_dictionary=False)", "row_group_rows": 65_536, "cache": "page cache (just written)"}
    command = "python benchmarks/bench_read_rate.py " + " ".join(sys.argv[1:])
    print(common.write("read_rate", params, results, {}, command.strip(), path=args.out))


if __name__ == "__main__":
    main()
