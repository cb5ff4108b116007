"""Gradient finetuning of the prototypes with Adam, and the learning-rate range test.

The estimator gives the loss (``est._loss(params, x, targets, weights, mask)`` plus
``est._regularizers(params)``); here are the loops: epochs of shuffled mini-batches of
``est.batch_size`` rows, early stopping on a held-out tenth of the rows (the best state is kept),
and :func:`learning_rate_range`, which raises the rate geometrically over a few dozen steps on a
copy of the parameters and returns the rate of the steepest fall of the (smoothed) loss, a tenth
of the rate where it is lowest at most.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .inputs import batches, n_rows

__all__ = ["adam_epochs", "learning_rate_range"]

VALIDATION_SHARE = 0.1


def _rows_batch(est, X, targets, weights, mask, rows):
    _, _, x, m = next(batches(X, max(1, len(rows)), est._device(), est._work_dtype(), mask=mask, rows=rows))
    idx = torch.as_tensor(rows, device=targets.device)
    return x, targets[idx], weights[idx], m


def _loss_on(est, params, X, targets, weights, mask, rows):
    total, mass = 0.0, 0.0
    with torch.no_grad():
        for lo in range(0, len(rows), 8192):
            x, t, w, m = _rows_batch(est, X, targets, weights, mask, rows[lo:lo + 8192])
            total += float(est._loss(params, x, t, w, m)) * float(w.sum())
            mass += float(w.sum())
    return total / max(mass, 1e-30)


def adam_epochs(est, params, X, targets, weights, mask, *, epochs, lr, generator, early_stopping_rounds=None):
    """Train ``params`` for ``epochs``; returns ``(params, history)`` (history: loss per epoch, on
    the held-out rows when early stopping)."""
    n = n_rows(X)
    perm = torch.randperm(n, generator=generator).numpy()
    if early_stopping_rounds and n >= 20:
        n_val = max(1, int(n * VALIDATION_SHARE))
        val, train = np.sort(perm[:n_val]), perm[n_val:]
    else:
        val, train = None, perm
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    best, best_state, stale, history = math.inf, None, 0, []
    for _ in range(epochs):
        order = train[torch.randperm(len(train), generator=generator).numpy()]
        run = 0.0
        for lo in range(0, len(order), est.batch_size):
            x, t, w, m = _rows_batch(est, X, targets, weights, mask, np.sort(order[lo:lo + est.batch_size]))
            opt.zero_grad()
            loss = est._loss(params, x, t, w, m) + est._regularizers(params)
            loss.backward()
            opt.step()
            run += float(loss.detach()) * len(x)
        score = _loss_on(est, params, X, targets, weights, mask, val) if val is not None else run / len(order)
        history.append(score)
        if val is None:
            continue
        if score < best - 1e-12:
            best, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in params.items()}
        else:
            stale += 1
            if stale >= early_stopping_rounds:
                break
    if best_state is not None:
        with torch.no_grad():
            for k, v in params.items():
                v.copy_(best_state[k])
    return params, history


def learning_rate_range(est, params, X, targets, weights, mask, *, low=1e-4, high=1.0, steps=40):
    """The learning rate of the steepest fall of the loss over a geometric sweep (the parameters
    are copies: the model is left as it was)."""
    trial = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(list(trial.values()), lr=low)
    rng = np.random.default_rng(0)
    n = n_rows(X)
    rates = np.geomspace(low, high, steps)
    losses = []
    for lr in rates:
        for group in opt.param_groups:
            group["lr"] = float(lr)
        rows = np.sort(rng.choice(n, size=min(n, est.batch_size), replace=False))
        x, t, w, m = _rows_batch(est, X, targets, weights, mask, rows)
        opt.zero_grad()
        loss = est._loss(trial, x, t, w, m) + est._regularizers(trial)
        if not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if len(losses) < 4:
        return float(low)
    smooth = np.convolve(losses, np.ones(3) / 3, mode="valid")
    slope = np.gradient(smooth)
    steepest = float(rates[1 + int(np.argmin(slope))])
    lowest = float(rates[1 + int(np.argmin(smooth))])
    return min(steepest, lowest / 10) if lowest / 10 >= low else steepest
