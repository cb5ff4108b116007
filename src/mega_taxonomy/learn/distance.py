"""Distances between rows and prototypes for the learners: squared euclidean, cosine (``1 - cos``)
and l1, with optional per-feature weights and per-row feature masks, differentiable (the
finetuning's loss runs through them).

The search at inference time goes through ``learn/search.py`` (the fused top-k op for euclidean
and cosine without masks); this module is the plain torch formula: training batches, masked rows,
and the l1 metric, which the ops do not have.

A feature mask ``m`` (1 present, 0 missing) restricts every distance to the present coordinates:
``sum_j m_j (x_j - c_j)^2``, computed as ``(m x^2).sum - 2 (m x) c^T + m (c^2)^T`` (matrix products,
never an n x P x D tensor), cosine over the present coordinates, l1 through chunks.

Examples
--------
>>> import torch
>>> pairwise(torch.tensor([[0.0, 3.0]]), torch.tensor([[4.0, 0.0]]), "euclidean").tolist()
[[25.0]]
>>> pairwise(torch.tensor([[0.0, 3.0]]), torch.tensor([[4.0, 0.0]]), "l1").tolist()
[[7.0]]
>>> pairwise(torch.tensor([[0.0, 3.0]]), torch.tensor([[4.0, 0.0]]), "euclidean",
...          mask=torch.tensor([[0.0, 1.0]])).tolist()
[[9.0]]
"""

from __future__ import annotations

import torch

__all__ = ["LEARN_METRICS", "exact_distances", "pairwise", "scale_features"]

LEARN_METRICS = ("euclidean", "cosine", "l1")
_L1_CHUNK = 2 ** 22  # elements of one n x P x D chunk of the l1 distance


def scale_features(v: torch.Tensor, weights: torch.Tensor | None, metric: str) -> torch.Tensor:
    """Rows scaled so that plain distances of the scaled rows are the weighted distances:
    ``sqrt(w)`` per feature for squared euclidean and cosine, ``w`` for l1."""
    if weights is None:
        return v
    w = weights.to(v.dtype)
    return v * (w if metric == "l1" else w.sqrt())


def pairwise(x: torch.Tensor, c: torch.Tensor, metric: str, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(n, P) distances of the rows of ``x`` to the prototypes ``c`` (both already scaled by the
    feature weights), over the coordinates where ``mask`` is 1."""
    if metric == "euclidean":
        if mask is None:
            d = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
        else:
            d = (mask * x * x).sum(1, keepdim=True) - 2.0 * (mask * x) @ c.T + mask @ (c * c).T
        return d.clamp_min(0.0)
    if metric == "cosine":
        if mask is None:
            num = x @ c.T
            den = torch.linalg.vector_norm(x, dim=1)[:, None] * torch.linalg.vector_norm(c, dim=1)[None, :]
        else:
            num = (mask * x) @ c.T
            den = torch.linalg.vector_norm(mask * x, dim=1)[:, None] * (mask @ (c * c).T).clamp_min(0).sqrt()
        # A zero vector has no direction: its cosine distance is 1 to everything.
        return 1.0 - torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    if metric == "l1":
        step = max(1, _L1_CHUNK // max(1, c.shape[0] * c.shape[1]))
        parts = []
        for lo in range(0, x.shape[0], step):
            diff = (x[lo:lo + step, None, :] - c[None, :, :]).abs()
            if mask is not None:
                diff = diff * mask[lo:lo + step, None, :]
            parts.append(diff.sum(2))
        return torch.cat(parts) if parts else x.new_zeros((0, c.shape[0]))
    raise ValueError(f"metric must be one of {LEARN_METRICS}, got {metric!r}")


def exact_distances(x, c, idx, metric, weights=None, mask=None) -> torch.Tensor:
    """(n, k) float64 distances of every row to its prototypes ``idx`` (n, k), each from its own
    row and prototype alone (elementwise, no matrix product): the same bits whatever the batch a
    row comes in, so that predictions do not depend on batching. ``inf`` where ``idx`` is -1."""
    xs = scale_features(x.double(), None if weights is None else weights.double(), metric)
    cs = scale_features(c.double(), None if weights is None else weights.double(), metric)
    sel = cs[idx.clamp_min(0)]  # (n, k, D)
    xv = xs[:, None, :]
    m = None if mask is None else mask.double()[:, None, :]
    if metric == "euclidean":
        diff = (xv - sel) ** 2
        d = (diff if m is None else diff * m).sum(2)
    elif metric == "l1":
        diff = (xv - sel).abs()
        d = (diff if m is None else diff * m).sum(2)
    else:
        xm = xv if m is None else xv * m
        num = (xm * sel).sum(2)
        c2 = (sel * sel) if m is None else sel * sel * m
        den = torch.linalg.vector_norm(xm, dim=2) * c2.sum(2).sqrt()
        d = 1.0 - torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
    return torch.where(idx >= 0, d, torch.full_like(d, torch.inf))
