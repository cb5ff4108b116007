"""Diagonal Gaussian mixtures side by side, one per group of rows: a taxonomy level whose nodes'
children are each a mixture fitted on the node's rows (``TaxonomyEngine(clusterer="gmm")``).

Components are global (a level's children), grouped in CSR ``offsets`` (the children of group g
are components ``offsets[g]:offsets[g + 1]``) and each row is scored only against the components
of its own group (``groups``), with ``weights`` summing to 1 within a group. Rows go by chunks,
their groups' components gathered into an (n, width, D) block of float64 (width: the largest
group), so memory stays O(chunk x width x D), never rows x components. Rows of a group without
components (below a leaf) have no scores (-inf) and take no part in the statistics.

The statistics' sums per component go through ``ops.update.cluster_stats`` (a row weighted by
its responsibility, added in a fixed order: numba on the CPU, the sort-based Triton kernels on
CUDA), so they are the same bits every run; chunks are counted from the block's first row and
added in order in float64.
"""

from __future__ import annotations

import math

import torch

from ..update import cluster_stats

__all__ = ["grouped_best", "grouped_log_prob", "grouped_responsibilities", "grouped_stats"]

# Elements of a chunk's gathered (rows, width, D) components: 32 MiB of float64.
CHUNK_ELEMENTS = 1 << 22


def _chunks(n: int, width: int, d: int) -> list[slice]:
    rows = max(1, CHUNK_ELEMENTS // max(1, width * d))
    return [slice(lo, min(n, lo + rows)) for lo in range(0, n, rows)]


def _as64(a, device) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64, device=device)


def grouped_log_prob(x, groups, offsets, weights, means, variances):
    """(log_prob (n, width) float64, components (n, width) int64) of every row against the
    components of its group: ``log w_c + log N(x | mean_c, diag(variance_c))``, -inf and -1 past
    the group's components. ``width`` is the largest group's size."""
    device = x.device
    offsets = torch.as_tensor(offsets, dtype=torch.int64, device=device)
    sizes = offsets[1:] - offsets[:-1]
    width = int(sizes.max()) if len(sizes) else 0
    groups = torch.as_tensor(groups, dtype=torch.int64, device=device)
    j = torch.arange(width, device=device)
    valid = j[None, :] < sizes[groups][:, None]
    comps = torch.where(valid, offsets[groups][:, None] + j[None, :], -1)
    safe = comps.clamp_min(0)
    x = x.to(torch.float64)
    w, mu, var = _as64(weights, device), _as64(means, device), _as64(variances, device)
    d = x.shape[1]
    diff = x[:, None, :] - mu[safe]
    maha = (diff * diff / var[safe]).sum(2)
    log_det = torch.log(var).sum(1)[safe]
    lp = torch.log(w[safe]) - 0.5 * (d * math.log(2 * math.pi) + log_det + maha)
    return torch.where(valid, lp, -math.inf), comps


def _by_chunk(x, groups, offsets, weights, means, variances):
    """(rows, log_prob, components) per chunk of rows."""
    sizes = torch.as_tensor(offsets)[1:] - torch.as_tensor(offsets)[:-1]
    width = int(sizes.max()) if len(sizes) else 1
    for rows in _chunks(x.shape[0], width, x.shape[1]):
        yield (rows, *grouped_log_prob(x[rows], torch.as_tensor(groups)[rows], offsets, weights, means, variances))


def grouped_responsibilities(x, groups, offsets, weights, means, variances):
    """(responsibilities (n, width) float64 among each row's group's components, in their order,
    0 past them; all 0 for a row whose group has none)."""
    out = []
    for _, lp, _ in _by_chunk(x, groups, offsets, weights, means, variances):
        lse = torch.logsumexp(lp, 1, keepdim=True)
        out.append(torch.where(torch.isfinite(lse), torch.exp(lp - lse), 0.0))
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64, device=x.device)


def grouped_best(x, groups, offsets, weights, means, variances, k: int = 1):
    """(costs (n, k) float64, components (n, k) int64): each row's ``k`` components of highest
    ``log w_c + log N(x | c)`` (highest responsibility) within its group, as the costs
    ``-(log w_c + log N(x | c))``, ascending; inf / -1 where the group has fewer. Ties go to the
    lower component."""
    costs, comps = [], []
    for _, lp, c in _by_chunk(x, groups, offsets, weights, means, variances):
        kk = min(k, lp.shape[1])
        # a stable sort, not topk: equal scores keep the lower component first
        order = torch.sort(-lp, dim=1, stable=True).indices[:, :kk]
        cost = (-lp).gather(1, order)
        comp = torch.where(torch.isfinite(cost), c.gather(1, order), -1)
        if kk < k:
            cost = torch.nn.functional.pad(cost, (0, k - kk), value=math.inf)
            comp = torch.nn.functional.pad(comp, (0, k - kk), value=-1)
        costs.append(cost)
        comps.append(comp)
    if not costs:
        return (torch.zeros(0, k, dtype=torch.float64, device=x.device),
                torch.zeros(0, k, dtype=torch.int64, device=x.device))
    return torch.cat(costs), torch.cat(comps)


def grouped_stats(x, groups, offsets, weights, means, variances):
    """(log_likelihood (0-d), sum r (K,), sum r x (K, D), sum r x^2 (K, D)), float64, where
    ``log_likelihood`` sums each row's log-sum-exp over its group's components (rows without
    components add nothing) and K is the number of components."""
    k, d = torch.as_tensor(means).shape
    device = x.device
    total = [torch.zeros(shape, dtype=torch.float64, device=device) for shape in ((), (k,), (k, d), (k, d))]
    # weighted rows in float64 on the CPU; in float32 on CUDA, where the Triton sums need it
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    for rows, lp, comps in _by_chunk(x, groups, offsets, weights, means, variances):
        lse = torch.logsumexp(lp, 1, keepdim=True)
        has = torch.isfinite(lse).squeeze(1)
        r = torch.where(has[:, None], torch.exp(lp - lse), 0.0)
        pick = comps >= 0
        row_of = torch.nonzero(pick)[:, 0]
        resp, comp = r[pick], comps[pick]
        xc = x[rows].to(torch.float64)[row_of]
        # r x and r x^2 side by side: one sort by component for both (each column's sums are
        # those it would have alone)
        weighted = torch.cat([resp[:, None] * xc, resp[:, None] * xc * xc], 1).to(dtype)
        both, _, resp_sum = cluster_stats(weighted, comp, resp, k)
        for i, part in enumerate((lse[has].sum(), resp_sum, both[:, :d], both[:, d:])):
            total[i] = total[i] + part
    return tuple(total)
