"""Per-tag decision thresholds of the multi-label classifier, chosen on counted outcomes.

A tag's probability is the soft share of its positive prototypes among its nearest ones: it is
not calibrated (a rare tag has few positive prototypes and rarely wins half the vote), so 0.5 is a
poor cut. The counts say, for every tag, how many rows with and without the tag fell in each of
``len(GRID) + 1`` probability bins (bin ``b``: ``GRID[b - 1] < p <= GRID[b]``): from the training
rows after ``fit``, or in a stream from every batch *before* the model learns it (prequential: an
honest estimate). :func:`micro_f1_thresholds` picks each tag's cut on ``GRID`` by coordinate ascent
on the micro-averaged F1 of all tags (the SCut family of Yang 2001, jointly rather than per tag,
so that a rare tag is not cut low for its own F1 at the price of many false positives), starting
from 0.5 and keeping the cut nearest 0.5 among equals.

Examples
--------
>>> import numpy as np
>>> p = np.array([[0.3], [0.4], [0.2], [0.1]])
>>> y = np.array([[1], [1], [0], [0]])
>>> micro_f1_thresholds(outcome_counts(p, y)).tolist()
[0.25]
"""

from __future__ import annotations

import numpy as np

__all__ = ["GRID", "micro_f1_thresholds", "outcome_counts"]

GRID = np.round(np.arange(1, 20) * 0.05, 2)  # candidate cuts 0.05 ... 0.95
ROUNDS = 2  # coordinate-ascent sweeps over the tags (a second one rarely changes a cut)


def outcome_counts(proba: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(n_tags, len(GRID) + 1, 2) weights of the rows per tag, probability bin and label
    (``[..., 1]``: rows that carry the tag); a row is predicted positive at cut ``GRID[j]``
    exactly when its bin is above ``j``."""
    n, n_tags = proba.shape
    bins = np.searchsorted(GRID, proba, side="left")  # the number of cuts strictly below p
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    out = np.zeros((n_tags, len(GRID) + 1, 2))
    tag = np.broadcast_to(np.arange(n_tags), (n, n_tags))
    np.add.at(out, (tag, bins, np.asarray(y, dtype=np.int64)), np.broadcast_to(w[:, None], (n, n_tags)))
    return out


def micro_f1_thresholds(counts: np.ndarray) -> np.ndarray:
    """(n_tags,) cuts on ``GRID`` maximizing the micro F1 of ``counts`` (:func:`outcome_counts`)
    by coordinate ascent from 0.5; 0.5 for a tag without counts."""
    # tp, fp, fn of every tag at every cut j: rows in bins above j are predicted positive.
    above = np.flip(np.cumsum(np.flip(counts, 1), 1), 1)[:, 1:, :]  # bins > j, for j = 0 .. len(GRID)-1
    tp, fp = above[:, :, 1], above[:, :, 0]
    fn = counts[:, :, 1].sum(1, keepdims=True) - tp
    n_tags = counts.shape[0]
    half = int(np.flatnonzero(np.isclose(GRID, 0.5))[0])
    cut = np.full(n_tags, half)
    order = np.argsort(np.abs(np.arange(len(GRID)) - half), kind="stable")  # nearest 0.5 first
    rows = np.arange(n_tags)
    for _ in range(ROUNDS):
        for t in range(n_tags):
            rest = [a[rows, cut].sum() - a[t, cut[t]] for a in (tp, fp, fn)]
            t_tp, t_fp, t_fn = rest[0] + tp[t], rest[1] + fp[t], rest[2] + fn[t]
            f1 = 2 * t_tp / np.maximum(2 * t_tp + t_fp + t_fn, 1e-300)
            cut[t] = order[int(np.argmax(f1[order]))]  # the first maximum in the nearest-0.5 order
    return GRID[cut]
