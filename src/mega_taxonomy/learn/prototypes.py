"""The shared prototype machinery: prototypes grouped by owner (a class, a target bucket, a tag's
positive or negative side, or one group for clustering), grown and moved by hard k-means.

Rows come as *memberships*: ``(row, group, weight)`` triples, so that one row can feed several
groups (a multi-label row feeds every tag's sub-topology). Prototypes are kept sorted by group
(CSR ``offsets``), and a row is compared only with its own group's prototypes through the grouped
assignment op (``ops.grouped_nearest``, the taxonomy's per-parent assignment), or the plain
formula for l1 and masked rows. Statistics per prototype come from ``ops.cluster_stats``
(float64 sums, per cluster in row order).

Two updates share them:

- a Lloyd pass (``fit``): each prototype becomes the weighted mean of its rows;
- an EMA step (``partial_fit`` / ``fit_batch``): ``mass <- decay * mass + w_batch`` and the
  prototype moves by ``w_batch / mass`` towards its rows' batch mean (``decay=1``: the running
  mean of every row it was ever given, as MiniBatchKMeans). With feature masks the mass is kept
  per coordinate, so a padded coordinate never pulls a prototype towards zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..cluster.init import kmeans_plusplus
from ..ops import grouped_nearest, normalize_rows
from ..ops.update import cluster_stats
from .distance import pairwise, scale_features

__all__ = ["Prototypes", "assign", "auto_k", "dispersion_ratio", "k_of_ratio", "seed_group", "split_directions"]

DEAD_SHARE = 0.01  # a prototype with less than this share of its group's mean mass is dead


@dataclass
class Prototypes:
    """Prototypes sorted by group; ``mass`` their EMA weight (float64); ``coord_mass`` per
    coordinate once feature masks were seen."""

    vectors: torch.Tensor  # (P, D), float32 or float64
    groups: torch.Tensor  # (P,) int64, sorted
    mass: torch.Tensor  # (P,) float64
    n_groups: int
    coord_mass: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)  # per-prototype arrays kept aligned (targets ...)

    @classmethod
    def empty(cls, dim, n_groups, device, dtype):
        return cls(torch.zeros(0, dim, device=device, dtype=dtype), torch.zeros(0, dtype=torch.int64, device=device),
                   torch.zeros(0, dtype=torch.float64, device=device), n_groups)

    @property
    def offsets(self) -> torch.Tensor:
        counts = torch.bincount(self.groups, minlength=self.n_groups)
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    def counts(self) -> np.ndarray:
        return torch.bincount(self.groups, minlength=self.n_groups).cpu().numpy()

    def take(self, keep: torch.Tensor) -> None:
        """Keep the prototypes ``keep`` (an index or boolean tensor), re-sorted by group."""
        idx = torch.arange(self.groups.shape[0], device=self.groups.device)[keep]
        idx = idx[torch.sort(self.groups[idx], stable=True).indices]
        self.vectors, self.groups, self.mass = self.vectors[idx], self.groups[idx], self.mass[idx]
        if self.coord_mass is not None:
            self.coord_mass = self.coord_mass[idx]
        self.extra = {k: v[idx] for k, v in self.extra.items()}

    def add(self, vectors: torch.Tensor, groups, extra: dict | None = None) -> None:
        """Append prototypes (zero mass) of ``groups`` (an int for all, or one per vector), keeping
        the order by group. Seeding many groups: one call with all of them (each call copies)."""
        n = vectors.shape[0]
        groups = torch.as_tensor(groups, dtype=torch.int64, device=self.groups.device).expand(n)
        self.vectors = torch.cat([self.vectors, vectors.to(self.vectors.dtype)])
        self.groups = torch.cat([self.groups, groups])
        self.mass = torch.cat([self.mass, self.mass.new_zeros(n)])
        if self.coord_mass is not None:
            self.coord_mass = torch.cat([self.coord_mass, self.coord_mass.new_zeros(n, self.vectors.shape[1])])
        for k, v in self.extra.items():
            new = (extra or {}).get(k, v.new_zeros((n, *v.shape[1:])))
            self.extra[k] = torch.cat([v, new.to(v.dtype)])
        self.take(torch.ones(self.groups.shape[0], dtype=torch.bool, device=self.groups.device))

    def update_exposure(self, before, w, row_groups, decay) -> None:
        """Streaming: ``extra["exposure"]``, the mass each prototype would hold had its group's
        rows been shared equally among the group's prototypes since it was born (decaying as the
        mass does). ``before``: the exposure before this batch (None: the mass before it, as for
        prototypes that ``fit`` made); ``w, row_groups``: the batch's weights and groups."""
        if before is None or before.shape != self.mass.shape:
            before = self.mass.clone()  # the mass after the batch: fair by construction
        group_mass = torch.zeros(self.n_groups, dtype=torch.float64, device=self.mass.device)
        group_mass.index_add_(0, row_groups, w.double())
        share = group_mass / torch.bincount(self.groups, minlength=self.n_groups).clamp_min(1)
        self.extra["exposure"] = decay * before + share[self.groups]

    def split(self, parents: torch.Tensor, offsets: torch.Tensor) -> None:
        """Split the prototypes ``parents`` in two: the parent moves by ``-offset``, a child at
        ``+offset`` takes half its mass (and a copy of what it carries), so the rows it held are
        shared by the two."""
        if not len(parents):
            return
        self.mass[parents] = self.mass[parents] / 2
        if self.coord_mass is not None:
            self.coord_mass[parents] = self.coord_mass[parents] / 2
        if "exposure" in self.extra:
            self.extra["exposure"][parents] = self.extra["exposure"][parents] / 2
        child = self.vectors[parents] + offsets.to(self.vectors.dtype)
        self.vectors[parents] = self.vectors[parents] - offsets.to(self.vectors.dtype)
        self.vectors = torch.cat([self.vectors, child])
        self.groups = torch.cat([self.groups, self.groups[parents]])
        self.mass = torch.cat([self.mass, self.mass[parents]])
        if self.coord_mass is not None:
            self.coord_mass = torch.cat([self.coord_mass, self.coord_mass[parents]])
        self.extra = {k: torch.cat([v, v[parents]]) for k, v in self.extra.items()}
        self.take(torch.ones(self.groups.shape[0], dtype=torch.bool, device=self.groups.device))

    def prune(self) -> int:
        """Drop dead prototypes, never the last of a group: mass below ``DEAD_SHARE`` of their
        group's mean, or in a stream (``extra["exposure"]``) below ``DEAD_SHARE`` of their
        exposure, so that a prototype grown late is judged on the rows it could have had. Returns
        how many were dropped."""
        if not self.groups.numel():
            return 0
        if "exposure" in self.extra:
            dead = self.mass < DEAD_SHARE * self.extra["exposure"]
        else:
            total = torch.zeros(self.n_groups, dtype=torch.float64, device=self.mass.device)
            total.index_add_(0, self.groups, self.mass)
            mean = total / torch.bincount(self.groups, minlength=self.n_groups).clamp_min(1)
            dead = self.mass < DEAD_SHARE * mean[self.groups]
        # The heaviest prototype of every group survives.
        heaviest = torch.full((self.n_groups,), -1.0, dtype=torch.float64, device=self.mass.device)
        heaviest = heaviest.scatter_reduce(0, self.groups, self.mass, "amax")
        first_best = torch.zeros_like(dead)
        seen = set()
        for i in torch.nonzero(self.mass == heaviest[self.groups]).flatten().tolist():
            g = int(self.groups[i])
            if g not in seen:
                seen.add(g)
                first_best[i] = True
        dead &= ~first_best
        n_dead = int(dead.sum())
        if n_dead:
            self.take(~dead)
        return n_dead


def dispersion_ratio(x: torch.Tensor, global_spread: float) -> float:
    """A group's mean squared distance to its mean (estimated on its rows ``x``) over the whole
    data's, within ``[0, 1]``."""
    x = x.double()
    spread = float(((x - x.mean(0)) ** 2).sum(1).mean())
    return 0.0 if global_spread <= 0 else min(1.0, spread / global_spread)


def auto_k(x: torch.Tensor, global_spread: float, limit: int, n_total: int | None = None) -> int:
    """Prototypes for one group from its dispersion: ``round(r * sqrt(n))`` with ``r`` the group's
    :func:`dispersion_ratio`, ``n`` the group's rows (``n_total``, else ``len(x)``), within
    ``[1, limit]``. A tight group (r ~ 0) gets one prototype; a group as spread as the whole data
    gets ``sqrt(n)``."""
    n = x.shape[0] if n_total is None else n_total
    return k_of_ratio(dispersion_ratio(x, global_spread), n, limit)


def k_of_ratio(ratio: float, n: float, limit: int) -> int:
    """``round(ratio * sqrt(n))`` within ``[1, limit]``."""
    return int(min(limit, max(1, round(ratio * math.sqrt(n)))))


def split_directions(x: torch.Tensor, existing: torch.Tensor, k: int, metric: str, steps: int = 8):
    """Where to split a group's prototypes to get ``k`` more, from its rows ``x``: the ``k`` whose
    rows lie widest (largest sum of squared distances) and, for each, the offset
    ``sqrt(2 lambda / pi) v`` along the first principal axis ``v`` (variance ``lambda``) of its
    rows: the two halves' means of a Gaussian cut through its centre, as bisecting k-means splits.
    Returns (indices into ``existing``, offsets (k, D)); fewer where prototypes hold < 2 rows."""
    kind = "cosine" if metric == "cosine" else "euclidean"
    xd, cd = x.double(), existing.double()
    d, near = pairwise(xd, cd, kind).clamp_min(0).min(1)
    sse = torch.zeros(existing.shape[0], dtype=torch.float64, device=x.device).index_add_(0, near, d)
    size = torch.bincount(near, minlength=existing.shape[0])
    sse = torch.where(size >= 2, sse, torch.full_like(sse, -1.0))
    order = torch.argsort(sse, descending=True, stable=True)[:k]
    order = order[sse[order] > 0]
    # All chosen prototypes at once: their rows, centred, and a power iteration per prototype
    # (sums per prototype as one product with a one-hot matrix: one call, not one per prototype).
    slot = torch.full((existing.shape[0],), -1, dtype=torch.int64, device=x.device)
    slot[order] = torch.arange(len(order), device=x.device)
    rows = torch.nonzero(slot[near] >= 0).flatten()
    owner = slot[near[rows]]
    onehot = (owner[None, :] == torch.arange(len(order), device=x.device)[:, None]).double()
    r = xd[rows] - cd[order][owner]
    v = onehot @ (r * r) + 1e-12  # start from the per-feature variances
    for _ in range(steps):
        v = onehot @ (r * (r * v[owner]).sum(1, keepdim=True))
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-300)
    lam = (onehot @ ((r * v[owner]).sum(1) ** 2)) / size[order].double()
    return order, (v * (2.0 * lam / math.pi).sqrt()[:, None]).to(existing.dtype)


def seed_group(x: torch.Tensor, k: int, rng: np.random.Generator, metric: str, init_mode: str) -> torch.Tensor:
    """``k`` starting prototypes among the rows ``x`` of one group (k-means++ or random rows)."""
    k = min(k, x.shape[0])
    if k == x.shape[0]:
        return x
    if init_mode == "random":
        return x[torch.as_tensor(np.sort(rng.choice(x.shape[0], k, replace=False)), device=x.device)]
    seeds = kmeans_plusplus(x.cpu(), k, rng, metric="cosine" if metric == "cosine" else "euclidean")
    return seeds.to(x.device)


def assign(protos: Prototypes, x: torch.Tensor, groups: torch.Tensor, metric: str, weights=None, mask=None):
    """(distance, prototype index) of every row's nearest prototype within its group; -1 where a
    group has no prototype."""
    c = scale_features(protos.vectors.to(x.dtype), weights, metric)
    xs = scale_features(x, weights, metric)
    if mask is None and metric != "l1":
        return grouped_nearest(xs, groups, c, protos.offsets, metric=metric)
    d = pairwise(xs, c, metric, mask=mask)
    d = torch.where(groups[:, None] == protos.groups[None, :], d, torch.full_like(d, math.inf))
    best, idx = d.min(1)
    return best, torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))


def batch_stats(protos: Prototypes, x, labels, w, mask=None):
    """float64 (sums of w x, mass, distances unused) per prototype; with a mask the sums and
    masses are per coordinate (``(P, D)`` masses)."""
    p = protos.vectors.shape[0]
    wx = x.float() * w.float()[:, None] if x.dtype != torch.float64 else x * w[:, None]
    if mask is not None:
        wx = wx * mask.to(wx.dtype)
    sums, _, mass = cluster_stats(wx, labels, w.to(wx.dtype), p)
    coord = None
    if mask is not None:
        coord, _, _ = cluster_stats(mask.to(wx.dtype) * w.to(wx.dtype)[:, None], labels, w.to(wx.dtype), p)
    return sums, mass, coord


def apply_means(protos: Prototypes, sums, mass, coord, metric, *, decay=None):
    """Move the prototypes: to the means (``decay=None``, a Lloyd update), or by EMA."""
    old = protos.vectors.double()
    if coord is None:
        denom = mass[:, None].expand_as(sums)
    else:
        denom = coord
    means = torch.where(denom > 0, sums / denom.clamp_min(1e-300), old)
    if decay is None:
        new = means
        protos.mass = mass.clone()
        if coord is not None:
            protos.coord_mass = coord.clone()
    else:
        if coord is not None and protos.coord_mass is None:
            protos.coord_mass = protos.mass[:, None].expand_as(old).clone()
        if protos.coord_mass is not None:
            batch = coord if coord is not None else mass[:, None].expand_as(old)
            protos.coord_mass = decay * protos.coord_mass + batch
            step = torch.where(protos.coord_mass > 0, batch / protos.coord_mass.clamp_min(1e-300), 0.0)
        protos.mass = decay * protos.mass + mass
        if protos.coord_mass is None:
            step = torch.where(protos.mass > 0, mass / protos.mass.clamp_min(1e-300), 0.0)[:, None]
        new = old + step * (means - old)
    if metric == "cosine":
        new = normalize_rows(new)
    shift = float(((new - old) ** 2).sum())
    protos.vectors = new.to(protos.vectors.dtype)
    return shift
