"""The Ray actors of RayRuntime: block workers, pool workers and ranks of a collective.

Why a module of their own: an actor class is what Ray pickles and starts in a worker process,
so it must be importable there without the driver's bookkeeping. Each actor keeps what a
worker should keep between calls: its device and thread settings, the sources it read (with
their caches of decoded blocks) and the state of the current pass, so that a pass sends the
state once per worker and later passes hit the caches. The driver side is ``runtime.py``.
"""

from __future__ import annotations

import collections
import os
import socket
import warnings

import ray
import torch
from ray import exceptions as ray_errors

from ...storage.retry import retries, retry
from ...threads import set_cpu_threads
from ..base import block_partials, fold
from ..collective import CollectiveRuntime, join_group
from ..local import cpu_threads
from ...io.transfer import to_host
from .state import resolve

LOST = (ray_errors.RayActorError, ray_errors.WorkerCrashedError, ray_errors.ObjectLostError,
        ray_errors.NodeDiedError)
"""What a lost worker looks like to the driver: its process or node died, or its result is gone."""

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


def ray_get(refs):
    """``ray.get`` that raises a task's own error (a DataError stays a DataError)."""
    try:
        return ray.get(refs)
    except ray_errors.RayTaskError as exc:
        raise exc.cause from exc


class Worker:
    """What every actor of ours shares: its device, threads and process id."""

    def __init__(self, device_kind: str, cpus: float = 1.0):
        self.device = _device(device_kind)
        _init_threads(self.device, cpus)
        # States arrive as read-only views of Ray's shared memory (or memory maps) and no task
        # writes to them; torch would warn about every such array turned into a tensor.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def pid(self) -> int:
        return os.getpid()


class BlockWorker(Worker):
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

    def run(self, token, source_box, pass_id, state_box, task, start, stop):
        """The partial of blocks [start, stop), their sum (its float sums exact, so any grouping
        gives the same bits), and the number of transient errors retried. ``*_box`` are
        one-element lists of ObjectRefs, so that Ray hands over the refs (resolved here once per
        worker) instead of the objects at every call."""
        source = self._source(token, source_box)
        if self._pass != pass_id:
            self._pass, self._state = None, None  # drop the previous state before fetching this one
            self._state, self._pass = resolve(ray.get(state_box[0])), pass_id
        state = self._state
        before = retries()

        def compute():
            blocks = source.blocks(start, stop)
            return fold(partial for _, partial in block_partials(task, blocks, state, self.device))

        with cpu_threads(self.device):
            partial = retry(compute, what=f"blocks [{start}, {stop}) of {source!r}")
        return to_host(partial), retries() - before


class CollectiveWorker(Worker):
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


class PoolWorker(Worker):
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


RemoteBlockWorker = ray.remote(BlockWorker)
RemotePoolWorker = ray.remote(PoolWorker)
RemoteCollectiveWorker = ray.remote(CollectiveWorker)
