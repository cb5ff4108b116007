"""RayPool: the driver's handle on stateful workers (``RayRuntime.pool``), one Ray actor each.

Why apart from the runtime: a pool outlives the passes and knows nothing of blocks, sources or
partials; it only forwards method calls to the object each actor holds (an index part, a model)
and raises the worker's own error, as ``LocalPool`` does in-process.
"""

from __future__ import annotations

import ray

from ..base import WorkerPool
from .actors import ray_get


class RayPool(WorkerPool):
    """Stateful workers as Ray actors (built by ``factory(rank)`` in the actor)."""

    def __init__(self, actors):
        self._actors = list(actors)

    @property
    def size(self) -> int:
        return len(self._actors)

    def call(self, rank, method, *args, **kwargs):
        return ray_get(self._actors[rank].call.remote(method, args, kwargs))

    def broadcast(self, method, *args, **kwargs):
        # all workers at once, unlike the base class's one after the other
        return ray_get([actor.call.remote(method, args, kwargs) for actor in self._actors])

    def pids(self) -> list[int]:
        return ray.get([actor.pid.remote() for actor in self._actors])

    def close(self) -> None:
        try:
            ray_get([actor.close.remote() for actor in self._actors])
        finally:
            for actor in self._actors:
                ray.kill(actor)
            self._actors = []
