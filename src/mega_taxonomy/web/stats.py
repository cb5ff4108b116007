"""Size statistics the browser and the report show: imbalance of a set of node sizes (the fit's
own, ``sizes.imbalance``, computed here from the stored counts, so a tree written by any version,
or by hand through ``storage/``, is shown the same way) and a histogram of them on log2 bins.
"""

from __future__ import annotations

import numpy as np

from ..sizes import imbalance  # re-exported for view.py and the report

__all__ = ["imbalance", "size_histogram"]


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
