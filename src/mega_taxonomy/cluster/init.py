"""Initial centroids, chosen on a sample that fits in memory."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import distances


def kmeans_plusplus(x: torch.Tensor, n_clusters: int, rng: np.random.Generator, *, metric="euclidean",
                    n_local_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007, as scikit-learn's ``kmeans_plusplus``).

    Each new center is the best of ``n_local_trials`` candidates drawn with probability
    proportional to the distance to the nearest center so far (``2 + log(k)`` trials by default).

    Parameters
    ----------
    x : torch.Tensor of shape (n, d)
        The sample, on the device to compute on.
    n_clusters : int
    rng : numpy.random.Generator
    metric : {"euclidean", "cosine"}

    Returns
    -------
    torch.Tensor of shape (n_clusters, d), rows of ``x``.
    """
    n = x.shape[0]
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    chosen = [int(rng.integers(n))]
    closest = distances(x, x[chosen[0]][None], metric=metric)[:, 0].double()
    for _ in range(1, n_clusters):
        potential = closest.sum().item()
        if potential <= 0:
            # Every point coincides with a center already: the rest are drawn uniformly.
            candidates = torch.as_tensor(rng.integers(n, size=trials), device=x.device)
        else:
            draws = torch.as_tensor(rng.random(trials) * potential, device=x.device, dtype=torch.float64)
            candidates = torch.searchsorted(closest.cumsum(0), draws).clamp_(max=n - 1)
        to_candidates = distances(x[candidates], x, metric=metric).double()
        to_candidates = torch.minimum(to_candidates, closest[None, :])
        best = int(to_candidates.sum(1).argmin())
        chosen.append(int(candidates[best]))
        closest = to_candidates[best]
    return x[chosen]
