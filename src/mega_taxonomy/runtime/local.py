"""LocalRuntime: the embedded default, in-process on the CPU or one CUDA device."""

from __future__ import annotations

import contextlib
import logging

import torch
from tqdm.auto import tqdm

from ..io.streaming import resident, run_blocks, stream, stream_runs
from .base import Runtime, WorkerPool, add_to, block_partials, fold, reduce_units, settled, units

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def cpu_threads(device, n=1):
    """Run torch's CPU operators on ``n`` threads for a while (then restore the setting).

    Our CPU work parallelizes over row tiles in our own threads, with numpy's OpenBLAS for the
    products; torch's OpenMP threads on top of that fight them for the cores: a grouped
    assignment of 65536 rows took 2.08 s with torch on 2 threads and 0.13 s on 1 (2 cores).
    """
    if torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device="auto") -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class LocalPool(WorkerPool):
    """Workers as plain objects in this process."""

    def __init__(self, workers):
        self._workers = list(workers)

    @property
    def size(self) -> int:
        return len(self._workers)

    def call(self, rank, method, *args, **kwargs):
        return getattr(self._workers[rank], method)(*args, **kwargs)

    def close(self) -> None:
        for worker in self._workers:
            close = getattr(worker, "close", None)
            if close is not None:
                close()
        self._workers = []


class LocalRuntime(Runtime):
    """Run every block in this process, in block order.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
        Where tasks compute.
    progress : bool, default=True
        Show a tqdm bar per pass (disabled automatically when not on a terminal).
    reduce_blocks : int, default=1
        Blocks summed as one unit before units are summed (see ``runtime.base``): a RayRuntime
        with the same value gives the same bits.

    Examples
    --------
    >>> import numpy as np
    >>> from mega_taxonomy.io import VectorSource
    >>> from mega_taxonomy.runtime import LocalRuntime
    >>> count = lambda block, state, device: len(block.ids)
    >>> LocalRuntime(device="cpu").map_reduce(VectorSource(np.ones((10, 4), "float32")), count, None)
    10
    """

    in_process = True

    def __init__(self, device="auto", progress=True, reduce_blocks=1):
        self._device = resolve_device(device)
        self.progress = progress
        self.reduce_blocks = reduce_blocks
        units(1, reduce_blocks)  # validates it

    @property
    def device(self) -> torch.device:
        return self._device

    def map_reduce(self, source, task, state, *, desc=None):
        with cpu_threads(self._device):  # as the blocks' tasks: a CPU product's bits depend on torch's threads
            whole = self._whole(source, task, state)
        if whole is not None:
            return settled(whole)
        # On CUDA, host blocks are copied ahead on a side stream through pinned buffers (io/streaming.py).
        blocks = tqdm(
            stream(source, self._device), total=source.n_blocks, desc=desc, unit="block",
            disable=not self.progress or None, leave=False,
        )
        with cpu_threads(self._device):
            total = fold(reduce_units(block_partials(task, blocks, state, self._device), source.n_blocks,
                                      self.reduce_blocks))
        if total is None:
            raise ValueError(f"{source!r} has no blocks")
        return settled(total)

    def _whole(self, source, task, state):
        """The pass in one call of ``task.whole`` (see ``BlockTask``), where the task offers it and
        the rows are on this runtime's GPU already; in a call per run of blocks where they are in
        host memory and this runtime is on a GPU; else None."""
        if not hasattr(task, "whole"):
            return None
        block = resident(source, self._device)
        if block is not None:
            return task.whole(block, state, self._device)
        size = run_blocks(source, self._device)
        if size is None or not task.takes_whole(state):
            return None
        return self._by_runs(source, task, state, size)

    def _by_runs(self, source, task, state, size):
        """The pass over runs of ``size`` blocks (``io.streaming.stream_runs``), each one call of
        ``task.whole(run, ..., part=True)``; a run with an invalid row goes block by block. The sum
        of the runs' partials is that of the blocks' (exact sums)."""
        total = None
        for start, stop, run in stream_runs(source, self._device, size):
            if run is None:
                blocks = stream(source, self._device, start, stop)
                part = fold(partial for _, partial in block_partials(task, blocks, state, self._device))
            else:
                part = task.whole(run, state, self._device, part=True)
            total = part if total is None else add_to(total, part)
        return total

    def pool(self, factory, n_workers=1):
        return LocalPool(factory(rank) for rank in range(n_workers))

    def __repr__(self):
        return f"LocalRuntime(device={str(self._device)!r}, reduce_blocks={self.reduce_blocks})"
