"""The fused top-k kernel (``ops/topk/triton.py``, k <= 16) against its torch twin on one GPU:
milliseconds per call (CUDA events, 10 calls after a warm-up) and the agreement of the indices,
TF32 on for both. ``topk(backend="auto")`` picks the kernel on CUDA from these figures.

    python benchmarks/bench_topk_gpu.py [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from mega_taxonomy.ops import topk  # noqa: E402

SHAPES = [  # rows, dim, centroids, k, dtype: k-means, IVF probes, a wide level, a small fan-out
    (1 << 20, 1024, 4096, 8, torch.bfloat16),
    (1 << 20, 128, 1024, 8, torch.float32),
    (100_000, 1024, 65536, 16, torch.bfloat16),
    (1 << 20, 96, 256, 4, torch.float16),
]


def milliseconds(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    g = torch.Generator(device="cuda").manual_seed(0)
    results, speedups = [], {}
    for n, d, n_c, k, dtype in SHAPES:
        x = torch.randn(n, d, device="cuda", generator=g).to(dtype)
        c = torch.randn(n_c, d, device="cuda", generator=g).to(dtype)
        case = f"N{n}_D{d}_C{n_c}_k{k}_{str(dtype).removeprefix('torch.')}"
        kernel = milliseconds(functools.partial(topk, x, c, k, backend="triton"))
        twin = milliseconds(functools.partial(topk, x, c, k, backend="torch"))
        agree = (topk(x, c, k, backend="triton")[1] == topk(x, c, k, backend="torch")[1]).float().mean().item()
        results += [{"case": case, "impl": "topk_triton", "seconds": kernel / 1e3, "index_agreement_with_twin": agree},
                    {"case": case, "impl": "torch twin", "seconds": twin / 1e3}]
        speedups[case] = twin / kernel
        print(common.table(results[-2:], ["case", "impl", "seconds"]), flush=True)
    params = {"shapes": [[n, d, n_c, k, str(dt)] for n, d, n_c, k, dt in SHAPES], "tf32": True, "reps": 10}
    common.write("topk_gpu", params, results, speedups, "python " + " ".join(sys.argv),
                 **({"path": Path(args.out)} if args.out else {}))


if __name__ == "__main__":
    main()
