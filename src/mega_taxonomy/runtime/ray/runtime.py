"""RayRuntime, the driver's side: starting actors, dispatching a pass's blocks, replacing the lost.

Why the driver holds all the bookkeeping: the actors (``actors.py``) only compute what they are
handed, so a worker that dies takes nothing with it but its queued items. The driver hands out
runs of units to whichever worker is free (``in_flight`` items queued per worker, affinity to the
worker that cached them in the last pass: ``schedule.py``), adds the partial each item returns
(``OrderedReducer``; its float sums exact, so the bits of a LocalRuntime for any number of
workers, ``reduce_blocks`` or order of finishing), and replaces a dead actor, running its items
again elsewhere while counting each item once. Collective drivers are started and awaited
through ``collective.py``; large state arrays are spilled to a Store through ``state.py``.
"""

from __future__ import annotations

import collections
import logging
import math
import time
import uuid
import weakref

import ray
import torch
from tqdm.auto import tqdm

from ...errors import ConfigError, WorkerError
from ...io.shards import BLOCK_ROWS, SHARD_ROWS
from ...storage import Store
from ..base import OrderedReducer, Runtime, settled, units
from ...io.transfer import to_host
from .actors import LOST, RemoteBlockWorker, RemoteCollectiveWorker, RemotePoolWorker, ray_get
from .collective import await_group, form_group
from .pool import RayPool
from .schedule import Schedule
from .state import spill

logger = logging.getLogger(__name__)


class RayRuntime(Runtime):
    """Run passes and worker pools on a running Ray cluster.

    Parameters
    ----------
    address : str, optional
        The cluster (``"host:port"`` of its head, or ``"auto"``); None: the cluster this process
        is already connected to, else ``"auto"`` (``RAY_ADDRESS`` or a cluster started on this
        machine by ``ray start``). Never starts one: see :meth:`local`.
    num_workers : int, optional
        Actors to run; None: one per GPU of the cluster when workers use GPUs, else one per CPU.
    gpus_per_worker : float, optional
        None: 1 when the cluster has GPUs, else 0 (CPU workers).
    cpus_per_worker : float, default=1
    reduce_blocks : int, default=1
        Blocks per unit (see ``runtime.base``): items are runs of units, and a worker sends one
        partial per item, so the partial-sum traffic per pass is one partial per item. Results
        do not depend on it (the float sums are exact).
    in_flight : int, default=2
        Items queued per worker, so that a worker never waits for the driver between items.
    dispatch_units : int, optional
        Units per dispatched item; None: about a shard's rows (2**20), but at least 4 items per
        worker where there are enough units.
    state_uri : str, optional
        A Store on storage every worker can read (a shared filesystem, ``s3://``...) for the
        arrays of a pass's state of ``broadcast_bytes`` or more; None: everything is broadcast.
    storage_options : dict, optional
        fsspec options of ``state_uri`` (never logged).
    broadcast_bytes : int, default=64 MiB
    ray_remote_args : dict, optional
        More options of the actors (``resources``, ``scheduling_strategy``, ``runtime_env``...),
        over the defaults (the CPUs and GPUs above, actors spread over the nodes).
    max_attempts : int, default=3
        Times an item may lose its worker before the pass fails with WorkerError.
    node_ip_address : str, optional
        This driver's address when it must be given (a machine whose default is not reachable
        by the cluster).
    progress : bool, default=True
    start_timeout : float, default=300
        Seconds to wait for the actors to start (the cluster may lack the resources asked for).
    collective : bool, default=False
        Run iterative drivers (``drive``: Lloyd's loop of KMeans) on the workers in lockstep, each
        worker taking a fixed share of the units and exchanging partials with the others (NCCL
        between GPUs, gloo between CPUs), rather than one pass at a time from this driver. For
        data the workers keep in memory between passes, where a pass is short (see
        ``runtime/collective.py``). Single passes (``map_reduce``) are dispatched as usual.
    collective_timeout : float, default=1800
        Seconds a worker of a collective waits for the others before failing.

    Attributes
    ----------
    retries : int
        Transient storage errors retried by the workers so far.
    replaced : int
        Workers that died and were replaced.

    Examples
    --------
    >>> from mega_taxonomy import KMeans
    >>> runtime = RayRuntime(address="127.0.0.2:6379")  # doctest: +SKIP
    >>> KMeans(16, runtime=runtime).fit("s3://bucket/embeddings/*.parquet")  # doctest: +SKIP
    """

    def __init__(self, address=None, num_workers=None, *, gpus_per_worker=None, cpus_per_worker=1.0,
                 reduce_blocks=1, in_flight=2, dispatch_units=None, state_uri=None, storage_options=None,
                 broadcast_bytes=64 << 20, ray_remote_args=None, max_attempts=3, node_ip_address=None, progress=True,
                 start_timeout=300.0, collective=False, collective_timeout=1800.0):
        units(1, reduce_blocks)  # validates it
        if in_flight < 1 or max_attempts < 1:
            raise ConfigError("in_flight and max_attempts must be >= 1")
        if not ray.is_initialized():
            kwargs = {"address": address or "auto"}
            if node_ip_address is not None:
                kwargs["_node_ip_address"] = node_ip_address
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise ConfigError(f"no Ray cluster at {address or 'auto'!r} ({exc}); start one with `ray start "
                                  "--head` or use RayRuntime.local()") from exc
        self._owns_cluster = False
        resources = ray.cluster_resources()
        if gpus_per_worker is None:
            gpus_per_worker = 1 if resources.get("GPU", 0) >= 1 else 0
        if num_workers is None:
            if gpus_per_worker:
                num_workers = int(resources.get("GPU", 0) // gpus_per_worker)
            else:
                num_workers = int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-9))
        if num_workers < 1:
            raise ConfigError(f"no room for a worker on the cluster ({resources})")
        self.address = address
        self.num_workers = int(num_workers)
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.reduce_blocks, self.in_flight, self.max_attempts = reduce_blocks, in_flight, max_attempts
        self.dispatch_units = dispatch_units
        self.ray_remote_args = dict(ray_remote_args or {})
        self.state_uri, self._storage_options, self.broadcast_bytes = state_uri, storage_options, broadcast_bytes
        self.progress, self.start_timeout = progress, start_timeout
        self.collective, self.collective_timeout = collective, collective_timeout
        self.retries = self.replaced = 0
        self._workers, self._group = [], []
        self._sources = weakref.WeakKeyDictionary()  # source -> {"token", "ref", "owner"}
        self._state_store = None

    @classmethod
    def local(cls, num_cpus=None, num_gpus=None, *, node_ip_address="127.0.0.1", **kwargs):
        """Start a single-node Ray cluster in this process, bound to ``node_ip_address``, and run on it.

        :meth:`close` shuts it down. Other keyword arguments are RayRuntime's.

        Examples
        --------
        >>> with RayRuntime.local(num_cpus=2) as runtime:  # doctest: +SKIP
        ...     KMeans(8, runtime=runtime).fit(X)
        """
        if ray.is_initialized():
            raise ConfigError("Ray is already initialized in this process: use RayRuntime() to run on it")
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address=node_ip_address, include_dashboard=False)
        try:
            runtime = cls(**kwargs)
        except BaseException:
            ray.shutdown()
            raise
        runtime._owns_cluster = True
        return runtime

    # -- workers -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where workers compute (and the driver's own small computations, e.g. k-means++ on a
        sample: on CUDA when workers use GPUs and this process has one, else on the CPU)."""
        return torch.device("cuda" if self.gpus_per_worker and torch.cuda.is_available() else "cpu")

    def _kind(self) -> str:
        return "cuda" if self.gpus_per_worker else "cpu"

    def _options(self) -> dict:
        # max_restarts=0: a dead actor is replaced by the driver, which knows what it was doing.
        # SPREAD: actors over all nodes, not packed on the first one.
        return dict(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0,
                    max_task_retries=0, scheduling_strategy="SPREAD", **self.ray_remote_args)

    def _start(self, remote_class, args_of_rank, n):
        actors = [remote_class.options(**self._options()).remote(*args_of_rank(rank)) for rank in range(n)]
        pings = [actor.pid.remote() for actor in actors]
        ready, _ = ray.wait(pings, num_returns=len(pings), timeout=self.start_timeout)
        if len(ready) < len(pings):
            for actor in actors:
                ray.kill(actor)
            raise WorkerError(f"{len(pings) - len(ready)} of {n} workers ({self.cpus_per_worker} CPU, "
                              f"{self.gpus_per_worker} GPU each) did not start within {self.start_timeout} s; "
                              f"the cluster has {ray.cluster_resources()}")
        ray_get(pings)  # raises a constructor's error
        return actors

    def _ensure_workers(self):
        if not self._workers:
            self._workers = self._start(RemoteBlockWorker, lambda rank: (self._kind(), self.cpus_per_worker),
                                        self.num_workers)
        return self._workers

    def worker_pids(self) -> list[int]:
        """The process id of every block worker (starting them if needed)."""
        return ray.get([worker.pid.remote() for worker in self._ensure_workers()])

    def release(self) -> None:
        """Stop the block workers (and a collective group) until the next pass starts them again:
        their slots go to a pool started after this, such as a taxonomy's subtree fitters."""
        for worker in self._workers:
            ray.kill(worker)
        self._workers = []
        self._close_group()

    def pool(self, factory, n_workers=1):
        """``n_workers`` actors, worker ``rank`` holding ``factory(rank)`` (picklable)."""
        kind, cpus = self._kind(), self.cpus_per_worker
        return RayPool(self._start(RemotePoolWorker, lambda rank: (factory, rank, kind, cpus), n_workers))

    def close(self) -> None:
        """Stop the workers (and the cluster, when :meth:`local` started it)."""
        self.release()
        self._sources = weakref.WeakKeyDictionary()
        if self._owns_cluster and ray.is_initialized():
            ray.shutdown()
            self._owns_cluster = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"RayRuntime(address={self.address!r}, num_workers={self.num_workers}, "
                f"device={self._kind()!r}, reduce_blocks={self.reduce_blocks}, collective={self.collective})")

    # -- collective drivers --------------------------------------------------------------------
    def _ensure_group(self):
        if not self._group:
            actors = self._start(RemoteCollectiveWorker, lambda rank: (self._kind(), self.cpus_per_worker),
                                 self.num_workers)
            form_group(actors, self.collective_timeout)
            self._group = actors
        return self._group

    def _close_group(self):
        for actor in self._group:
            ray.kill(actor)
        self._group = []

    def drive(self, fn, *args, **kwargs):
        """Run ``fn(*args, runtime=..., **kwargs)``: here, passes dispatched one by one; with
        ``collective=True`` on every worker in lockstep (rank 0's result is returned). A worker
        lost during a collective stops the group; it is started again and ``fn`` rerun, from the
        start (drivers that checkpoint resume from their checkpoint), ``max_attempts`` times at
        most."""
        if not self.collective:
            return super().drive(fn, *args, **kwargs)
        job = ray.put((fn, args, kwargs))  # pickled once, fetched by every worker
        for attempt in range(1, self.max_attempts + 1):
            refs = [actor.run.remote(job, self.reduce_blocks) for actor in self._ensure_group()]
            try:
                return await_group(refs, self._close_group)
            except LOST as exc:  # the group is stopped already
                self.replaced += 1
                if attempt == self.max_attempts:
                    raise WorkerError(f"a collective lost a worker {attempt} times; last: {type(exc).__name__}") from exc
                logger.warning("a worker of the collective died (%s); starting the group again", type(exc).__name__)

    # -- passes ------------------------------------------------------------------------------
    def _put_source(self, source) -> dict:
        entry = self._sources.get(source)
        if entry is None:
            # Pickled once into the object store (files as URIs and options; in-memory arrays
            # as data), unpickled once per worker.
            entry = {"token": uuid.uuid4().hex, "ref": ray.put(source), "owner": {}}
            self._sources[source] = entry
        return entry

    def _items(self, n_units: int) -> list[range]:
        """Dispatched items: runs of consecutive units of about a shard's rows each (files are
        read sequentially within an item), but at least 4 items per worker where there are enough
        units, for balance."""
        per_item = self.dispatch_units
        if per_item is None:
            per_shard = max(1, SHARD_ROWS // (BLOCK_ROWS * self.reduce_blocks))
            per_item = max(1, min(per_shard, math.ceil(n_units / (4 * self.num_workers))))
        return [range(lo, min(lo + per_item, n_units)) for lo in range(0, n_units, per_item)]

    def _spill(self, state, pass_id):
        if self.state_uri is None:
            return state, []
        if self._state_store is None:
            self._state_store = Store(self.state_uri, storage_options=self._storage_options)
        return spill(state, self._state_store, f"passes/{pass_id}", self.broadcast_bytes, self._storage_options)

    def _unspill(self, names):
        if names:
            for name in names:
                self._state_store.delete(name)
            self._state_store.commit(kind="ray-state", params={}, status="idle")

    def map_reduce(self, source, task, state, *, desc=None):
        unit_ranges = units(source.n_blocks, self.reduce_blocks)
        if not unit_ranges:
            raise ValueError(f"{source!r} has no blocks")
        workers = self._ensure_workers()
        entry = self._put_source(source)
        pass_id = uuid.uuid4().hex
        state, spilled = self._spill(to_host(state), pass_id)  # device tensors travel as numpy
        try:
            return self._run(source, entry, pass_id, ray.put(state), task, unit_ranges, len(workers), desc)
        finally:
            self._unspill(spilled)

    def _run(self, source, entry, pass_id, state_ref, task, unit_ranges, n_workers, desc):
        started = time.perf_counter()
        items = self._items(len(unit_ranges))
        schedule = Schedule(len(items), n_workers, previous=entry["owner"])
        reducer = OrderedReducer(len(items))
        lost = collections.Counter()  # item -> times its worker died
        generation = [0] * n_workers  # bumped when a slot's actor is replaced
        load = [0] * n_workers  # items queued on each slot's current actor
        pending = {}  # ObjectRef -> (slot, generation, item)
        retried = 0

        def submit(slot, up_to=self.in_flight):
            while load[slot] < up_to:
                item = schedule.next_for(slot)
                if item is None:
                    return
                first, last = unit_ranges[items[item][0]], unit_ranges[items[item][-1]]
                ref = self._workers[slot].run.remote(
                    entry["token"], [entry["ref"]], pass_id, [state_ref], task, first.start, last.stop)
                pending[ref] = (slot, generation[slot], item)
                load[slot] += 1

        for depth in range(1, self.in_flight + 1):  # one item each before anyone queues a second
            for slot in range(n_workers):
                submit(slot, depth)
        bar = tqdm(total=source.n_blocks, desc=desc, unit="block", disable=not self.progress or None, leave=False)
        with bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                slot, gen, item = pending.pop(ref)
                current = gen == generation[slot]
                if current:
                    load[slot] -= 1
                try:
                    partial, n_retried = ray_get(ref)
                except LOST as exc:
                    lost[item] += 1
                    if lost[item] >= self.max_attempts:
                        raise WorkerError(f"blocks of item {item} lost their worker {lost[item]} times; "
                                          f"last: {type(exc).__name__}") from exc
                    schedule.requeue(item)
                    if current:  # the first news of this actor's death: replace it
                        logger.warning("worker %d died (%s); replacing it and re-running its blocks",
                                       slot, type(exc).__name__)
                        self._workers[slot] = RemoteBlockWorker.options(**self._options()).remote(
                            self._kind(), self.cpus_per_worker)
                        generation[slot] += 1
                        load[slot] = 0
                        self.replaced += 1
                    for other in range(n_workers):  # an idle worker may take the item first
                        submit(other)
                    continue
                retried += n_retried
                reducer.add(item, partial)
                schedule.done(item, slot)
                bar.update(sum(len(unit_ranges[u]) for u in items[item]))
                submit(slot)
        entry["owner"] = schedule.owner
        self.retries += retried
        if retried:
            logger.warning("%s: workers retried %d transient storage errors", desc or "pass", retried)
        logger.debug("%s: %d units in %d items on %d workers, %.3f s", desc or "pass", len(unit_ranges),
                     len(items), n_workers, time.perf_counter() - started)
        return settled(reducer.result())
