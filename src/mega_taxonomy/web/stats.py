"""Size statistics the browser and the report show: imbalance of a set of node sizes and a
histogram of them on log2 bins.

The same definitions as the fit's own (``inspect`` prints them): max/mean (1 is even), entropy of
the size distribution normalized to [0, 1] (1 is even) and Gini (0 is even), empty nodes counted.
They are computed here from the stored counts, so a tree written by any version, or by hand
through ``storage/``, is shown the same way.
"""

from __future__ import annotations

import numpy as np


def imbalance(counts) -> dict:
    """``{"n", "min", "median", "max", "max_over_mean", "entropy", "gini"}`` of the sizes ``counts``.

    Examples
    --------
    >>> imbalance([10, 10, 10, 10])["max_over_mean"], imbalance([10, 10, 10, 10])["gini"]
    (1.0, 0.0)
    >>> round(imbalance([1, 1, 1, 97])["max_over_mean"], 2)
    3.88
    """
    counts = np.asarray(counts, dtype=np.float64)
    n, total = len(counts), float(counts.sum())
    if n == 0 or total == 0:
        return {"n": n, "min": 0, "median": 0.0, "max": 0, "max_over_mean": 0.0, "entropy": 0.0, "gini": 0.0}
    p = counts[counts > 0] / total
    entropy = float(-(p * np.log(p)).sum() / np.log(n)) if n > 1 else 1.0
    ranked = np.sort(counts)
    gini = float((2 * np.arange(1, n + 1) - n - 1) @ ranked / (n * total))
    return {"n": n, "min": int(ranked[0]), "median": float(np.median(ranked)), "max": int(ranked[-1]),
            "max_over_mean": float(ranked[-1] / (total / n)), "entropy": entropy, "gini": gini}


def size_histogram(counts) -> dict:
    """Node sizes binned by powers of two: ``{"edges": [0, 1, 2, 4, ...], "counts": [...]}``, where
    bin ``i`` holds the sizes in ``[edges[i], edges[i + 1])`` (the first bin: empty nodes).

    Examples
    --------
    >>> size_histogram([0, 1, 3, 3, 8])
    {'edges': [0, 1, 2, 4, 8, 16], 'counts': [1, 1, 2, 0, 1]}
    """
    counts = np.asarray(counts, dtype=np.int64)
    top = int(counts.max()) if len(counts) else 0
    edges = [0, 1]
    while edges[-1] <= top:
        edges.append(edges[-1] * 2)
    binned = np.histogram(counts, bins=np.asarray(edges))[0] if len(counts) else np.zeros(len(edges) - 1)
    # np.histogram closes the last bin on the right: a size equal to the last edge cannot occur
    # (the loop above made the last edge > max), so every bin is [edge, next edge).
    return {"edges": edges, "counts": [int(c) for c in binned]}
