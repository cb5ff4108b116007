"""The E-step of a diagonal (or spherical) mixture as two dense products per chunk of rows, with
one pass over the chunk's log densities between them: the GPU's fastest path (cuBLAS products).

Per chunk of C rows, shifted by the mixture's mean as in ``triton.py`` (the same a, b, c operands),
with F = [x, x^2, 1] (C, 2D + 1) and W = [a; b] (2D, K):

    L = c + F[:, :2D] @ W      (C, K) log densities: the products x A and x^2 B as one
    lse, R = exp(L - lse)      every row's log-sum-exp, and its responsibilities written over L
    S = R^T @ F                (K, 2D + 1): sum r x, sum r x^2 and sum r, as one product

The two products are exactly the four of an EM iteration's floor (``benchmarks/bench_gmm_gpu.py``),
at torch's precision (TF32 where ``allow_tf32``), and the pass between them reads L once and writes
it once (``_resp_kernel``; ``torch.logsumexp`` and ``exp`` would take about four times the traffic).
The fused kernels of ``triton.py`` recompute L in a second sweep instead of keeping it, three
products instead of two, on smaller tiles than cuBLAS's. On an H200 at N = 1M, D = 128, K = 1,024 in
exact float32 (TF32 off), one chunk per launch took 36.6 ms an E-step against the fused kernels'
66.4 and the floor's 25.7; with TF32 it was bound by the host's launches (31.6 ms against a floor of
7.7), hence many chunks per launch: the chunks' statistics as one batched product.

Memory: a launch's L and F, each at most ``LAUNCH_ELEMENTS`` float32 (256 MiB): bounded,
independent of N. Chunks of at most ``CHUNK_ROWS`` rows are counted from the block's first row, and
their sums (float32 inside a chunk: cuBLAS's accumulation) added in float64, so the bits depend on
the block alone.
"""

from __future__ import annotations

import math

import torch

from ..common import use_triton

# A chunk's sums are float32 over its rows (0.5% off at 5M rows in a test): at most this many
# rows, as the fused kernels' splits of 4,096.
CHUNK_ROWS = 8192
LAUNCH_ELEMENTS = 1 << 26  # of a launch's (rows, K) log densities, and of its (rows, 2D + 1) operand


def diag_operands(weights, means, precisions, shift):
    """(a, b, c) of the module's contract, float32 on the means' device, from float64 parameters:
    ``precisions`` (K, D) are 1 / variances, ``shift`` (D,) the rows' shift."""
    d = means.shape[1]
    m = means - shift
    a = (m * precisions).T.contiguous()
    b = (-0.5 * precisions).T.contiguous()
    c = torch.log(weights) - 0.5 * (d * math.log(2 * math.pi) + (m * m * precisions).sum(1)) + 0.5 * torch.log(
        precisions).sum(1)
    return a.float(), b.float(), c.float()


def chunk_rows(k: int) -> int:
    """Rows per chunk at ``k`` components: a multiple of 256 (whole tiles of the products), fewer
    than ``CHUNK_ROWS`` where a chunk's (rows, K) densities would pass ``LAUNCH_ELEMENTS``."""
    return min(CHUNK_ROWS, max(256, (LAUNCH_ELEMENTS // k) // 256 * 256))


def launch_rows(k: int, d: int) -> int:
    """Rows per launch: whole chunks, as many as ``LAUNCH_ELEMENTS`` allows for L and F."""
    rows = chunk_rows(k)
    return rows * max(1, LAUNCH_ELEMENTS // (rows * max(k, 2 * d + 1)))


def responsibilities_(logp: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Every row's log-sum-exp of ``logp`` (C, K) float32, and ``exp(logp - lse)`` written over
    ``logp``. Returns lse (C,)."""
    if use_triton(logp, backend):
        from .triton import responsibilities_triton_

        return responsibilities_triton_(logp)
    lse = torch.logsumexp(logp, 1)
    logp.sub_(lse[:, None]).exp_()
    return lse


def diag_estep_products(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, shift: torch.Tensor,
                        backend: str = "auto"):
    """(sum of the rows' log-sum-exp, sum r (K,), sum r (x - shift) (K, D), sum r (x - shift)^2
    (K, D)), float64, of the rows ``x`` (n, D) under the operands of ``triton.diag_operands``
    (float32: a, b (D, K), c (K,)) and ``shift`` (D,) float32."""
    n, d = x.shape
    k = c.shape[0]
    w = torch.cat([a, b])  # (2D, K)
    rows = chunk_rows(k)
    total = torch.zeros(2 * d + 1, k, dtype=torch.float64, device=x.device)
    log_likelihood = torch.zeros((), dtype=torch.float64, device=x.device)
    for lo in range(0, n, launch_rows(k, d)):
        xc = x[lo:lo + launch_rows(k, d)].float() - shift
        f = torch.cat([xc, xc * xc, xc.new_ones(len(xc), 1)], 1)  # (m, 2D + 1)
        logp = torch.addmm(c, f[:, :2 * d], w)
        lse = responsibilities_(logp, backend)
        log_likelihood += lse.double().sum()
        whole = len(xc) // rows * rows
        if whole:  # (2D + 1, K) per chunk, in one batched product: operands in the layout cuBLAS takes as is
            per_chunk = torch.bmm(f[:whole].view(-1, rows, 2 * d + 1).transpose(1, 2), logp[:whole].view(-1, rows, k))
            total += per_chunk.double().sum(0)
        if whole < len(xc):
            total += (f[whole:].T @ logp[whole:]).double()
    return log_likelihood, total[2 * d], total[:d].T, total[d:2 * d].T
