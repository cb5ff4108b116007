"""Dynamic dispatch of work items to workers, with affinity to the worker that had them last.

A fit makes tens of passes over the same data, and every worker keeps the blocks it decoded in
its own cache. Handing an item to the worker that read it in the previous pass turns every
later pass into cache hits; handing it to whoever is free keeps fast workers busy. The schedule
does both: a worker first takes its own items (lowest first, so the driver's in-order reduction
advances), then items nobody had yet, then steals the last item of the worker with the most left.
It knows nothing of Ray (items and workers are numbers), but only RayRuntime dispatches so.
"""

from __future__ import annotations

import bisect


class Schedule:
    """Which item each worker computes next, for one pass over ``n_items`` items.

    Parameters
    ----------
    n_items : int
    n_workers : int
    previous : dict of int to int, optional
        ``item -> worker`` from the last pass (what is in whose cache).

    Examples
    --------
    >>> s = Schedule(4, 2, previous={0: 1, 1: 1})
    >>> s.next_for(1), s.next_for(0), s.next_for(0), s.next_for(0)
    (0, 2, 3, 1)
    >>> s.next_for(1) is None
    True
    >>> s.requeue(3)
    >>> s.next_for(1)
    3
    """

    def __init__(self, n_items: int, n_workers: int, previous: dict | None = None):
        self._own = [[] for _ in range(n_workers)]  # sorted item lists
        self._free = []  # sorted: items of no worker (yet)
        previous = previous or {}
        for item in range(n_items):
            worker = previous.get(item)
            (self._own[worker] if worker is not None and worker < n_workers else self._free).append(item)
        self.owner = {}  # item -> the worker that computed it in this pass

    def next_for(self, worker: int) -> int | None:
        """The next item for ``worker``, or None when no item is left to start."""
        if self._own[worker]:
            return self._own[worker].pop(0)
        if self._free:
            return self._free.pop(0)
        richest = max(range(len(self._own)), key=lambda w: len(self._own[w]))
        if self._own[richest]:
            return self._own[richest].pop()  # the one its owner would reach last
        return None

    def requeue(self, item: int) -> None:
        """Give ``item`` back (its worker died): any worker may take it, before other free items."""
        bisect.insort(self._free, item)

    def done(self, item: int, worker: int) -> None:
        self.owner[item] = worker
