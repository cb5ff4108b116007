"""Where work runs: the Runtime protocol shared by LocalRuntime and RayRuntime.

Everything that passes over data is a map-reduce of additive partial statistics (DESIGN.md,
"The central loop"). A task maps one Block to a Partial; the runtime adds the partials up in
block order. Because blocks are fixed ranges of global row ordinals and the sum runs in block
order, the result does not depend on how files are cut into shards, how many workers ran, or
which one finished first.

The second shape of distributed work is a pool of stateful workers (each holding part of the
data or an index and answering requests): PANDA's kd-tree and batch serving use it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

P = TypeVar("P", bound="Partial")


@runtime_checkable
class Partial(Protocol):
    """Small additive statistics of one block: ``a + b`` merges two of them.

    Addition must not modify its operands, and the runtime always adds in block order
    (``((p0 + p1) + p2) + ...``), so float64 sums are reproducible bit for bit.
    """

    def __add__(self, other):  # pragma: no cover - protocol
        ...


class BlockTask(Protocol[P]):
    """A picklable callable computing the Partial of one block: ``task(block, state, device)``."""

    def __call__(self, block, state, device) -> P:  # pragma: no cover - protocol
        ...


def in_block_order(parts: dict) -> tuple:
    """``{block index: (array, array, ...)}`` joined field by field in block order: how partials
    that keep per-row outputs (labels, paths) give them back in input order."""
    blocks = sorted(parts)
    return tuple(np.concatenate([parts[b][i] for b in blocks]) for i in range(len(parts[blocks[0]])))


class WorkerPool(abc.ABC):
    """Stateful workers built by ``factory(rank)``, answering method calls by name."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Number of workers."""

    @abc.abstractmethod
    def call(self, rank: int, method: str, *args, **kwargs) -> Any:
        """Call ``method`` on worker ``rank`` and return its result."""

    def broadcast(self, method: str, *args, **kwargs) -> list:
        """Call ``method`` on every worker; results in rank order."""
        return [self.call(rank, method, *args, **kwargs) for rank in range(self.size)]

    def close(self) -> None:
        """Release the workers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Runtime(abc.ABC):
    """Runs passes over a VectorSource and pools of stateful workers."""

    @abc.abstractmethod
    def map_reduce(self, source, task: BlockTask[P], state, *, desc: str | None = None) -> P:
        """Apply ``task`` to every block of ``source`` and add the partials in block order.

        Parameters
        ----------
        source : VectorSource
            The data; workers read their blocks themselves.
        task : BlockTask
            ``task(block, state, device) -> Partial``; must be picklable for remote runtimes.
        state
            Read-only input of the pass (e.g. the current centroids), sent once per worker.
        desc : str, optional
            Label of the progress bar.

        Returns
        -------
        Partial
            The sum of the block partials in block order.
        """

    @abc.abstractmethod
    def pool(self, factory: Callable[[int], Any], n_workers: int = 1) -> WorkerPool:
        """Start ``n_workers`` stateful workers, worker ``rank`` built by ``factory(rank)``."""

    @property
    @abc.abstractmethod
    def device(self):
        """The torch device workers compute on (for remote runtimes: the device kind)."""

