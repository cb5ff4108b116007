"""RayRuntime: passes over data and pools of stateful workers on a Ray cluster.

The seed's architecture: a driver hands out ranges of blocks to workers, the workers read their
blocks from storage themselves (the driver never touches the data), compute partial sums with
the current state and send them back; the driver adds them up. Here:

- Workers are Ray actors, one per GPU or per CPU slot. An actor keeps the sources it read (with
  their caches of decoded blocks) and the state of the current pass, so a pass sends the state
  once per worker (``ray.put`` once, each actor resolves it once) and later passes hit caches.
- Dispatch is dynamic: each actor has ``in_flight`` items queued, and whichever finishes gets
  the next item. Items go back to the worker that had them in the previous pass (its cache),
  and idle workers steal (``schedule.py``).
- A worker returns one partial per unit of ``reduce_blocks`` blocks, keyed by unit; the driver
  adds units in unit order (``OrderedReducer``), so the result is bit-identical to a
  ``LocalRuntime`` with the same ``reduce_blocks``, whatever the number of workers or the order
  they finish in.
- A worker that dies (its process killed, its node lost) is replaced and its items run again
  elsewhere; a unit is counted once however many times it ran. Transient storage errors inside
  a worker are retried with backoff there (``storage/retry.py``) and counted in ``retries``.
- With ``collective=True``, iterative drivers (``runtime.drive(lloyd, ...)``) run on every worker
  in lockstep instead, exchanging partials worker to worker (``collective.py``): no round trip
  through the driver per pass. A lost worker fails the group, which is started again and the
  driver rerun, with the same result.
- Arrays of a state above ``broadcast_bytes`` (a level of millions of centroids) are written to
  the Store at ``state_uri`` and memory-mapped by the workers, instead of going through Ray's
  object store (``state.py``).

Library code never starts Ray: ``RayRuntime(address=...)`` attaches to a running cluster, and
:meth:`RayRuntime.local` is the one explicit way to start one.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time
import uuid
import warnings
import weakref

try:
    import ray
    from ray import exceptions as ray_errors
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("RayRuntime needs Ray: pip install 'mega-taxonomy[ray]'") from exc
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, WorkerError
from ..io.sources import BLOCK_ROWS, SHARD_ROWS
from ..storage import Store
from ..storage.retry import retries, retry
from ..threads import set_cpu_threads
from .base import OrderedReducer, Runtime, WorkerPool, block_partials, reduce_units, units
from .collective import CollectiveRuntime, join_group
from .local import cpu_threads
from .schedule import Schedule
from .state import resolve, spill
from .transfer import to_host

logger = logging.getLogger(__name__)

# What a lost worker looks like to the driver: its process or node died, or its result is gone.
_LOST = (ray_errors.RayActorError, ray_errors.WorkerCrashedError, ray_errors.ObjectLostError,
         ray_errors.NodeDiedError)
_SOURCES_PER_WORKER = 2  # sources an actor keeps open (a fit's data and a predict's, say)


# Set in an actor's environment (``ray_remote_args={"runtime_env": {"env_vars": {...: "1"}}}``),
# Ray leaves CUDA_VISIBLE_DEVICES alone: the actor sees every GPU of its node, as Ray Train's
# workers do so that NCCL may go from GPU to GPU, and uses the one Ray gave it.
_SEE_NODE_GPUS = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


def _device(kind: str) -> torch.device:
    if kind != "cuda":
        return torch.device("cpu")
    if os.environ.get(_SEE_NODE_GPUS) == "1":
        return torch.device("cuda", visible_index(ray.get_gpu_ids()[0], os.environ.get("CUDA_VISIBLE_DEVICES")))
    return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU alone


def visible_index(gpu_id, visible: str | None) -> int:
    """The CUDA device index, in this process, of the node's GPU ``gpu_id``: Ray's ids are values
    of the node's ``CUDA_VISIBLE_DEVICES`` list when it has one, else device indices.

    Examples
    --------
    >>> visible_index("3", "2,3"), visible_index(1, None)
    (1, 1)
    """
    if not visible:
        return int(gpu_id)
    return [v.strip() for v in visible.split(",")].index(str(gpu_id))


def _init_threads(device: torch.device, cpus: float) -> None:
    # One CPU slot per actor: torch's own threads would fight the other actors for the cores
    # (the same setting as LocalRuntime's, so that the bits are the same), and our CPU work runs
    # on as many threads as the actor has CPUs (results do not depend on the thread count).
    if device.type == "cpu":
        torch.set_num_threads(1)
    set_cpu_threads(max(1, int(cpus)))


class _Worker:
    """What every actor of ours shares: its device, threads and process id."""

    def __init__(self, device_kind: str, cpus: float = 1.0):
        self.device = _device(device_kind)
        _init_threads(self.device, cpus)
        # States arrive as read-only views of Ray's shared memory (or memory maps) and no task
        # writes to them; torch would warn about every such array turned into a tensor.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def pid(self) -> int:
        return os.getpid()


class _BlockWorker(_Worker):
    """A Ray actor computing ranges of blocks: ``run`` returns one partial per unit."""

    def __init__(self, device_kind: str, cpus: float = 1.0):
        super().__init__(device_kind, cpus)
        self._sources = collections.OrderedDict()  # token -> VectorSource, most recent last
        self._pass, self._state = None, None

    def node(self) -> str:
        return ray.util.get_node_ip_address()

    def _source(self, token, box):
        if token not in self._sources:
            # unpickling reopens the files (metadata only); the block cache then lives here
            self._sources[token] = ray.get(box[0])
            while len(self._sources) > _SOURCES_PER_WORKER:
                self._sources.popitem(last=False)
        self._sources.move_to_end(token)
        return self._sources[token]

    def run(self, token, source_box, pass_id, state_box, task, start, stop, n_blocks, reduce_blocks):
        """Partials of the units of blocks [start, stop): a list, in unit order, and the number of
        transient errors retried. ``*_box`` are one-element lists of ObjectRefs, so that Ray hands
        over the refs (resolved here once per worker) instead of the objects at every call."""
        source = self._source(token, source_box)
        if self._pass != pass_id:
            self._pass, self._state = None, None  # drop the previous state before fetching this one
            self._state, self._pass = resolve(ray.get(state_box[0])), pass_id
        state = self._state
        before = retries()

        def compute():
            blocks = source.blocks(start, stop)
            pairs = block_partials(task, blocks, state, self.device)
            return list(reduce_units(pairs, n_blocks, reduce_blocks))

        with cpu_threads(self.device):
            partials = retry(compute, what=f"blocks [{start}, {stop}) of {source!r}")
        return to_host(partials), retries() - before


class _CollectiveWorker(_Worker):
    """A Ray actor that is one rank of a ``torch.distributed`` group and runs drivers in it."""

    def endpoint(self) -> str:
        """``host:port`` where this actor (rank 0) can host the group's rendezvous."""
        host = ray.util.get_node_ip_address()
        with socket.socket() as probe:
            probe.bind((host, 0))
            return f"{host}:{probe.getsockname()[1]}"

    def join(self, endpoint: str, rank: int, world: int, timeout: float):
        self.objects = join_group(endpoint, rank, world, self.device, timeout)
        self.rank, self.world = rank, world

    def run(self, job, reduce_blocks):
        fn, args, kwargs = job
        runtime = CollectiveRuntime(self.rank, self.world, self.device, reduce_blocks, self.objects)
        result = fn(*args, runtime=runtime, **kwargs)
        return to_host(result) if self.rank == 0 else None


class _PoolWorker(_Worker):
    """A Ray actor holding ``factory(rank)`` and calling its methods by name."""

    def __init__(self, factory, rank: int, device_kind: str, cpus: float = 1.0):
        super().__init__(device_kind, cpus)
        self._obj = factory(rank)

    def call(self, method, args, kwargs):
        return getattr(self._obj, method)(*args, **kwargs)

    def close(self):
        close = getattr(self._obj, "close", None)
        if close is not None:
            close()


_RemoteBlockWorker = ray.remote(_BlockWorker)
_RemotePoolWorker = ray.remote(_PoolWorker)
_RemoteCollectiveWorker = ray.remote(_CollectiveWorker)


def _get(refs):
    """``ray.get`` that raises a task's own error (a DataError stays a DataError)."""
    try:
        return ray.get(refs)
    except ray_errors.RayTaskError as exc:
        raise exc.cause from exc


class RayPool(WorkerPool):
    """Stateful workers as Ray actors (built by ``factory(rank)`` in the actor)."""

    def __init__(self, actors):
        self._actors = list(actors)

    @property
    def size(self) -> int:
        return len(self._actors)

    def call(self, rank, method, *args, **kwargs):
        return _get(self._actors[rank].call.remote(method, args, kwargs))

    def broadcast(self, method, *args, **kwargs):
        # all workers at once, unlike the base class's one after the other
        return _get([actor.call.remote(method, args, kwargs) for actor in self._actors])

    def pids(self) -> list[int]:
        return ray.get([actor.pid.remote() for actor in self._actors])

    def close(self) -> None:
        try:
            _get([actor.close.remote() for actor in self._actors])
        finally:
            for actor in self._actors:
                ray.kill(actor)
            self._actors = []


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
        Blocks a worker adds up before sending a partial (see ``runtime.base``): the partial-sum
        traffic per pass is ``n_blocks / reduce_blocks`` partials. Results equal a LocalRuntime's
        with the same value.
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
        _get(pings)  # raises a constructor's error
        return actors

    def _ensure_workers(self):
        if not self._workers:
            self._workers = self._start(_RemoteBlockWorker, lambda rank: (self._kind(), self.cpus_per_worker),
                                        self.num_workers)
        return self._workers

    def worker_pids(self) -> list[int]:
        """The process id of every block worker (starting them if needed)."""
        return ray.get([worker.pid.remote() for worker in self._ensure_workers()])

    def pool(self, factory, n_workers=1):
        """``n_workers`` actors, worker ``rank`` holding ``factory(rank)`` (picklable)."""
        kind, cpus = self._kind(), self.cpus_per_worker
        return RayPool(self._start(_RemotePoolWorker, lambda rank: (factory, rank, kind, cpus), n_workers))

    def close(self) -> None:
        """Stop the workers (and the cluster, when :meth:`local` started it)."""
        for worker in self._workers:
            ray.kill(worker)
        self._workers = []
        self._close_group()
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
            actors = self._start(_RemoteCollectiveWorker, lambda rank: (self._kind(), self.cpus_per_worker),
                                 self.num_workers)
            endpoint = ray.get(actors[0].endpoint.remote())
            try:
                _get([actor.join.remote(endpoint, rank, len(actors), self.collective_timeout)
                      for rank, actor in enumerate(actors)])
            except BaseException:
                for actor in actors:
                    ray.kill(actor)
                raise
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
                return self._await_group(refs)
            except _LOST as exc:  # the group is stopped already
                self.replaced += 1
                if attempt == self.max_attempts:
                    raise WorkerError(f"a collective lost a worker {attempt} times; last: {type(exc).__name__}") from exc
                logger.warning("a worker of the collective died (%s); starting the group again", type(exc).__name__)

    def _await_group(self, refs):
        """Rank 0's result once every rank is done. When one fails, the others may be stuck in a
        collective with it: the group is stopped, and the failure raised as a loss when any rank
        was lost (the others' errors then follow from it), else as the rank's own error."""
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except Exception as first:  # any failure stops the group, then is raised
                lost = first if isinstance(first, _LOST) else None
                if lost is None:  # a lost peer's ref fails within seconds; a live one is stuck
                    finished, _ = ray.wait(pending, num_returns=len(pending), timeout=10.0)
                    for ref in finished:
                        try:
                            ray.get(ref)
                        except _LOST as exc:
                            lost = exc
                        except Exception:  # noqa: BLE001, S110 - the peers' own failures follow from the first
                            pass
                self._close_group()
                if lost is not None:
                    raise lost from first
                raise first.cause if isinstance(first, ray_errors.RayTaskError) else first
        return ray.get(refs[0])

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
        reducer = OrderedReducer(len(unit_ranges))
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
                    entry["token"], [entry["ref"]], pass_id, [state_ref], task, first.start, last.stop,
                    source.n_blocks, self.reduce_blocks)
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
                    partials, n_retried = _get(ref)
                except _LOST as exc:
                    lost[item] += 1
                    if lost[item] >= self.max_attempts:
                        raise WorkerError(f"blocks of item {item} lost their worker {lost[item]} times; "
                                          f"last: {type(exc).__name__}") from exc
                    schedule.requeue(item)
                    if current:  # the first news of this actor's death: replace it
                        logger.warning("worker %d died (%s); replacing it and re-running its blocks",
                                       slot, type(exc).__name__)
                        self._workers[slot] = _RemoteBlockWorker.options(**self._options()).remote(
                            self._kind(), self.cpus_per_worker)
                        generation[slot] += 1
                        load[slot] = 0
                        self.replaced += 1
                    for other in range(n_workers):  # an idle worker may take the item first
                        submit(other)
                    continue
                retried += n_retried
                for unit, partial in zip(items[item], partials):
                    reducer.add(unit, partial)
                schedule.done(item, slot)
                bar.update(sum(len(unit_ranges[u]) for u in items[item]))
                submit(slot)
        entry["owner"] = schedule.owner
        self.retries += retried
        if retried:
            logger.warning("%s: workers retried %d transient storage errors", desc or "pass", retried)
        logger.debug("%s: %d units in %d items on %d workers, %.3f s", desc or "pass", len(unit_ranges),
                     len(items), n_workers, time.perf_counter() - started)
        return reducer.result()
