"""Planning and seeding one taxonomy level: how many children each node gets, and where they start."""

from __future__ import annotations

import numpy as np
import torch

from ..cluster.init import kmeans_plusplus, kmeans_plusplus_batch
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


def sample_size_list(sample_size, n_levels: int) -> list[int | None]:
    """``sample_size`` as one entry per level: the rows sampled per node to seed that level's
    children (None: the default)."""
    if sample_size is None or isinstance(sample_size, (int, np.integer)):
        sizes = [sample_size] * n_levels
    else:
        sizes = list(sample_size)
    if len(sizes) != n_levels:
        raise ConfigError(f"sample_size has {len(sizes)} entries for n_levels={n_levels}")
    if any(s is not None and (isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1) for s in sizes):
        raise ConfigError(f"sample_size must be None, a positive int or one (or None) per level, got {sample_size!r}")
    return [None if s is None else int(s) for s in sizes]


def plan_children(counts: np.ndarray, branching: int, min_cluster_size: int) -> np.ndarray:
    """Children per node: ``branching``, fewer where a node has under ``min_cluster_size``
    rows per child, none (a leaf) where it could not have two."""
    n = np.minimum(branching, np.asarray(counts) // min_cluster_size)
    return np.where(n >= 2, n, 0).astype(np.int64)


def seed_children(sample, n_children: np.ndarray, *, metric: str, seed: int, level: int, dtype,
                  device) -> np.ndarray | torch.Tensor:
    """Initial centroids of the children of every node: k-means++ on the node's own hash sample,
    with a generator of its own (seed, level, node), so no node depends on another. On a GPU the
    nodes go in batches (``kmeans_plusplus_batch``: one wait on the device per center and batch,
    not two per center and node), and the centroids stay there, a tensor, for the level's first
    pass (65,536 x 1,024 float32 took 34 ms to copy back from pageable host memory)."""
    nodes = np.flatnonzero(n_children)
    samples = [sample.of_group(node) for node in nodes]  # views: converted a node or a batch at a time
    for node, rows in zip(nodes, samples):
        if len(rows) < n_children[node]:
            raise ConfigError(
                f"level {level}: node {node} has {len(rows)} sampled rows for {n_children[node]} children; "
                "raise sample_size"
            )
    if not len(nodes):
        return np.zeros((0, sample.vectors.shape[1]), dtype=dtype)
    rngs = [np.random.default_rng([seed, level, int(node)]) for node in nodes]
    if torch.device(device).type == "cpu":
        out = []
        for node, rows, rng in zip(nodes, samples, rngs):
            x = torch.as_tensor(np.asarray(rows, dtype=dtype))
            if metric == "cosine":
                x = torch.nn.functional.normalize(x, dim=1)
            out.append(kmeans_plusplus(x, int(n_children[node]), rng, metric=metric).numpy())
        return np.concatenate(out)
    return _seed_in_batches(samples, n_children[nodes], rngs, metric, dtype, device)


# Bytes of samples per batch of nodes seeded together on a GPU.
_SEED_BATCH_BYTES = 1 << 30


def _seed_in_batches(samples: list, n_children: np.ndarray, rngs: list, metric: str, dtype,
                     device) -> torch.Tensor:
    out = []
    width, dim = max(len(rows) for rows in samples), samples[0].shape[1]
    per_batch = max(1, _SEED_BATCH_BYTES // (width * dim * np.dtype(dtype).itemsize))
    for lo in range(0, len(samples), per_batch):
        batch = samples[lo:lo + per_batch]
        rows = np.array([len(r) for r in batch])
        padded = np.empty((len(batch), int(rows.max()), dim), dtype=dtype)
        for i, r in enumerate(batch):
            padded[i, :len(r)], padded[i, len(r):] = r, r[0]  # padding rows are never drawn
        x = torch.as_tensor(padded, device=device)
        if metric == "cosine":
            x = torch.nn.functional.normalize(x, dim=2)
        chosen = kmeans_plusplus_batch(x, rows, n_children[lo:lo + per_batch], rngs[lo:lo + per_batch], metric=metric)
        which = torch.as_tensor(np.repeat(np.arange(len(batch)), [len(c) for c in chosen]), device=device)
        out.append(x[which, torch.as_tensor(np.concatenate(chosen), device=device)])
    return torch.cat(out)


