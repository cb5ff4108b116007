"""Planning and seeding one taxonomy level: how many children each node gets, and where they start."""

from __future__ import annotations

import numpy as np
import torch

from ..cluster.init import kmeans_plusplus
from ..errors import ConfigError


def branching_list(branching_factor, n_levels: int) -> list[int]:
    """``branching_factor`` as one int per level."""
    if isinstance(branching_factor, (int, np.integer)):
        factors = [int(branching_factor)] * n_levels
    else:
        factors = [int(b) for b in branching_factor]
    if len(factors) != n_levels:
        raise ConfigError(f"branching_factor has {len(factors)} entries for n_levels={n_levels}")
    if n_levels < 1 or any(b < 2 for b in factors):
        raise ConfigError(f"need n_levels >= 1 and every branching factor >= 2, got {factors}")
    return factors


def plan_children(counts: np.ndarray, branching: int, min_cluster_size: int) -> np.ndarray:
    """Children per node: ``branching``, fewer where a node has under ``min_cluster_size``
    rows per child, none (a leaf) where it could not have two."""
    n = np.minimum(branching, np.asarray(counts) // min_cluster_size)
    return np.where(n >= 2, n, 0).astype(np.int64)


def seed_children(sample, n_children: np.ndarray, *, metric: str, seed: int, level: int, dtype,
                  device) -> np.ndarray:
    """Initial centroids of the children of every node: k-means++ on the node's own hash sample,
    with a generator of its own (seed, level, node), so no node depends on another."""
    out = []
    for node in np.flatnonzero(n_children):
        rows = sample.of_group(node)
        if len(rows) < n_children[node]:
            raise ConfigError(
                f"level {level}: node {node} has {len(rows)} sampled rows for {n_children[node]} children; "
                "raise sample_size"
            )
        x = torch.as_tensor(np.asarray(rows, dtype=dtype), device=device)
        if metric == "cosine":
            x = torch.nn.functional.normalize(x, dim=1)
        rng = np.random.default_rng([seed, level, int(node)])
        out.append(kmeans_plusplus(x, int(n_children[node]), rng, metric=metric).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, sample.vectors.shape[1]), dtype=dtype)


def offsets_of(n_children: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(n_children)]).astype(np.int64)
