"""IVFIndex on a GPU (H200): 10M x 128 of the bench_ivf mixture, batches of 10k queries, against
torch brute force (exact top-k) and against the same index searched on the CPU.

Data: ``bench_ivf.mixture(--n, --queries)`` (4,096 Gaussians, Zipf(1.1) weights, scales in
[0.5, 2], seed 0), float32. Truth: torch brute force on the GPU (``|q|^2 - 2 q.x + |x|^2`` in
float32 with TF32 off, then ``topk``, over row chunks) - also the ``brute-force`` side's timing.
Index: ``IVFIndex(--nlist, quantizer=q, assignment=a, device="cuda")`` for k-means single and
GMM multi, trained on ``--train`` sampled rows. Search: batches of ``--batch`` queries from host
memory (``--from device``: already on the GPU), nprobe 1..512 (``--nprobes``), qps = queries / seconds (best of
``--repeats``, ``torch.cuda.synchronize`` before the clock stops); the same index is then
searched with ``device="cpu"`` (all cores) at the nprobe that reaches recall 0.90 on the GPU.
Each curve is interpolated at recall 0.90 as in bench_ivf.

    python benchmarks/bench_ivf_gpu.py                 # on the H200: 10M x 128
    python benchmarks/bench_ivf_gpu.py --smoke         # anywhere: 50k x 128, CPU if no GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from bench_ivf import NPROBES, STOP, at_recall, mixture
from bench_taxonomy_search import recall_at_k

K = 10
PRODUCT_ELEMENTS = 1 << 30  # of a chunk of the brute force's products


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def brute_force(x, q, batch, device):
    """Exact top-k of every query (float32 products, TF32 off), and the seconds it took."""
    torch.backends.cuda.matmul.allow_tf32 = False
    xs = torch.as_tensor(x, device=device)
    x_sq = (xs * xs).sum(1)
    out = []
    sync()
    t = time.perf_counter()
    for lo in range(0, len(q), batch):
        qs = torch.as_tensor(q[lo:lo + batch], device=device)
        best_d = best_i = None
        chunk = max(1, PRODUCT_ELEMENTS // len(qs))  # (queries, chunk) products: 4 GiB, on an H100 too
        for c0 in range(0, len(xs), chunk):
            d = x_sq[c0:c0 + chunk] - 2 * qs @ xs[c0:c0 + chunk].T
            dd, ii = d.topk(K, dim=1, largest=False)
            ii += c0
            if best_d is not None:
                dd, pick = torch.cat([best_d, dd], 1).topk(K, dim=1, largest=False)
                ii = torch.cat([best_i, ii], 1).gather(1, pick)
            best_d, best_i = dd, ii
        out.append(best_i)
    sync()
    return torch.cat(out).cpu().numpy(), time.perf_counter() - t


def timed_search(index, q, nprobe, batch, device, repeats):
    best, found = float("inf"), None
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        found = [index.search(torch.as_tensor(q[lo:lo + batch], device=device) if device else q[lo:lo + batch], K,
                              nprobe)[1] for lo in range(0, len(q), batch)]
        sync()
        best = min(best, time.perf_counter() - t)
    ids = np.concatenate([f.cpu().numpy() if isinstance(f, torch.Tensor) else f for f in found])
    return ids, best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--train", type=int, default=1_048_576)
    p.add_argument("--from", dest="source", choices=["host", "device"], default="host")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nprobes", default=",".join(map(str, NPROBES + (512,))),
                   help="nprobe values swept (this mixture needs more than 256 lists of 4,096 for recall 0.90)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None, help="where the JSON goes (default benchmarks/results/ivf_gpu.json)")
    args = p.parse_args()
    from mega_taxonomy.index import IVFIndex

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, nlist, train = (50_000, 256, 50_000) if args.smoke else (args.n, args.nlist, args.train)
    x, q = mixture(n, 1000 if args.smoke else args.queries)
    truth, brute_s = brute_force(x, q, args.batch, device)
    results = [{"case": "brute-force", "impl": f"torch {device}", "seconds": brute_s, "qps": len(q) / brute_s,
                "recall_at_10": 1.0}]
    sample = x[np.sort(np.random.default_rng(0).choice(n, min(train, n), replace=False))]
    for name, kw in (("kmeans-single", {}), ("gmm-multi", {"quantizer": "gmm", "assignment": "multi"})):
        t = time.perf_counter()
        index = IVFIndex(nlist, device=device, max_iter=10, gmm_iter=5, **kw).train(sample).add(x)
        results.append({"case": "build", "impl": name, "seconds": time.perf_counter() - t})
        rows = []
        for nprobe in (int(v) for v in args.nprobes.split(",")):
            ids, s = timed_search(index, q, nprobe, args.batch, device if args.source == "device" else None,
                                  args.repeats)
            row = {"case": "search", "impl": f"{name} {device}", "nprobe": nprobe, "seconds": s, "qps": len(q) / s,
                   "recall_at_10": recall_at_k(ids, truth), "distances": 0.0}
            rows.append(row)
            print(common.table([row], ["impl", "nprobe", "recall_at_10", "qps"]), flush=True)
            if row["recall_at_10"] >= STOP:
                break
        results += rows
        at = at_recall(rows)
        if at and device == "cuda":  # the same index on the host, around the GPU's nprobe at 0.90
            cpu = IVFIndex.load(save_to_temp(index), device="cpu")
            for nprobe in sorted({max(1, int(at["nprobe"])), int(np.ceil(at["nprobe"]))}):
                ids, s = timed_search(cpu, q, nprobe, args.batch, None, 1)
                results.append({"case": "search", "impl": f"{name} cpu", "nprobe": nprobe, "seconds": s,
                                "qps": len(q) / s, "recall_at_10": recall_at_k(ids, truth), "distances": 0.0})
        write(results, args, n, nlist, len(sample))


def write(results, args, n, nlist, train):
    """The JSON so far: written after each quantizer, so that a run stopped part-way keeps what it finished."""
    curves = {}
    for r in results:
        if r["case"] == "search":
            curves.setdefault(r["impl"], []).append(r)
    at = {impl: at_recall(rows) for impl, rows in curves.items()}
    speedups = {f"{impl} qps@0.9 / brute force": v["qps"] / results[0]["qps"] for impl, v in at.items() if v}
    params = {"n": n, "dim": 128, "queries": args.queries if not args.smoke else 1000, "batch": args.batch,
              "nlist": nlist, "train": train, "from": args.source, "smoke": args.smoke, "at_recall_0.9": at}
    path = args.out or (Path(tempfile.gettempdir()) / "ivf_gpu_smoke.json" if args.smoke else None)
    path = common.write("ivf_gpu", params, results, speedups, "python benchmarks/bench_ivf_gpu.py " +
                        " ".join(sys.argv[1:]), path=path)
    print(speedups, f"wrote {path}", flush=True)


def save_to_temp(index):
    folder = tempfile.mkdtemp()
    index.save(folder)
    return folder


if __name__ == "__main__":
    main()
