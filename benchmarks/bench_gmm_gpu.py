"""Gaussian mixtures on one GPU: our ``GaussianMixture`` (the fused E-step of ``ops/gmm_estep``)
against torchgmm 0.1.4 and a plain chunked torch E+M step, side by side in one run, on the same
data and the same initial means; then a streaming fit of 100M rows from host memory.

Cases: diag N=1M, D=128, K=1024 float32, and full D=64, K=256 float32; each with TF32 off (torch's
default) and on, set for every side (``torch.backends.cuda.matmul.allow_tf32``). Per side:
``estep_ms`` (one E-step, CUDA-event median), ``iteration_ms`` (one EM iteration, from wall-clock
calls of M and 1 iterations: (median of 3 of M - median of 3 of 1) / (M - 1)), ``peak_bytes``,
the final log-likelihood per row and whether every parameter stayed finite; per case the floor:
the four products of an EM iteration (x A, x^2 B, r^T x, r^T x^2) timed as torch matmuls at the
same precision. The float64 reference is our own E-step in float64 on the same parameters: ours
also times each float32 E-step method (``estep_ms_products``, ``estep_ms_fused``) and states its
log-likelihood's distance from the float64 one on the fit's final parameters.

Streaming: 100M x 128 float16 rows in pinned host memory, K=256 diag, TF32 off and on: fits of 1
and 3 EM iterations after an untimed fit of the first 1M rows, their difference halved; rows/s of a
pass against the host-to-device copy rate of the same bytes (pinned, measured here), and the
3-iteration fit's lower bound. ``--stream-only`` writes it alone, to ``gmm_gpu_stream.json``.

Peers' wheels (pure Python): torchgmm 0.1.4 with pytorch-lightning, lightning-utilities,
torchmetrics, anndata, session-info (and what they need that the machine lacks).

    python benchmarks/bench_gmm_gpu.py [--case I ...] [--iters M] [--no-stream | --stream-only] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from gpu_timing import events_ms, peak, per_iteration, profile, wall  # noqa: E402

from mega_taxonomy import GaussianMixture  # noqa: E402
from mega_taxonomy.ops.gmm_estep import gmm_estep  # noqa: E402

M1 = 1 << 20
CASES = [(M1, 128, 1024, "diag", False), (M1, 128, 1024, "diag", True), (M1, 64, 256, "full", False),
         (M1, 64, 256, "full", True)]


def data(n, d, k, seed=0):
    """Rows from a mixture of k Gaussians of random scales, and k initial means from the rows."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    centres = torch.randn(k, d, device="cuda", generator=g) * 4
    scales = torch.rand(k, 1, device="cuda", generator=g) * 1.5 + 0.5
    comp = torch.randint(0, k, (n,), device="cuda", generator=g)
    x = centres[comp] + torch.randn(n, d, device="cuda", generator=g) * scales[comp]
    return x, x[torch.randperm(n, device="cuda", generator=g)[:k]].clone()


def start(x, means0, ctype):
    """scikit-learn's parameters of a start from the means alone: uniform weights, the rows' variance."""
    k, d = means0.shape
    var = x.double().var(0).mean().item()
    weights = np.full(k, 1.0 / k)
    if ctype == "diag":
        precisions = np.full((k, d), 1.0 / var)
    else:
        precisions = np.repeat(np.eye(d)[None] / var, k, 0)
    return dict(weights_init=weights, means_init=means0.double().cpu().numpy(), precisions_init=precisions)


def products_floor(x, k):
    """ms of the four products of an EM iteration at the current precision (diag's shapes)."""
    n, d = x.shape
    a = torch.randn(d, k, device="cuda")
    chunk = min(n, (1 << 30) // (4 * k))  # (chunk, K) float32 at most 1 GiB

    def four():
        for lo in range(0, n, chunk):
            xc = x[lo:lo + chunk]
            r = xc @ a
            r2 = (xc * xc) @ a
            _ = r.T @ xc
            _ = r2.T @ (xc * xc)

    return events_ms(four)


def torch_chunked_em(x, weights, means, variances, iters, chunk=1 << 16):
    """A plain diag EM in torch: per chunk of rows, log densities (two products), logsumexp,
    responsibilities, and their products with the rows; M-step in float32."""
    for _ in range(iters):
        prec = 1.0 / variances
        a, b = (means * prec).T, (-0.5 * prec).T
        c = torch.log(weights) - 0.5 * (x.shape[1] * math.log(2 * math.pi) + (means * means * prec).sum(1)) \
            + 0.5 * torch.log(prec).sum(1)
        nk = torch.zeros_like(weights)
        sx = torch.zeros_like(means)
        sx2 = torch.zeros_like(means)
        ll = 0.0
        for lo in range(0, x.shape[0], chunk):
            xc = x[lo:lo + chunk]
            lp = c + xc @ a + (xc * xc) @ b
            lse = torch.logsumexp(lp, 1)
            r = torch.exp(lp - lse[:, None])
            nk += r.sum(0)
            sx += r.T @ xc
            sx2 += r.T @ (xc * xc)
            ll = ll + lse.sum()
        weights = nk / x.shape[0]
        means = sx / nk[:, None]
        variances = sx2 / nk[:, None] - means ** 2 + 1e-6
    return weights, means, variances, float(ll) / x.shape[0]


def ours(case, x, means0, ctype, iters, profiled=False):
    kw = start(x, means0, ctype)
    fit = lambda m: GaussianMixture(means0.shape[0], covariance_type=ctype, max_iter=m, tol=0, device="cuda",  # noqa: E731
                                    **kw).fit(x)
    fit(1)
    per = per_iteration(fit, iters)[0]
    pk, gm = peak(lambda: fit(iters))
    w, mu, pc = (torch.as_tensor(a, device="cuda") for a in (gm.weights_, gm.means_, gm.precisions_cholesky_))
    # the E-step of the public fit (its default method) and, on the same final parameters, each
    # float32 method's log-likelihood against the float64 E-step's
    estep = events_ms(lambda: gmm_estep(x, w, mu, pc, ctype))
    if profiled:
        profile(f"{case}: a fit of one iteration", lambda: fit(1), rows=14)
    exact = gmm_estep(x.double(), w, mu, pc, ctype).log_likelihood.item() / len(x)
    row = {"case": case, "impl": "mega_taxonomy GaussianMixture", "estep_ms": estep, "iteration_ms": per,
           "peak_bytes": pk, "data_bytes": x.nbytes, "log_likelihood": gm.lower_bound_,
           "log_likelihood_float64": exact,
           "finite": all(np.isfinite(a).all() for a in (gm.weights_, gm.means_, gm.covariances_))}
    if ctype in ("diag", "spherical"):
        for method in ("products", "fused"):
            ll = gmm_estep(x, w, mu, pc, ctype, method=method).log_likelihood.item() / len(x)
            row[f"estep_ms_{method}"] = events_ms(lambda method=method: gmm_estep(x, w, mu, pc, ctype, method=method))
            row[f"relative_to_float64_{method}"] = abs(ll - exact) / abs(exact)
    return row


def torchgmm_row(case, x, means0, ctype, iters):
    try:
        from torchgmm.bayes import GaussianMixture as TorchGMM
    except ImportError as exc:
        return {"case": case, "impl": "torchgmm", "failed": f"not installed: {exc}"}
    k = means0.shape[0]

    def fit(m):
        return TorchGMM(k, covariance_type=ctype, init_means=means0, convergence_tolerance=-1.0,
                        trainer_params=dict(accelerator="gpu", devices=1, max_epochs=m, enable_progress_bar=False,
                                            enable_model_summary=False)).fit(x)

    try:
        fit(1)
        per = per_iteration(fit, iters)[0]
        pk, model = peak(lambda: fit(iters))
        params = [p.detach() for p in model.model_.parameters()] + [b for b in model.model_.buffers()]
        finite = all(bool(torch.isfinite(p).all()) for p in params if p.is_floating_point())
        return {"case": case, "impl": "torchgmm 0.1.4", "iteration_ms": per, "peak_bytes": pk,
                "log_likelihood": -float(model.nll_), "finite": finite}
    except Exception as exc:  # recorded: its failures are part of the comparison
        return {"case": case, "impl": "torchgmm 0.1.4", "failed": f"{type(exc).__name__}: {str(exc)[:300]}"}


def measure(n, d, k, ctype, tf32, iters, profiled=False):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    case = f"{ctype}_N{n}_D{d}_K{k}_" + ("tf32" if tf32 else "fp32")
    x, means0 = data(n, d, k)
    rows = [ours(case, x, means0, ctype, iters, profiled), torchgmm_row(case, x, means0, ctype, iters)]
    if ctype == "diag":
        w0 = torch.full((k,), 1.0 / k, device="cuda")
        v0 = torch.full((k, d), x.var(0).mean().item(), device="cuda")
        fit = lambda m: torch_chunked_em(x, w0, means0, v0, m)  # noqa: E731
        per = per_iteration(fit, iters)[0]
        pk, out = peak(lambda: fit(iters))
        rows.append({"case": case, "impl": "torch chunked E+M", "iteration_ms": per, "peak_bytes": pk,
                     "log_likelihood": out[3], "finite": bool(all(torch.isfinite(t).all() for t in out[:3]))})
    floor = products_floor(x, k) if ctype == "diag" else None
    summary = {"products_floor_ms": floor}
    ours_ms = rows[0]["iteration_ms"]
    if floor and ours_ms:
        summary["iteration_over_floor"] = ours_ms / floor
    for r in rows[1:]:
        if ours_ms and r.get("iteration_ms"):
            summary[f"speedup_vs_{r['impl']}"] = r["iteration_ms"] / ours_ms
    return rows, summary


def streaming(n=100 * M1, d=128, k=256):
    """rows/s of a pass over host rows (float16, in pinned memory, as the pinned taxonomy benchmark's:
    pageable rows are bound by the host's own copy into pinned buffers) against the pinned
    host-to-device copy rate; a row with TF32 off (torch's default) and one with it on."""
    host = torch.empty(n, d, dtype=torch.float16, pin_memory=True)
    g = torch.Generator(device="cuda").manual_seed(1)
    centres = torch.randn(k, d, device="cuda", generator=g) * 4
    for lo in range(0, n, 1 << 22):  # made on the GPU: 12.8e9 normal draws are slow on the host
        hi = min(n, lo + (1 << 22))
        host[lo:hi].copy_(centres[torch.randint(0, k, (hi - lo,), device="cuda", generator=g)]
                          + torch.randn(hi - lo, d, device="cuda", generator=g))
    pinned = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty_like(pinned, device="cuda")
    copy_s = sorted(wall(lambda: dev.copy_(pinned, non_blocking=True))[0] for _ in range(3))[1]
    rate = pinned.nbytes / copy_s
    kw = start(host[:M1].cuda().float(), centres, "diag")

    def fit(rows, m):
        return GaussianMixture(k, covariance_type="diag", max_iter=m, tol=0, device="cuda", **kw).fit(rows)

    out = []
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        fit(host[:M1], 1)  # compiles the kernels: the timed fits differ by their two passes only
        (t1, _), (t3, three) = wall(lambda: fit(host, 1)), wall(lambda: fit(host, 3))
        per_pass = (t3 - t1) / 2
        out.append({"rows": n, "dim": d, "k": k, "dtype": "float16", "memory": "pinned", "tf32": tf32,
                    "fit_seconds_1_and_3_iterations": [t1, t3], "seconds_per_pass": per_pass,
                    "rows_per_second": n / per_pass, "h2d_bytes_per_second": rate,
                    "copy_rate_fraction": host.nbytes / rate / per_pass, "lower_bound": float(three.lower_bound_)})
        print(out[-1], flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=int, action="append", default=None, help="index into CASES")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--stream-only", action="store_true",
                        help="only the streaming fit (results in gmm_gpu_stream.json)")
    parser.add_argument("--profile", action="store_true", help="print where a fit of one iteration spends its time")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results, speedups, summaries = [], {}, {}
    params = {"cases": CASES, "iters": args.iters, "per_case": summaries, "streaming": None}

    def write():  # after every case, so that a run stopped part-way keeps what it finished
        name = "gmm_gpu_stream" if args.stream_only else "gmm_gpu"  # a file of its own: gmm_gpu.json stays
        return common.write(name, params, results, speedups, "python " + " ".join(sys.argv),
                            **({"path": Path(args.out)} if args.out else {}))

    cases = [] if args.stream_only else CASES if args.case is None else [CASES[i] for i in args.case]
    for n, d, k, ctype, tf32 in cases:
        rows, summary = measure(n, d, k, ctype, tf32, args.iters, args.profile)
        results += rows
        summaries[rows[0]["case"]] = summary
        speedups.update({f"{rows[0]['case']} {key}": v for key, v in summary.items() if key.startswith("speedup")})
        print(common.table(rows, ["case", "impl", "estep_ms", "iteration_ms", "peak_bytes", "log_likelihood",
                                  "finite"]), flush=True)
        print(summary, flush=True)
        torch.cuda.empty_cache()
        write()
    if not args.no_stream:
        params["streaming"] = streaming()
        print(params["streaming"], flush=True)
    path = write()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
