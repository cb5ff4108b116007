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
    if x.device.type != "cpu":  # one sample: a batch of one
        chosen = kmeans_plusplus_batch(x[None], np.array([n]), np.array([n_clusters]), [rng], metric=metric,
                                       n_local_trials=n_local_trials)[0]
        return x[torch.as_tensor(chosen, device=x.device)]
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    # Plain products of the sample (float32, float64 for float64 input): the tiled assignment ops
    # cost more than the arithmetic for the small samples of a taxonomy's nodes (256 nodes x 16
    # centers: 1.0 s against 0.2 s). On the CPU all in numpy, whose BLAS uses its own threads and
    # whose small operations cost a few microseconds (torch's: 3x more; 1024 x 64 rows, 16
    # centers: 0.7 ms against 1.9 ms).
    v = x.float() if x.dtype != torch.float64 else x
    v = (normalize_rows(v) if metric == "cosine" else v).numpy()
    sq = np.einsum("ij,ij->i", v, v)
    v_t = np.ascontiguousarray(v.T)  # OpenBLAS is 5x slower with v.T as a strided operand

    def to(rows):
        dots = v[rows] @ v_t
        d = 1.0 - dots if metric == "cosine" else sq[rows, None] + sq[None, :] - 2.0 * dots
        return d.astype(np.float64).clip(min=0.0)

    chosen = [int(rng.integers(n))]
    closest = to([chosen[0]])[0]
    for _ in range(1, n_clusters):
        potential = closest.sum()
        if potential <= 0:
            # Every point coincides with a center already: the rest are drawn uniformly.
            candidates = rng.integers(n, size=trials)
        else:
            candidates = np.searchsorted(closest.cumsum(0), rng.random(trials) * potential).clip(max=n - 1)
        to_candidates = np.minimum(to(candidates), closest[None, :])
        best = int(to_candidates.sum(1).argmin())
        chosen.append(int(candidates[best]))
        closest = to_candidates[best]
    return x[chosen]


def kmeans_plusplus_batch(x: torch.Tensor, rows: np.ndarray, n_clusters: np.ndarray, rngs: list, *,
                          metric: str = "euclidean", n_local_trials: int | None = None) -> list[np.ndarray]:
    """:func:`kmeans_plusplus` of many samples at once, each with its own generator (the same
    draws, in the same order, as each sample alone): sample ``g`` is ``x[g, :rows[g]]`` (the rows
    after it are padding) and gets ``n_clusters[g]`` centers. One batched product per center for
    all samples, and one copy back of their potentials, where a sample at a time waits on the
    device twice per center. On an H200, the pinned benchmark's taxonomy (10M rows, 256 x 16 x 16)
    spent 30 s outside its data passes seeding node by node, about 1.5 s in batches
    (benchmarks/gpu_notes.md, commits 52dd03d and 8edacce).

    Returns the indices of the chosen rows of every sample.
    """
    g_count, width, dim = x.shape
    device = x.device
    rows, n_clusters = np.asarray(rows, dtype=np.int64), np.asarray(n_clusters, dtype=np.int64)
    trials = np.array([n_local_trials or 2 + int(math.log(k)) for k in n_clusters], dtype=np.int64)
    v = x.float() if x.dtype != torch.float64 else x
    if metric == "cosine":
        v = normalize_rows(v.reshape(-1, dim)).reshape(v.shape)
    sq = (v * v).sum(2)
    padding = torch.arange(width, device=device)[None, :] >= torch.as_tensor(rows, device=device)[:, None]
    spare_trial = torch.as_tensor(np.arange(trials.max())[None, :] >= trials[:, None], device=device)
    samples = torch.arange(g_count, device=device)

    def to(candidates):  # (samples, trials) rows -> their (samples, trials, width) distances, 0 to padding
        dots = torch.bmm(v[samples[:, None], candidates], v.transpose(1, 2))
        d = 1.0 - dots if metric == "cosine" else sq.gather(1, candidates)[:, :, None] + sq[:, None, :] - 2.0 * dots
        return d.double().clamp_min_(0.0).masked_fill_(padding[:, None, :], 0.0)

    first = np.array([[rng.integers(n)] for rng, n in zip(rngs, rows)], dtype=np.int64).reshape(g_count, 1)
    chosen = [torch.as_tensor(first, device=device)]  # (samples, 1) per center, read back at the end
    closest = to(chosen[0])[:, 0]
    for step in range(1, int(n_clusters.max(initial=1))):
        active = n_clusters > step
        potential = closest.sum(1).cpu().numpy()  # the step's one wait on the device, for every sample
        draws = np.zeros((g_count, trials.max()))
        drawn = np.zeros((g_count, trials.max()), dtype=np.int64)
        uniform = np.zeros(g_count, dtype=bool)
        for g in np.flatnonzero(active):
            if potential[g] <= 0:  # every row coincides with a center already: the rest are drawn uniformly
                drawn[g, :trials[g]], uniform[g] = rngs[g].integers(rows[g], size=trials[g]), True
            else:
                draws[g, :trials[g]] = rngs[g].random(trials[g]) * potential[g]
        candidates = torch.searchsorted(closest.cumsum(1), torch.as_tensor(draws, device=device))
        candidates = torch.minimum(candidates, torch.as_tensor(rows - 1, device=device)[:, None])
        candidates = torch.where(torch.as_tensor(uniform, device=device)[:, None],
                                 torch.as_tensor(drawn, device=device), candidates)
        to_candidates = torch.minimum(to(candidates), closest[:, None, :])
        best = to_candidates.sum(2).masked_fill_(spare_trial, torch.inf).argmin(1)
        done = torch.as_tensor(~active, device=device)
        closest = torch.where(done[:, None], closest, to_candidates[samples, best])
        chosen.append(candidates.gather(1, best[:, None]))
    chosen = torch.cat(chosen, 1).cpu().numpy()
    return [chosen[g, :n_clusters[g]] for g in range(g_count)]
