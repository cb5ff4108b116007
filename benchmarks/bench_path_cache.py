"""``engine.predict(files, cache=PathCache(...))`` against ``engine.predict(files)`` on the CPU: parquet
shards of ``--rows`` float16 rows of ``--dim`` with an id column, a 3-level taxonomy fitted on them,
then predictions over the same shards (every id seen: all hits) and over shards whose ids are half
new. Seconds per predict, median of ``--repeats``, sides alternated; the paths are checked equal.

    flock /tmp/bench.lock python benchmarks/bench_path_cache.py [--rows 262144 --dim 256 --beam 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
import common

from mega_taxonomy import PathCache, TaxonomyEngine


def write_shards(folder: Path, x: np.ndarray, ids: np.ndarray, n_files: int) -> str:
    folder.mkdir(parents=True)
    for i, rows in enumerate(np.array_split(np.arange(len(x)), n_files)):
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), x.shape[1])
        pq.write_table(pa.table({"emb": vectors, "id": pa.array(ids[rows])}), folder / f"{i:03d}.parquet",
                       use_dictionary=False)
    return str(folder / "*.parquet")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1 << 18)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default=None)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(512, a.dim)) * 3
    x = (centres[rng.integers(0, 512, a.rows)] + rng.normal(size=(a.rows, a.dim))).astype(np.float16)
    ids = np.arange(a.rows, dtype=np.int64) * 7 + 11
    results, speedups = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        seen = write_shards(Path(tmp) / "seen", x, ids, 8)
        half = np.where(np.arange(a.rows) % 2 == 0, ids, ids + 3)  # every other id new
        half_new = write_shards(Path(tmp) / "half_new", x, half, 8)
        engine = TaxonomyEngine(n_levels=3, branching_factor=[32, 8, 8], column="emb", id_column="id",
                                device="cpu", random_state=0).fit(seen)
        want = engine.predict(seen, beam=a.beam)
        for case, files in (("all ids seen", seen), ("half the ids new", half_new)):
            times = {"predict": [], "predict with PathCache": []}
            hits = []
            for r in range(a.repeats):
                cache = PathCache(2 * a.rows)
                engine.predict(seen, beam=a.beam, cache=cache)  # fills it (untimed)
                before = cache.hits
                for name in (list(times) if r % 2 == 0 else list(times)[::-1]):
                    t0 = time.perf_counter()
                    got = engine.predict(files, beam=a.beam, cache=cache if "Cache" in name else None)
                    times[name].append(time.perf_counter() - t0)
                    np.testing.assert_array_equal(got, want)  # the same rows: the same paths
                hits.append(cache.hits - before)
            for name, ts in times.items():
                results.append({"case": case, "impl": name, "seconds": statistics.median(ts),
                                "rows_per_s": a.rows / statistics.median(ts)})
            speedups[case] = statistics.median(times["predict"]) / statistics.median(times["predict with PathCache"])
            results[-1]["hits"] = int(statistics.median(hits))
    print(common.table(results, ["case", "impl", "seconds", "rows_per_s"]))
    params = {"rows": a.rows, "dim": a.dim, "dtype": "float16", "files": 8, "branching_factor": [32, 8, 8],
              "beam": a.beam, "repeats": a.repeats, "device": "cpu",
              "notes": "2-core VM shared with other work: timings are noisy; sides alternate order, medians. "
                       "Each repeat fills a fresh cache with one untimed predict over the fitted shards."}
    command = "flock /tmp/bench.lock python benchmarks/bench_path_cache.py " + " ".join(sys.argv[1:])
    print(common.write("path_cache", params, results, speedups, command.strip(), a.output))


if __name__ == "__main__":
    main()
