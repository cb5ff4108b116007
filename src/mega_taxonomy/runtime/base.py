"""Where work runs: the Runtime protocol shared by LocalRuntime and RayRuntime.

Everything that passes over data is a map-reduce of additive partial statistics (DESIGN.md,
"The central loop"). A task maps one Block (a fixed range of global row ordinals) to a Partial,
computed in a fixed order within the block; the runtime adds the partials up. Every float sum
in a partial is exact while partials are added (:class:`ExactPart`, ``ops.exact.ExactSum``),
and the rest is counts, selections and per-block outputs, whose sums do not depend on order
either. So the result does not depend on how files are cut into shards, how many workers ran,
which one finished first, or how blocks were grouped: a worker adds up all the blocks it was
given and sends one partial, and ranks all-reduce theirs.

Blocks are grouped in *units* of ``reduce_blocks`` consecutive blocks: what a collective rank's
share and a remote runtime's dispatched items are made of. The runtimes still add partials in
block order (unit order, item order), which changes nothing in the result, keeps per-block
outputs (labels) in order, and holds only the partials ahead of the first missing one.

The second shape of distributed work is a pool of stateful workers (each holding part of the
data or an index and answering requests): PANDA's kd-tree and batch serving use it.
"""

from __future__ import annotations

import abc
import dataclasses
import operator
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

P = TypeVar("P", bound="Partial")


@runtime_checkable
class Partial(Protocol):
    """Small additive statistics of one block: ``a + b`` merges two of them.

    Addition must not modify its operands, and the runtime always adds in block order
    (``((p0 + p1) + p2) + ...``), so float64 sums are reproducible bit for bit.

    The runtime adds with ``total += partial`` (:func:`add_to`), on a running total that only it
    holds (the first partial, then the sums). A type may define ``__iadd__`` to update itself in
    place, giving what ``+`` gives: a selection of rows kept as a table and updated block by
    block (``partials.best_per_group``), or a partial that holds such parts
    (:class:`CompositePartial`). Without one, Python computes ``total + partial``.
    """

    def __add__(self, other):  # pragma: no cover - protocol
        ...


class BlockTask(Protocol[P]):
    """A picklable callable computing the Partial of one block: ``task(block, state, device)``,
    or a :class:`Deferred` that gives it.

    A task may also offer ``task.whole(block, state, device, part=False)``: the partial of a block
    that holds every block of the source (rows on the device already, ``io.streaming.resident``),
    or, with ``part``, a run of consecutive blocks (``io.streaming.stream_runs``: rows in host
    memory, copied to the device a run at a time), equal to the bit to the sum of the blocks'
    partials (its float sums exact: :class:`ExactPart`), or None where ``state`` needs the blocks
    one by one, which ``task.takes_whole(state)`` tells beforehand. LocalRuntime then makes the
    pass in that one call, or one call a run, with no host work per block."""

    def __call__(self, block, state, device) -> P | Deferred:  # pragma: no cover - protocol
        ...


class Deferred:
    """What a task returns when its partial needs values still on their way from the device:
    ``finish()`` waits for them and gives the partial. Runtimes call it once the next block's
    task has queued its device work (:func:`block_partials`), so that the host's half of one
    block (copies out, selections in numpy) runs while the device computes the next, rather
    than after waiting for its own block's kernels. Deferred results never leave the process
    that computed them."""

    def __init__(self, finish: Callable[[], Any]):
        self.finish = finish


class ExactPart(abc.ABC):
    """A part of a partial whose sum does not depend on the order of the additions (an exact sum:
    ``ops.exact.ExactSum``). Runtimes may then add such parts in any order or grouping, and ranks
    may sum them by one ``all_reduce`` instead of gathering every partial
    (:class:`~mega_taxonomy.runtime.collective.CollectiveRuntime`); :func:`settled` reads them as
    plain arrays once a pass is over."""

    @abc.abstractmethod
    def value(self):
        """The sum as a plain value (a float64 array, tensor or float)."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where the sum is held (parts on the host and on a GPU are reduced by different groups)."""

    @abc.abstractmethod
    def spec(self) -> tuple:
        """What :meth:`from_spec` needs to make an empty sum of the same kind (small, picklable)."""

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: tuple, device) -> ExactPart:
        """An empty sum of ``spec`` on ``device``: what a rank without partials adds."""

    @classmethod
    @abc.abstractmethod
    def all_reduce(cls, parts: list, group=None) -> list:
        """The sums over every rank of ``torch.distributed``'s ``group`` of ``parts`` (the same
        kinds and shapes in the same order on every rank), in as few collectives as it takes."""


def replaced(partial, kind: type, fn):
    """A copy of ``partial`` with every instance of ``kind`` in its fields (and its fields'
    fields, for fields that are dataclasses) replaced by ``fn(instance)``, in field order;
    ``partial`` itself where it holds none."""
    if isinstance(partial, kind):
        return fn(partial)
    if not dataclasses.is_dataclass(partial) or isinstance(partial, type):
        return partial
    changes = {}
    for field in dataclasses.fields(partial):
        value = getattr(partial, field.name)
        new = replaced(value, kind, fn)
        if new is not value:
            changes[field.name] = new
    return dataclasses.replace(partial, **changes) if changes else partial


def settled(partial):
    """``partial`` with every :class:`ExactPart` in it read as a plain value (a copy): what a pass
    gives back once its partials are all added."""
    return replaced(partial, ExactPart, lambda part: part.value())


def finished(result):
    """The partial of a task's result, finishing a :class:`Deferred` now (a caller that needs
    each block's partial before the next block's task)."""
    return result.finish() if isinstance(result, Deferred) else result


def block_partials(task, blocks, state, device):
    """Yield ``(block index, partial)`` for ``blocks``, in order: ``task(block, state, device)``,
    with a :class:`Deferred` result finished after the next block's task has run."""
    pending = None
    for block in blocks:
        result = task(block, state, device)
        if pending is not None:
            yield pending[0], pending[1].finish()
            pending = None
        if isinstance(result, Deferred):
            pending = (block.index, result)
        else:
            yield block.index, result
    if pending is not None:
        yield pending[0], pending[1].finish()


def add_to(total, partial):
    """``total + partial``, where ``total`` is a running total only the runtime holds: in place
    (``total += partial``) for the partials that update themselves (``__iadd__``), but never for
    arrays and lists, whose in-place add would write into what a task returned (a view of its
    block, say)."""
    if isinstance(total, (np.ndarray, torch.Tensor, list)):
        return total + partial
    total += partial
    return total


class CompositePartial:
    """A partial holding partials of its own (samples, selections): ``+`` and ``+=`` both go
    through ``self._plus(other, add)``, which adds those with ``add``: ``operator.add``, or
    ``operator.iadd`` when ``self`` is the runtime's running total (:func:`add_to`), so that they
    too are updated in place."""

    def __add__(self, other):
        return self._plus(other, operator.add)

    def __iadd__(self, other):
        return self._plus(other, operator.iadd)


def in_block_order(parts: dict) -> tuple:
    """``{block index: (array, array, ...)}`` joined field by field in block order: how partials
    that keep per-row outputs (labels, paths) give them back in input order."""
    blocks = sorted(parts)
    return tuple(_joined([parts[b][i] for b in blocks]) for i in range(len(parts[blocks[0]])))


def _joined(arrays: list):
    """Arrays end to end: a tensor on the device of the first tensor among them (a pass by runs
    keeps a run's labels on the GPU), else a numpy array."""
    device = next((a.device for a in arrays if isinstance(a, torch.Tensor)), None)
    if device is None:
        return np.concatenate(arrays)
    return torch.cat([torch.as_tensor(a, device=device) for a in arrays])


def units(n_blocks: int, reduce_blocks: int = 1) -> list[range]:
    """The block ranges that are reduced (and dispatched) as one: ``reduce_blocks`` consecutive blocks.

    Examples
    --------
    >>> units(5, 2)
    [range(0, 2), range(2, 4), range(4, 5)]
    """
    if isinstance(reduce_blocks, bool) or not isinstance(reduce_blocks, int) or reduce_blocks < 1:
        raise ValueError(f"reduce_blocks must be a positive int, not {reduce_blocks!r}")
    return [range(start, min(start + reduce_blocks, n_blocks)) for start in range(0, n_blocks, reduce_blocks)]


class OrderedReducer:
    """Adds the partials of units in unit order, whatever order they arrive in.

    Only the partials ahead of the first missing unit are held (a running frontier), so memory
    stays small when units complete roughly in order. A unit given twice (a retried unit whose
    first attempt also came back) is counted once.

    Examples
    --------
    >>> reducer = OrderedReducer(3)
    >>> [reducer.add(unit, (unit,)) for unit in (2, 0, 0, 1)]
    [True, True, False, True]
    >>> reducer.result()
    (0, 1, 2)
    """

    def __init__(self, n_units: int):
        self.n_units, self.frontier = n_units, 0
        self._total, self._ahead = None, {}

    def add(self, unit: int, partial) -> bool:
        """Take the partial of ``unit``; False (ignored) when that unit was already taken."""
        if unit < self.frontier or unit in self._ahead:
            return False
        self._ahead[unit] = partial
        while self.frontier in self._ahead:
            partial = self._ahead.pop(self.frontier)
            self._total = partial if self._total is None else add_to(self._total, partial)
            self.frontier += 1
        return True

    @property
    def done(self) -> bool:
        return self.frontier == self.n_units

    def result(self):
        if not self.done:
            raise RuntimeError(f"units {self.frontier}.. of {self.n_units} are missing")
        return self._total


def fold(partials):
    """``((p0 + p1) + p2) + ...``: the sum of one unit's block partials, in block order."""
    total = None
    for partial in partials:
        total = partial if total is None else add_to(total, partial)
    return total


def reduce_units(block_partials, n_blocks: int, reduce_blocks: int = 1):
    """Yield the partial of every unit from ``(block index, partial)`` pairs given in block order
    (one pass over a stream of blocks, so files are read sequentially)."""
    total = None
    for index, partial in block_partials:
        total = partial if total is None else add_to(total, partial)
        if (index + 1) % reduce_blocks == 0 or index + 1 == n_blocks:
            yield total
            total = None
    if total is not None:
        yield total


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
        """Apply ``task`` to every block of ``source`` and add the partials in block order
        (in units of ``reduce_blocks`` blocks, see the module's notes).

        Parameters
        ----------
        source : VectorSource
            The data; workers read their blocks themselves.
        task : BlockTask
            ``task(block, state, device) -> Partial`` (or a :class:`Deferred` giving it); must be
            picklable for remote runtimes.
        state
            Read-only input of the pass (e.g. the current centroids), sent once per worker.
        desc : str, optional
            Label of the progress bar.

        Returns
        -------
        Partial
            The sum of the block partials in block order.
        """

    def drive(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run an iterative driver, ``fn(*args, runtime=..., **kwargs)`` (``lloyd``, say), that makes
        its passes through the runtime it is given, and return its result.

        Here, in this process with this runtime; ``RayRuntime(collective=True)`` runs it on every
        worker in lockstep instead (``runtime/collective.py``), with the same result.
        """
        return fn(*args, runtime=self, **kwargs)

    @abc.abstractmethod
    def pool(self, factory: Callable[[int], Any], n_workers: int = 1) -> WorkerPool:
        """Start ``n_workers`` stateful workers, worker ``rank`` built by ``factory(rank)``."""

    def release(self) -> None:
        """Free what the passes' workers hold until the next pass (for a pool to start in their
        place); nothing to free here."""

    #: Whether passes run in this process, states and partials handed over by reference: then a
    #: pass may return per-row state for the next one (Lloyd's bounds) at no transfer cost.
    in_process = False

    #: Whether this is the process whose effects count when a driver runs on several at once
    #: (``drive`` on a collective runtime): hooks that write (checkpoints) run there only.
    leader = True

    @property
    @abc.abstractmethod
    def device(self):
        """The torch device workers compute on (for remote runtimes: the device kind)."""


def passes_here_on_cpu(runtime) -> bool:
    """Whether ``runtime``'s passes run in this process, on the CPU: per-row state then goes from
    one pass to the next (or to the output pass) at no transfer cost, computed by the compiled CPU
    kernels that routing shares bit for bit."""
    return runtime.in_process and torch.device(runtime.device).type == "cpu"
