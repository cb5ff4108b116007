"""Glue between RayRuntime and ``runtime/collective.py``: forming a group of Ray actors, awaiting it.

Why apart: with ``collective=True`` the workers run a driver in lockstep and exchange partials
worker to worker (``runtime/collective.py`` is that runtime, inside each worker); what is
particular to Ray is starting the ranks' rendezvous on rank 0's node and telling, when one rank
fails, whether a worker was lost (the group is started again and the driver rerun) or the
driver itself failed (its own error is raised). The others may then be stuck in a collective
with the failed rank, so every failure stops the whole group.
"""

from __future__ import annotations

import ray
from ray import exceptions as ray_errors

from .actors import LOST, ray_get


def form_group(actors, timeout: float) -> None:
    """Join started ``CollectiveWorker`` actors into one group, rank = position, rendezvous at
    rank 0; when any fails to join, all of them are killed and the error raised."""
    endpoint = ray.get(actors[0].endpoint.remote())
    try:
        ray_get([actor.join.remote(endpoint, rank, len(actors), timeout) for rank, actor in enumerate(actors)])
    except BaseException:
        for actor in actors:
            ray.kill(actor)
        raise


def await_group(refs, stop):
    """Rank 0's result once every rank is done. When one fails, the others may be stuck in a
    collective with it: the group is stopped (``stop()``), and the failure raised as a loss when
    any rank was lost (the others' errors then follow from it), else as the rank's own error."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(done[0])
        except Exception as first:  # any failure stops the group, then is raised
            lost = first if isinstance(first, LOST) else None
            if lost is None:  # a lost peer's ref fails within seconds; a live one is stuck
                finished, _ = ray.wait(pending, num_returns=len(pending), timeout=10.0)
                for ref in finished:
                    try:
                        ray.get(ref)
                    except LOST as exc:
                        lost = exc
                    except Exception:  # noqa: BLE001, S110 - the peers' own failures follow from the first
                        pass
            stop()
            if lost is not None:
                raise lost from first
            raise first.cause if isinstance(first, ray_errors.RayTaskError) else first
    return ray.get(refs[0])
