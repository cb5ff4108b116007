"""Runtimes: where map-reduce passes and worker pools run: in-process, or on a Ray cluster."""

from .base import (
    BlockTask,
    CompositePartial,
    Deferred,
    ExactPart,
    OrderedReducer,
    Partial,
    Runtime,
    WorkerPool,
    finished,
    fold,
    in_block_order,
    passes_here_on_cpu,
    settled,
    units,
)
from .counting import CountingRuntime
from .iterate import Client, PassClock, Step, Update, iterate
from .local import LocalPool, LocalRuntime, cpu_threads, resolve_device

__all__ = [
    "BlockTask", "Client", "CompositePartial", "CountingRuntime", "Deferred", "ExactPart", "LocalPool", "LocalRuntime",
    "OrderedReducer", "Partial", "PassClock", "RayPool", "RayRuntime", "Runtime", "Step", "Update", "WorkerPool",
    "cpu_threads", "finished", "fold", "in_block_order", "iterate", "passes_here_on_cpu", "resolve_device",
    "settled", "units",
]


def __getattr__(name):
    if name in ("RayRuntime", "RayPool"):  # ray is an optional extra, slow to import: only when asked for
        from . import ray

        return getattr(ray, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_runtime(runtime=None, device="auto") -> Runtime:
    """The runtime an estimator uses: the one given, or a LocalRuntime on ``device``."""
    if runtime is None or runtime == "local":
        return LocalRuntime(device=device)
    if isinstance(runtime, Runtime):
        return runtime
    raise TypeError(f"runtime must be None, 'local' or a Runtime, got {runtime!r}")
