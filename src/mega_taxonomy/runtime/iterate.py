"""The iteration driver: passes over data, repeated until a fit converges.

Every iterative fit of the package (Lloyd's k-means, the levels of a taxonomy, EM for Gaussian
mixtures) is one loop around passes of additive partials (``runtime.base``):

    for iteration in start_iter + 1 .. max_iter:
        step = client.run_pass(state, iteration)          # map_reduce through the runtime
        (the next pass, launched now where ``step.ahead`` offers its state)
        update = client.update(step, state, iteration)    # partials -> the next state
        on_iteration(iteration, update.state, update.change)   # checkpoints, logs
        stop once update.change <= tol (or update.converged, the client's own rule)
    return client.finish(state, step, change, n_iter)      # a final pass, where the client needs one

The driver knows nothing of what a pass computes. What it owns is the order of launches, which
is what keeps a GPU busy: a pass whose update can be queued on the device behind it (k-means
sums turned into centroids there) offers that queued state as ``step.ahead``; the driver then
launches the next pass on it before the host has seen this pass's results, and drops it where
the update did not stand after all (``Update.stands``: a k-means cluster went empty and was
refilled on the host). The same passes, the same bits; at most one pass is wasted per fit (the
one ahead of convergence, or of an update that did not stand). On 2 H200s with N = 1M rows
this took an iteration from 9.06 to 8.20 ms (``benchmarks/results/ray_gpu.json``).

How to write a driver client
----------------------------
A client is an object with three methods (:class:`Client`); everything it keeps between
iterations (bounds, penalties, the last partial) lives on it, the state the driver hands around
is what the passes run on (centroids, a mixture's parameters):

``run_pass(state, iteration) -> Step``
    Run one pass (``runtime.map_reduce(source, task, pass_state)``) and return its result in a
    :class:`Step`. Queue what can be queued (device-side updates, copies of small host values)
    before returning; set ``Step.ahead`` to the next pass's state only where it is known without
    waiting for this pass's results on the host.
``update(step, state, iteration) -> Update``
    Wait for the pass's results, make the next state and a scalar ``change`` (k-means: the
    squared shift of the centroids; EM: the change of the lower bound) that ``tol`` bounds.
    ``stands=False`` where the next state is not ``step.ahead``.
``finish(state, last, change, n_iter) -> result``
    The fit's result; run a final pass where the last one did not describe ``state``.

An EM loop is such a client in about a hundred lines: ``run_pass`` maps an E-step task that
returns the sums of responsibilities, ``update`` is the M-step and the lower bound's change,
``finish`` an optional final E-step for labels. ``cluster/lloyd.py`` is the reference client.

Drivers run through ``runtime.drive(fn, ...)``, the runtime's own entry: in this process for
``LocalRuntime``, on every worker in lockstep for ``RayRuntime(collective=True)``. A hook such
as ``on_iteration`` is then called on every worker; hooks with effects outside the process
(checkpoints) are to run where ``runtime.leader`` is true.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# A pass launched ahead saves the host's turn between two passes (a millisecond or a few) and is
# thrown away where the update does not stand (a k-means cluster emptied) or the fit converges:
# worth it for passes of milliseconds (an H200's fit of device rows, Ray's workers), not for
# passes of a tenth of a second and more (the pinned fit of 10M x 1024 host rows on an H100 lost
# a 0.43 s pass to an empty cluster at its last level). Clients apply it by :class:`PassClock`.
LOOK_AHEAD_MAX_SECONDS = 0.05


class PassClock:
    """How long a client's last pass took: from its launch to its results on the host, or, where
    it was launched ahead and waited behind the pass before on the device, from that pass's
    results (else a pass ahead would count both, and the next one not go ahead)."""

    def __init__(self):
        self.seconds = None
        self._results_at = -math.inf

    def results(self, launched: float) -> None:
        """The results of the pass launched at ``launched`` (``time.perf_counter()``) are on the host."""
        now = time.perf_counter()
        self.seconds = now - max(launched, self._results_at)
        self._results_at = now

    def short(self) -> bool:
        """Whether the last pass took at most ``LOOK_AHEAD_MAX_SECONDS``: the next may go ahead."""
        return self.seconds is not None and self.seconds <= LOOK_AHEAD_MAX_SECONDS


@dataclass
class Step:
    """A pass launched by a client.

    Attributes
    ----------
    result
        What the client needs of it in ``update`` (the partial, a queued update, ...).
    ahead
        The state of the next pass if this pass's update stands, known before its results are
        back on the host; None where the next pass needs them.
    """

    result: Any
    ahead: Any = None


@dataclass
class Update:
    """The state after an iteration, and by how much it changed (compared with ``tol``).
    ``stands`` is False where the state is not the ``ahead`` that the step offered.
    ``converged``, where the client sets it, is its own stopping rule (scikit-learn's mixtures stop
    on ``change < tol``); None: the driver's, ``change <= tol``."""

    state: Any
    change: float
    stands: bool = True
    converged: bool | None = None


class Client(Protocol):
    """An iterative fit as the driver sees it (see the module's notes)."""

    def run_pass(self, state, iteration: int) -> Step:  # pragma: no cover - protocol
        ...

    def update(self, step: Step, state, iteration: int) -> Update:  # pragma: no cover - protocol
        ...

    def finish(self, state, last: Step | None, change: float, n_iter: int) -> Any:  # pragma: no cover - protocol
        ...


def iterate(client: Client, state, *, max_iter: int, tol: float = 0.0, start_iter: int = 0,
            on_iteration: Callable[[int, Any, float], None] | None = None) -> Any:
    """Run ``client`` from ``state`` until ``change <= tol`` or ``max_iter`` iterations, and return
    ``client.finish(...)``.

    Parameters
    ----------
    client : Client
    state
        What the first pass runs on.
    max_iter : int
        The last iteration's number (iterations count from ``start_iter + 1``).
    tol : float, default=0.0
        The loop stops after the first iteration whose ``change`` is at most ``tol``, unless the
        client decides itself (``Update.converged``).
    start_iter : int, default=0
        Iterations already done (a fit resumed from a checkpoint of ``state``).
    on_iteration : callable, optional
        ``on_iteration(iteration, state, change)`` after every update.

    Examples
    --------
    A client that halves a number until it changes by less than 1 (no data, no passes):

    >>> class Halve:
    ...     def run_pass(self, x, iteration): return Step(x / 2)
    ...     def update(self, step, x, iteration): return Update(step.result, x - step.result)
    ...     def finish(self, x, last, change, n_iter): return x, n_iter
    >>> iterate(Halve(), 10.0, max_iter=100, tol=1.0)
    (0.625, 4)
    """
    step = ahead = None
    change, n_iter = math.inf, start_iter
    for n_iter in range(start_iter + 1, max_iter + 1):
        step, ahead = (client.run_pass(state, n_iter), None) if ahead is None else (ahead, None)
        if step.ahead is not None and n_iter < max_iter:
            ahead = client.run_pass(step.ahead, n_iter + 1)
        update = client.update(step, state, n_iter)
        if not update.stands:
            ahead = None
        state, change = update.state, update.change
        if on_iteration is not None:
            on_iteration(n_iter, state, change)
        converged = change <= tol if update.converged is None else update.converged
        if converged:
            break
    return client.finish(state, step, change, n_iter)
