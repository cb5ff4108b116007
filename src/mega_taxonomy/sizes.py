"""How uneven a set of node sizes is: the statistics a fit records per level (``stats_``) and the
browser shows, from the counts alone (so a stored tree of any origin is described the same way)."""

from __future__ import annotations

import numpy as np


def imbalance(counts) -> dict:
    """Size statistics of a partition: ``{"n", "min", "median", "max", "max_over_mean", "entropy",
    "gini"}``.

    ``max_over_mean`` (1 is perfectly even), ``entropy`` (of the size distribution, normalized to
    [0, 1]; 1 is even), ``gini`` (0 is even), and min / median / max sizes. Empty nodes count.

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
