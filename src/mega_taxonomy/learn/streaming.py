"""The streaming step of the prototype learners (``partial_fit`` / ``fit_batch`` without gradient),
a mixin of ``base.PrototypeLearner``.

A batch first grows the groups it holds towards their number of prototypes, then runs a few Lloyd
iterations on top of the prototypes' running means. Measured on the benchmark's 600k set (500k
rows streamed in 50k-row batches against ``fit``'s 0.871, ``docs/benchmarks.md``): one EMA step per
batch with "auto" decided on the first batch reached 0.805 with 693 prototypes; the Lloyd
iterations alone 0.823; growing by k-means++ draws (new prototypes at the rows served worst: in 64
dimensions, lone outliers, pruned a few batches later) 0.831 with 2145; growing by splitting the
widest prototypes, with the Lloyd iterations, 0.855 with 2190 (``fit``: 2228).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .distance import scale_features
from .inputs import batches
from .prototypes import (
    apply_means,
    assign,
    batch_stats,
    dispersion_ratio,
    k_of_ratio,
    seed_group,
    split_directions,
)

__all__ = ["STREAM_ITERATIONS", "StreamingSteps"]

STREAM_ITERATIONS = 3  # Lloyd iterations of one streamed batch (see _batch_lloyd)


class StreamingSteps:
    """``_ema_step`` for the estimators (they give ``_device``, ``_work_dtype``, ``_weights``,
    ``_k_param``, ``_export`` and the state of ``_new_state``)."""

    def _ema_step(self, X, rows, groups, weights, mask=None, prune=True):
        """One batch of a stream: grow the groups' prototypes towards their targets from this
        batch's rows, then a few Lloyd iterations of the batch on top of the running means."""
        dev = self._device()
        x_all = next(batches(X, max(1, len(rows)), dev, self._work_dtype(), mask=mask, rows=rows))
        x, m = x_all[2], x_all[3]
        g_t = torch.as_tensor(groups, device=dev)
        self._grow(x, groups, g_t)
        w = torch.as_tensor(weights, device=dev, dtype=torch.float64)
        d, labels = self._batch_lloyd(x, g_t, w, m)
        ok = labels >= 0
        self._scale_sum += float((d[ok].double() * w[ok]).sum())
        self._scale_mass += float(w[ok].sum())
        if prune:
            self._protos.prune()
        self._adam = None
        self._export()

    def _grow(self, x, groups, g_t):
        """Prototypes of the groups of this batch up to their targets: ``k_init``, or for "auto"
        ``r * sqrt(n)`` with ``r`` the group's dispersion ratio (from its first batch) and ``n``
        its rows seen so far, as ``fit`` decides on all rows. A new group is seeded by k-means++ on
        its rows; a grown one splits its widest prototypes in two along their rows' principal axis
        (``Prototypes.split``: the halves keep the parent's history, which a new prototype drawn
        from the batch would not have); a pruned one grows back."""
        counts = self._protos.counts()
        seen = getattr(self, "_seen", None)
        if seen is None:
            seen = self._seen = np.zeros(self._protos.n_groups)
        seen += np.bincount(groups, minlength=len(seen))
        auto = self._k_param() == "auto"
        seeds, owners, splits, spread = [], [], [], None
        fw = self._weights()
        for g in np.unique(groups):
            g = int(g)
            sel = torch.nonzero(g_t == g).flatten()
            if auto and g in self._k_target:  # a group that fit seeded: fit's number
                target = self._k_target[g]
            elif auto:
                if g not in self._k_ratio:  # the ratio, from the group's first batch
                    if spread is None:
                        spread = float(((x.double() - x.double().mean(0)) ** 2).sum(1).mean())
                    self._k_ratio[g] = dispersion_ratio(x[sel], spread)
                target = k_of_ratio(self._k_ratio[g], seen[g], limit=max(1, int(math.sqrt(seen[g]))))
            else:
                target = int(self._k_param())
            need = target - int(counts[g])
            if need <= 0:
                continue
            if counts[g] == 0:
                new = seed_group(x[sel], target, self._rng, self.metric, self.init_mode)
                seeds.append(new)
                owners.append(torch.full((new.shape[0],), g, dtype=torch.int64))
                continue
            own = torch.nonzero(self._protos.groups == g).flatten()
            xs = scale_features(x[sel], fw, self.metric)
            which, offsets = split_directions(xs, scale_features(self._protos.vectors[own].to(x.dtype), fw, self.metric),
                                              need, self.metric)
            if fw is not None:  # offsets back to the unweighted space of the stored prototypes
                offsets = offsets / scale_features(torch.ones_like(offsets[:1]), fw, self.metric).clamp_min(1e-30)
            splits.append((own[which], offsets))
        if splits:  # indices of the state before any change: one split, then the new groups
            self._protos.split(torch.cat([p for p, _ in splits]), torch.cat([o for _, o in splits]))
        if seeds:
            self._protos.add(torch.cat(seeds), torch.cat(owners).to(x.device))

    def _batch_lloyd(self, x, g_t, w, m):
        """Up to ``STREAM_ITERATIONS`` Lloyd iterations of one batch on top of the prototypes'
        running means: assign the batch, move every prototype to ``(decay * mass * old + batch
        sums) / (decay * mass + batch mass)`` from its state before the batch, assign again. One
        iteration is mini-batch k-means; the next ones make the batch's assignment agree with
        where its prototypes went (a new prototype becomes a k-means centre of the batch instead
        of the mean of rows gathered around its seed). The last assignment's (distances, labels)."""
        before = (self._protos.vectors, self._protos.mass, self._protos.coord_mass,
                  self._protos.extra.get("exposure"))
        spread = float(x.double().var(0).sum()) if x.shape[0] > 1 else 0.0
        shift = math.inf
        for _ in range(STREAM_ITERATIONS):
            d, labels = assign(self._protos, x, g_t, self.metric, self._weights(), m)
            if shift <= self.tol * max(spread, 1e-30):
                break  # converged: the batch's assignment no longer moves the prototypes
            sums, mass, coord = batch_stats(self._protos, x, labels, w, m)
            self._protos.vectors, self._protos.mass, self._protos.coord_mass = before[:3]
            shift = apply_means(self._protos, sums, mass, coord, self.metric, decay=self.ema_decay)
        self._protos.update_exposure(before[3], w, g_t, self.ema_decay)
        return d, labels
