"""RayRuntime: passes over data and pools of stateful workers on a Ray cluster.

The seed's architecture: a driver hands out ranges of blocks to workers, the workers read their
blocks from storage themselves (the driver never touches the data), compute partial sums with
the current state and send them back; the driver adds them up. Here:

- Workers are Ray actors, one per GPU or per CPU slot (``actors.py``). An actor keeps the sources
  it read (with their caches of decoded blocks) and the state of the current pass, so a pass
  sends the state once per worker (``ray.put`` once, each actor resolves it once) and later
  passes hit caches.
- Dispatch is dynamic: each actor has ``in_flight`` items queued, and whichever finishes gets
  the next item. Items go back to the worker that had them in the previous pass (its cache),
  and idle workers steal (``schedule.py``).
- A worker returns one partial per unit of ``reduce_blocks`` blocks, keyed by unit; the driver
  (``runtime.py``) adds units in unit order (``OrderedReducer``), so the result is bit-identical
  to a ``LocalRuntime`` with the same ``reduce_blocks``, whatever the number of workers or the
  order they finish in.
- A worker that dies (its process killed, its node lost) is replaced and its items run again
  elsewhere; a unit is counted once however many times it ran. Transient storage errors inside
  a worker are retried with backoff there (``storage/retry.py``) and counted in ``retries``.
- With ``collective=True``, iterative drivers (``runtime.drive(lloyd, ...)``) run on every worker
  in lockstep instead, exchanging partials worker to worker (``runtime/collective.py``; the Ray
  side in ``collective.py``): no round trip through the driver per pass. A lost worker fails the
  group, which is started again and the driver rerun, with the same result.
- Arrays of a state above ``broadcast_bytes`` (a level of millions of centroids) are written to
  the Store at ``state_uri`` and memory-mapped by the workers, instead of going through Ray's
  object store (``state.py``).
- Stateful workers (``RayRuntime.pool``) are actors behind a ``RayPool`` (``pool.py``).

Why a package that imports Ray at once: Ray is an optional extra and slow to import, so
``mega_taxonomy.runtime`` and ``mega_taxonomy`` load this package only when ``RayRuntime`` is
asked for; whoever does so without Ray installed gets one clear error, here.

Library code never starts Ray: ``RayRuntime(address=...)`` attaches to a running cluster, and
:meth:`RayRuntime.local` is the one explicit way to start one.
"""

try:
    import ray  # noqa: F401 - the one check that the extra is installed, before any module needs it
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("RayRuntime needs Ray: pip install 'mega-taxonomy[ray]'") from exc

from .pool import RayPool
from .runtime import RayRuntime

__all__ = ["RayPool", "RayRuntime"]
