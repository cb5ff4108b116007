"""Soft inference: how the ``top_k`` nearest prototypes of a row share its vote.

``soft_type``:

- ``"hard"``: the nearest prototype alone;
- ``"mean"``: the ``top_k`` equally;
- ``"scaled"``: inverse distance weighting, ``1 / d`` (the distances are squared for euclidean);
- ``"softmax_scaled"``: ``softmax(-d / (temperature * scale))`` where ``scale`` is the fitted mean
  distance of a row to its prototype, so that ``temperature`` does not depend on the data's units.

"hard" and "mean" have no gradient with respect to the distances; a finetuning then trains
through "softmax_scaled" (only the inference keeps the chosen rule).

Examples
--------
>>> import torch
>>> soft_weights(torch.tensor([[1.0, 3.0]]), "scaled", 1.0, 1.0).tolist()
[[0.75, 0.25]]
>>> soft_weights(torch.tensor([[1.0, float("inf")]]), "mean", 1.0, 1.0).tolist()
[[1.0, 0.0]]
"""

from __future__ import annotations

import torch

__all__ = ["SOFT_TYPES", "binary_proba", "group_logsumexp", "soft_weights", "top_group", "trainable_soft_type"]

SOFT_TYPES = ("hard", "mean", "scaled", "softmax_scaled")


def trainable_soft_type(soft_type: str) -> str:
    return soft_type if soft_type in ("scaled", "softmax_scaled") else "softmax_scaled"


def soft_weights(d: torch.Tensor, soft_type: str, temperature: float, scale: float) -> torch.Tensor:
    """(n, k) weights summing to 1 per row from (n, k) distances sorted ascending (``inf`` where
    a slot is empty)."""
    finite = torch.isfinite(d)
    d = torch.where(finite, d.clamp_min(0.0), torch.zeros_like(d))
    if soft_type == "hard":
        w = torch.zeros_like(d)
        w[:, 0] = 1.0
        return w
    if soft_type == "mean":
        w = finite.to(d.dtype)
    elif soft_type == "scaled":
        # The floor keeps an exact match finite: it then takes almost all the weight.
        w = torch.where(finite, 1.0 / (d + 1e-9 * scale + 1e-30), torch.zeros_like(d))
    elif soft_type == "softmax_scaled":
        z = torch.where(finite, -d / (temperature * scale), torch.full_like(d, -torch.inf))
        return torch.softmax(z, dim=1)
    else:
        raise ValueError(f"soft_type must be one of {SOFT_TYPES}, got {soft_type!r}")
    return w / w.sum(1, keepdim=True).clamp_min(1e-30)


def group_logsumexp(z: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(n, n_groups) ``logsumexp`` of the columns of ``z`` (n, P) per group of prototypes
    (``groups``: (P,)), ``-inf`` for a group without prototypes; differentiable."""
    n = z.shape[0]
    index = groups[None, :].expand(n, -1)
    top = torch.full((n, n_groups), -torch.inf, dtype=z.dtype, device=z.device)
    top = top.scatter_reduce(1, index, z.detach(), "amax")
    present = torch.isfinite(top)
    top = torch.where(present, top, torch.zeros_like(top))
    s = torch.zeros_like(top).scatter_add(1, index, torch.exp(z - top.gather(1, index)))
    return torch.where(present, top + torch.log(s.clamp_min(1e-30)), torch.full_like(top, -torch.inf))


def binary_proba(scores: torch.Tensor):
    """(proba (n, 2), decision (n,)) of two-class scores: ``p1`` clipped to ``[1e-9, 1 - 1e-9]``,
    ``p0 = 1 - p1``, ``decision = p1 - 0.5``. A clip and a shift keep the decision a function of
    ``p1`` alone that ranks rows as ``p1`` does (far-off rows tie in both), and ``decision > 0``
    is exactly ``p1 > p0``."""
    s = scores.double()
    p1 = (s[:, 1] / (s[:, 0] + s[:, 1]).clamp_min(1e-300)).clamp(BINARY_EPS, 1 - BINARY_EPS)
    return torch.stack([1 - p1, p1], 1), p1 - 0.5


BINARY_EPS = 1e-9


def top_group(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The group of highest summed weight of every row, from its (n, k) weights and groups,
    lowest group on ties: the argmax of the dense (n, n_groups) scores without forming them (at
    20k classes they would be 80 KB a row)."""
    same = g[:, :, None] == g[:, None, :]
    score = (w[:, None, :] * same).sum(2)  # (n, k): each candidate's group total
    best = score.max(1, keepdim=True).values
    # Equal totals are the same sums in another order: compare with a relative margin.
    tied = score >= best - 1e-12 * best.abs().clamp_min(1e-300)
    return torch.where(tied, g, torch.full_like(g, torch.iinfo(torch.int64).max)).min(1).values
