"""Runtimes: where map-reduce passes and worker pools run (in-process now, Ray next)."""

from .base import BlockTask, Partial, Runtime, WorkerPool, in_block_order
from .local import LocalPool, LocalRuntime, cpu_threads, resolve_device

__all__ = [
    "BlockTask",
    "LocalPool",
    "LocalRuntime",
    "Partial",
    "Runtime",
    "WorkerPool",
    "cpu_threads",
    "in_block_order",
    "resolve_device",
]


def get_runtime(runtime=None, device="auto") -> Runtime:
    """The runtime an estimator uses: the one given, or a LocalRuntime on ``device``."""
    if runtime is None or runtime == "local":
        return LocalRuntime(device=device)
    if isinstance(runtime, Runtime):
        return runtime
    raise TypeError(f"runtime must be None, 'local' or a Runtime, got {runtime!r}")
