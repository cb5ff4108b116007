"""LocalRuntime: the embedded default, in-process on the CPU or one CUDA device."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from .base import Runtime, WorkerPool

logger = logging.getLogger(__name__)


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

    Examples
    --------
    >>> import numpy as np
    >>> from mega_taxonomy.io import VectorSource
    >>> from mega_taxonomy.runtime import LocalRuntime
    >>> count = lambda block, state, device: len(block.ids)
    >>> LocalRuntime(device="cpu").map_reduce(VectorSource(np.ones((10, 4), "float32")), count, None)
    10
    """

    def __init__(self, device="auto", progress=True):
        self._device = resolve_device(device)
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return self._device

    def map_reduce(self, source, task, state, *, desc=None):
        total = None
        blocks = tqdm(
            source.blocks(), total=source.n_blocks, desc=desc, unit="block",
            disable=not self.progress or None, leave=False,
        )
        for block in blocks:
            partial = task(block, state, self._device)
            # Blocks arrive in order here, so a running sum is the block-order reduction.
            total = partial if total is None else total + partial
        if total is None:
            raise ValueError(f"{source!r} has no blocks")
        return total

    def pool(self, factory, n_workers=1):
        return LocalPool(factory(rank) for rank in range(n_workers))

    def __repr__(self):
        return f"LocalRuntime(device={str(self._device)!r})"
