"""Initial centroids, chosen on a sample that fits in memory."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import normalize_rows


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
    # Plain products of the sample (float32, float64 for float64 input): the tiled assignment ops
    # cost more than the arithmetic for the small samples of a taxonomy's nodes (256 nodes x 16
    # centers: 1.0 s against 0.2 s). On the CPU all in numpy, whose BLAS uses its own threads and
    # whose small operations cost a few microseconds (torch's: 3x more; 1024 x 64 rows, 16
    # centers: 0.7 ms against 1.9 ms).
    on_cpu = x.device.type == "cpu"
    v = x.float() if x.dtype != torch.float64 else x
    if metric == "cosine":
        v = normalize_rows(v)
    if on_cpu:
        v = v.numpy()
        sq = np.einsum("ij,ij->i", v, v)
        v_t = np.ascontiguousarray(v.T)  # OpenBLAS is 5x slower with v.T as a strided operand
        minimum, searchsorted = np.minimum, np.searchsorted
    else:
        sq = (v * v).sum(1)
        v_t = v.T
        minimum, searchsorted = torch.minimum, torch.searchsorted

    def to(rows):
        dots = v[rows] @ v_t
        d = 1.0 - dots if metric == "cosine" else sq[rows, None] + sq[None, :] - 2.0 * dots
        return d.astype(np.float64).clip(min=0.0) if on_cpu else d.double().clamp_min_(0.0)

    chosen = [int(rng.integers(n))]
    closest = to([chosen[0]])[0]
    for _ in range(1, n_clusters):
        potential = closest.sum().item()
        if potential <= 0:
            # Every point coincides with a center already: the rest are drawn uniformly.
            candidates = rng.integers(n, size=trials)
        else:
            draws = rng.random(trials) * potential
            if not on_cpu:
                draws = torch.as_tensor(draws, device=closest.device, dtype=torch.float64)
            candidates = searchsorted(closest.cumsum(0), draws).clip(max=n - 1)
            candidates = candidates if on_cpu else candidates.cpu().numpy()
        to_candidates = minimum(to(candidates), closest[None, :])
        best = int(to_candidates.sum(1).argmin())
        chosen.append(int(candidates[best]))
        closest = to_candidates[best]
    return x[chosen]
