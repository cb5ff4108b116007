"""The E-step as two dense products per launch of rows, with one pass over the rows' log densities
between them: the GPU's fastest path (cuBLAS products), and the CPU's for full and tied mixtures.

A diagonal (or spherical) mixture, in float32: rows shifted by the mixture's mean as in
``triton.py`` (the same a, b, c operands), F = [x, x^2, 1] (rows, 2D + 1, then zero columns up to
a multiple of 4) and W = [a; b] (2D, K):

    L = c + F[:, :2D] @ W      (rows, K) log densities: the products x A and x^2 B as one
    lse, R = exp(L - lse)      every row's log-sum-exp, and its responsibilities written over L
    S = R^T @ F                per chunk (K, 2D + 1): sum r x, sum r x^2 and sum r, as one product

On CUDA the responsibilities' pass sums R's columns as it writes them (by groups of
``RESP_GROUP`` rows), and the product leaves F's column of ones out: at D = 128 a product of 256
columns, which cuBLAS tiles whole, where 260 took 14.0 ms an E-step against 10.4 (exact float32,
N = 1M, K = 1,024, an H100).

Full and tied mixtures take the same two products in float64 with other columns of F (the upper
triangle of x x^T, or the shared precision's quadratic term): :func:`full_estep_products`,
:func:`tied_estep_products`.

The two products are exactly the four of an EM iteration's floor (``benchmarks/bench_gmm_gpu.py``),
at torch's precision (TF32 where ``allow_tf32``), and the pass between them reads L once and writes
it once (``_resp_kernel``; ``torch.logsumexp`` and ``exp`` would take about four times the traffic).
The fused kernels of ``triton.py`` recompute L in a second sweep instead of keeping it, three
products instead of two, on smaller tiles than cuBLAS's. On an H200 at N = 1M, D = 128, K = 1,024 in
exact float32 (TF32 off), one chunk per launch took 36.6 ms an E-step against the fused kernels'
66.4 and the floor's 25.7; with TF32 it was bound by the host's launches (31.6 ms against a floor of
7.7), hence many chunks per launch: the chunks' statistics as one batched product.

Memory: a launch's L and F, each at most ``LAUNCH_ELEMENTS`` elements (256 MiB in float32, 512 in
float64): bounded, independent of N. Chunks of at most ``CHUNK_ROWS`` rows are counted from the
block's first row, and their sums (in the products' precision inside a chunk) added in float64, so
the bits depend on the block alone.

A diagonal mixture's blocks go several to a launch where whole blocks fit one
(:func:`estep_products_blocks`): F, the responsibilities and the log-sum-exp's sums for all of
them, the products still one block at a time (a product's bits may depend on its number of rows),
so that a block's statistics are the same bits alone or among others. A pass over rows on a GPU
then costs the host a few launches a block instead of about thirty: streamed from pinned memory
on an H100 (K = 256, D = 128), 1.15 ms of the host's time a block of 65,536 rows bound the pass,
above the GPU's 0.74 ms.
"""

from __future__ import annotations

import math

import torch

from ..common import use_triton

# A chunk's sums are float32 over its rows (0.5% off at 5M rows in a test): at most this many
# rows, as the fused kernels' splits of 4,096.
CHUNK_ROWS = 8192
LAUNCH_ELEMENTS = 1 << 26  # of a launch's (rows, K) log densities, and of its (rows, 2D + 1) operand
# Rows per column sum of the responsibilities' pass (its sum r): a block of whole chunks is whole groups.
RESP_GROUP = 64


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


def chunk_rows(k: int, width: int = 0) -> int:
    """Rows per chunk at ``k`` components: a multiple of 256 (whole tiles of the products), fewer
    than ``CHUNK_ROWS`` where a chunk's L (rows, K) or F (rows, ``width``) would pass
    ``LAUNCH_ELEMENTS``."""
    return min(CHUNK_ROWS, max(256, (LAUNCH_ELEMENTS // max(k, width)) // 256 * 256))


def launch_rows(k: int, width: int) -> int:
    """Rows per launch: whole chunks, as many as ``LAUNCH_ELEMENTS`` allows for L and F."""
    rows = chunk_rows(k, width)
    return rows * max(1, LAUNCH_ELEMENTS // (rows * max(k, width)))


def gives_group_sums(logp: torch.Tensor, backend: str = "auto") -> bool:
    """Whether :func:`responsibilities_` of ``logp`` gives the responsibilities' group sums."""
    if logp.dtype == torch.float32 and use_triton(logp, backend):
        from .triton import gives_group_sums as kernel_gives

        return kernel_gives(logp.shape[1])
    return False


def responsibilities_(logp: torch.Tensor, backend: str = "auto", lse: torch.Tensor | None = None,
                      sums: torch.Tensor | None = None):
    """Every row's log-sum-exp of ``logp`` (C, K), and ``exp(logp - lse)`` written over ``logp``.
    Returns (lse (C,), sums): where :func:`gives_group_sums`, the Triton pass for float32 on CUDA
    (one read and one write) also gives the responsibilities' column sums of every
    ``RESP_GROUP`` rows, float32 (ceil(C / RESP_GROUP), K); elsewhere ``sums`` is None, and the
    product with F's column of ones sums r. Into ``lse`` and ``sums`` where given."""
    if logp.dtype == torch.float32 and use_triton(logp, backend):
        from .triton import responsibilities_triton_

        return responsibilities_triton_(logp, RESP_GROUP, lse, sums)
    lse = torch.logsumexp(logp, 1, out=lse)
    logp.sub_(lse[:, None]).exp_()
    return lse, None


def estep_products(x: torch.Tensor, features, w: torch.Tensor, c: torch.Tensor, backend: str = "auto"):
    """(sum of the rows' log-sum-exp, S (P + 1, K)), float64, of the rows ``x`` (n, D): per launch,
    F = ``features(rows)`` (m, P + 1 + pad) whose column P is ones (and any after it zeros),
    L = c + F[:, :P] @ w (w (P, K), c (K,)), the responsibilities over L, and S = sum over chunks
    of F^T R, every chunk's sums in the products' precision, added in float64. Row P of S (sum r)
    comes from the responsibilities' pass where it gives it (its groups' sums added in float64),
    and the product then leaves the ones out."""
    n = len(x)
    k, p = len(c), w.shape[0]
    rows, per_launch = chunk_rows(k, p + 1), launch_rows(k, p + 1)
    total = torch.zeros(p + 1, k, dtype=torch.float64, device=x.device)
    log_likelihood = torch.zeros((), dtype=torch.float64, device=x.device)
    for lo in range(0, n, per_launch):
        f = features(x[lo:lo + per_launch])
        logp = torch.addmm(c, f[:, :p], w)
        lse, r_sums = responsibilities_(logp, backend)
        log_likelihood += lse.double().sum()
        if r_sums is not None:
            total[p] += r_sums.double().sum(0)
        q = p + (r_sums is None)  # F's columns in the product
        whole = len(f) // rows * rows
        if whole:  # per chunk, in one batched product: F^T as a view of F (rows of F.shape[1], as cuBLAS takes it)
            per_chunk = torch.bmm(f[:whole].view(-1, rows, f.shape[1]).transpose(1, 2)[:, :q],
                                  logp[:whole].view(-1, rows, k))
            total[:q] += per_chunk.double().sum(0)
        if whole < len(f):
            total[:q] += (f[whole:, :q].T @ logp[whole:]).double()
    return log_likelihood, total


def block_sums(values: torch.Tensor, m: int, backend: str = "auto", out: torch.Tensor | None = None) -> torch.Tensor:
    """float64 sums of ``values`` (B * m,) or, by column, (B * m, K) by consecutive blocks of ``m``
    rows (into ``out``, (B,) or (B, K)), each in a fixed order whatever the other blocks (a
    reduction of torch's may split a row differently for another number of rows): lanes
    (``triton.block_lanes``), each adding every lane-th row in turn, then a fixed tree over the
    lanes; in one Triton launch on CUDA."""
    if out is None:
        out = torch.empty(len(values) // m, *values.shape[1:], dtype=torch.float64, device=values.device)
    if use_triton(values, backend):
        from .triton import block_sums_triton

        return block_sums_triton(values, m, out)
    from .triton import block_lanes

    columns = values.view(len(values) // m, m, -1)
    lanes_per_tile = block_lanes(columns.shape[2])[0]
    tiles = -(-m // lanes_per_tile)
    lanes = torch.zeros(len(columns), tiles * lanes_per_tile, columns.shape[2], dtype=torch.float64,
                        device=values.device)
    lanes[:, :m] = columns
    lanes = lanes.view(len(lanes), tiles, lanes_per_tile, -1)
    acc = lanes[:, 0].clone()
    for t in range(1, tiles):
        acc += lanes[:, t]
    width = lanes_per_tile
    while width > 1:  # pairs of halves, down to one lane
        width //= 2
        acc = acc[:, :width] + acc[:, width:2 * width]
    out.copy_(acc[:, 0].view(out.shape))
    return out


def fold_chunks(per_chunk: torch.Tensor, rows: int, out: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Each block's chunk sums ``per_chunk[b, :, :rows]`` (B, chunks, >= rows, K) added in chunk
    order in float64, into ``out`` (B, rows, K; rows contiguous, blocks at any stride): in one
    Triton launch on CUDA."""
    if use_triton(per_chunk, backend):
        from .triton import fold_chunks_triton

        return fold_chunks_triton(per_chunk, rows, out)
    sums = per_chunk[:, :, :rows].double()
    out.copy_(sums[:, 0])
    for chunk in range(1, sums.shape[1]):
        out += sums[:, chunk]
    return out


def grouped_blocks(m: int, k: int, width: int) -> int:
    """Blocks of ``m`` rows that one launch takes whole (at ``k`` components and F of ``width``
    columns): 0 where a block is not whole chunks within a launch's bound (then each block goes by
    :func:`estep_products`, launches within it)."""
    rows, per_launch = chunk_rows(k, width), launch_rows(k, width)
    return per_launch // m if 0 < m <= per_launch and m % rows == 0 else 0


def estep_products_blocks(x: torch.Tensor, features, w: torch.Tensor, c: torch.Tensor, m: int, backend: str = "auto"):
    """:func:`estep_products` of each block of ``m`` rows of ``x`` (whole chunks, as many as
    :func:`grouped_blocks` allows per launch): (sums of lse (B,), S (B, P + 1, K)), float64. A
    launch takes several blocks: F and the responsibilities for all of them, the two products per
    block (the shapes of a block alone: a product's bits may depend on how many rows it has), a
    block's chunk sums added in chunk order; the sums of lse and of r of every block after the
    launches (:func:`block_sums`). The same bits for a block whatever
    else the launch holds: the host's launches counted per launch, not per block (an H100's
    streamed pass spent 1.15 ms of host time a block of 65,536 rows against 0.74 ms of kernels)."""
    n = len(x)
    k, p = len(c), w.shape[0]
    rows = chunk_rows(k, p + 1)
    chunks, group = m // rows, grouped_blocks(m, k, p + 1)
    blocks = n // m
    log_likelihood = torch.empty(blocks, dtype=torch.float64, device=x.device)
    total = torch.empty(blocks, p + 1, k, dtype=torch.float64, device=x.device)
    # every launch's lse and sums of r held, and added up by block in two launches after them: a
    # block's thousand group sums are a long walk, which a launch per block walked with the GPU idle
    lse = torch.empty(n // m * m, dtype=torch.float32, device=x.device)
    r_groups = None
    for b0 in range(0, blocks, group):
        g = min(group, blocks - b0)
        f = features(x[b0 * m:(b0 + g) * m])
        logp = torch.empty(g * m, k, dtype=f.dtype, device=f.device)
        for j in range(g):
            torch.addmm(c, f[j * m:(j + 1) * m, :p], w, out=logp[j * m:(j + 1) * m])
        if r_groups is None and gives_group_sums(logp, backend):  # a block is whole groups
            r_groups = torch.empty(blocks * (m // RESP_GROUP), k, dtype=torch.float32, device=x.device)
        at = slice(b0 * (m // RESP_GROUP), (b0 + g) * (m // RESP_GROUP))
        responsibilities_(logp, backend, lse[b0 * m:(b0 + g) * m], None if r_groups is None else r_groups[at])
        q = p + (r_groups is None)  # F's columns in the product
        per_chunk = torch.empty(g, chunks, q, k, dtype=f.dtype, device=f.device)
        for j in range(g):  # F^T as a view of F (rows of F.shape[1], as cuBLAS takes it)
            torch.bmm(f[j * m:(j + 1) * m].view(chunks, rows, f.shape[1]).transpose(1, 2)[:, :q],
                      logp[j * m:(j + 1) * m].view(chunks, rows, k), out=per_chunk[j])
        fold_chunks(per_chunk, q, total[b0:b0 + g], backend)
    block_sums(lse, m, backend, out=log_likelihood)
    if r_groups is not None:
        block_sums(r_groups, m // RESP_GROUP, backend, out=total[:, p])
    return log_likelihood, total


def diag_features(d: int, shift: torch.Tensor, backend: str = "auto"):
    """F = [x', x'^2, 1] of rows, x' = x - shift in float32; in one Triton launch for half and
    float32 rows on CUDA (torch's conversion, difference, square and concatenation took 197 ms of
    a 586 ms streamed pass of 104.9M x 128 rows with TF32 products, H100), the same bits."""
    # zero columns up to a multiple of 4: rows 16-byte aligned, which cuBLAS's fast float32
    # and TF32 products need (F of 2D + 1 columns took them at 0.4-0.7 of the floor's rate)
    pad = -(2 * d + 1) % 4

    def features(rows):
        if rows.dtype in (torch.float16, torch.bfloat16, torch.float32) and use_triton(rows, backend):
            from .triton import diag_features_triton

            return diag_features_triton(rows, shift, 2 * d + 1 + pad)
        xs = rows.float() - shift
        return torch.cat([xs, xs * xs, xs.new_ones(len(xs), 1), xs.new_zeros(len(xs), pad)], 1)

    return features


def diag_estep_products(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, shift: torch.Tensor,
                        backend: str = "auto", block_rows: int | None = None):
    """(sum of the rows' log-sum-exp, sum r (K,), sum r (x - shift) (K, D), sum r (x - shift)^2
    (K, D)), float64, of each block of ``block_rows`` rows of ``x`` (n, D) (None: one block),
    stacked (a leading dimension of blocks), under the operands of :func:`diag_operands`
    (float32: a, b (D, K), c (K,)) and ``shift`` (D,) float32: F = [x', x'^2, 1]. Runs of
    blocks that :func:`grouped_blocks` takes go by :func:`estep_products_blocks`, others one by
    one by :func:`estep_products`: which way depends on a block's rows alone, so its statistics
    are the same bits whether it comes alone or among others."""
    n, d = x.shape
    m = block_rows or max(n, 1)
    features, w = diag_features(d, shift, backend), torch.cat([a, b])
    parts, lo = [], 0
    while lo < n:
        size = min(m, n - lo)
        count = (n - lo) // m if size == m else 1  # the full blocks together, a short last one alone
        if grouped_blocks(size, len(c), 2 * d + 1):
            parts.append(estep_products_blocks(x[lo:lo + size * count], features, w, c, size, backend))
        else:
            for start in range(lo, lo + size * count, size):
                ll, total = estep_products(x[start:start + size], features, w, c, backend)
                parts.append((ll[None], total[None]))
        lo += size * count
    if not parts:  # no rows: one block of none
        ll, total = estep_products(x, features, w, c, backend)
        parts.append((ll[None], total[None]))
    log_likelihood, total = (torch.cat(columns) for columns in zip(*parts))
    return log_likelihood, total[:, 2 * d], total[:, :d].transpose(1, 2), total[:, d:2 * d].transpose(1, 2)


def _upper(d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the upper triangle of a (d, d) matrix, diagonal included."""
    return torch.triu_indices(d, d, device=device).unbind()


def full_estep_products(x: torch.Tensor, weights, means, prec_chol, shift, backend: str = "auto"):
    """The E-step of a full-covariance mixture in float64 products: with x' = x - shift and each
    component's precision P_k = U_k U_k^T, ``(x' - m_k)^T P_k (x' - m_k)`` expands into
    ``x'^T P_k x' - 2 x'^T P_k m_k + m_k^T P_k m_k``, so F = [x', the upper triangle of x' x'^T, 1]
    (D + D(D+1)/2 + 1 columns) and one product gives every component's log density, and another
    the sums r x' and r x'x'^T. Returns (sum of lse, sum r, sum r x (K, D), sum r x x^T (K, D, D)),
    float64, of the rows themselves."""
    d = x.shape[1]
    i, j = _upper(d, x.device)
    m = means - shift
    precisions = prec_chol @ prec_chol.transpose(1, 2)  # (K, D, D)
    pm = torch.einsum("kij,kj->ki", precisions, m)
    quadratic = precisions[:, i, j] * torch.where(i == j, -0.5, -1.0)  # off-diagonal terms appear twice
    w = torch.cat([pm.T, quadratic.T])  # (D + T, K)
    c = (torch.log(weights) - 0.5 * (d * math.log(2 * math.pi) + (m * pm).sum(1))
         + torch.log(torch.diagonal(prec_chol, dim1=1, dim2=2)).sum(1))

    def features(rows):
        xs = rows.double() - shift
        f = torch.empty(len(xs), d + len(i) + 1, dtype=torch.float64, device=xs.device)
        f[:, :d], f[:, -1] = xs, 1.0
        # the upper triangle row by row (x_a x_a.., in the order of i, j), written in place: on a
        # CPU 3-4x faster than gathering the columns by index
        column = d
        for a in range(d):
            torch.mul(xs[:, a:a + 1], xs[:, a:], out=f[:, column:column + d - a])
            column += d - a
        return f

    log_likelihood, total = estep_products(x, features, w, c, backend)
    r, xs = total[-1], total[:d].T
    second = torch.zeros(len(r), d, d, dtype=torch.float64, device=x.device)
    second[:, i, j] = total[d:-1].T
    second[:, j, i] = total[d:-1].T
    # back to the rows themselves: sum r x x^T = S' + S_x' s^T + s S_x'^T + (sum r) s s^T
    cross = xs[:, :, None] * shift[None, None, :]
    second += cross + cross.transpose(1, 2) + r[:, None, None] * torch.outer(shift, shift)
    return log_likelihood, r, xs + r[:, None] * shift, second


def tied_estep_products(x: torch.Tensor, weights, means, prec_chol, shift, backend: str = "auto"):
    """The E-step of a tied mixture in float64 products: the shared precision's quadratic term
    ``-0.5 x'^T P x'`` is the same for every component, a column of F whose weight is one in every
    component; F = [x', -0.5 |x' U|^2, 1]. Returns (sum of lse, sum r, sum r x (K, D), X^T X
    (D, D)), float64, of the rows themselves."""
    d = x.shape[1]
    m = means - shift
    precision = prec_chol @ prec_chol.T
    pm = m @ precision  # (K, D)
    w = torch.cat([pm.T, torch.ones(1, len(m), dtype=torch.float64, device=x.device)])  # (D + 1, K)
    c = (torch.log(weights) - 0.5 * (d * math.log(2 * math.pi) + (m * pm).sum(1))
         + torch.log(torch.diagonal(prec_chol)).sum())
    gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    column = torch.zeros(d, dtype=torch.float64, device=x.device)

    def features(rows):
        xs = rows.double() - shift
        gram.add_(xs.T @ xs)  # X'^T X and the rows' sum, taken while a launch's rows are at hand
        column.add_(xs.sum(0))
        y = xs @ prec_chol
        return torch.cat([xs, -0.5 * (y * y).sum(1, keepdim=True), xs.new_ones(len(xs), 1)], 1)

    log_likelihood, total = estep_products(x, features, w, c, backend)
    r, xs = total[-1], total[:d].T
    gram += torch.outer(column, shift) + torch.outer(shift, column) + len(x) * torch.outer(shift, shift)
    return log_likelihood, r, xs + r[:, None] * shift, gram
