"""CollectiveRuntime: one rank of a group of workers that run the same driver in lockstep.

A map-reduce runtime sends every pass's state out and every partial back through a driver: a
round trip per pass that costs more than the pass itself when the data are small for the
workers (a Lloyd pass over 1M x 1024 rows takes ~10 ms on a GPU; its 4096 x 1024 float64
partial is 32 MiB). Here instead every worker runs the whole iterative driver (``lloyd``, say)
on the same inputs, with a runtime whose passes cover the worker's own share of the units, and
then exchange the units' partials directly (``torch.distributed``: NCCL from GPU to GPU, gloo
between CPUs). Every rank then adds the same partials in the same unit order, so every rank
holds the same bits as a ``LocalRuntime`` with the same ``reduce_blocks`` and takes the same
decisions (new centroids, convergence) without asking anyone.

Shares are static (rank r takes a contiguous run of units), which suits data that stay in the
workers' caches from pass to pass; a lost worker fails the whole group, and the caller runs it
again (``RayRuntime.drive``): results do not depend on which attempt finished.
"""

from __future__ import annotations

import pickle

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..io.streaming import stream
from .base import Runtime, fold, reduce_units, units
from .local import cpu_threads
from .transfer import join_tensors, split_tensors


def share(n_units: int, rank: int, world: int) -> range:
    """The units of ``rank``: a contiguous run, the first ``n_units % world`` ranks one more.

    Examples
    --------
    >>> [share(5, rank, 2) for rank in range(2)]
    [range(0, 3), range(3, 5)]
    """
    base, extra = divmod(n_units, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class CollectiveRuntime(Runtime):
    """The runtime a rank's driver sees: passes over its share of the units, then an exchange.

    ``torch.distributed`` must be initialized (rank ``rank`` of ``world``) before a pass.

    Parameters
    ----------
    rank, world : int
    device : torch.device
        Where this rank computes.
    reduce_blocks : int, default=1
        Blocks per unit, as LocalRuntime's (same value, same bits).
    """

    def __init__(self, rank: int, world: int, device, reduce_blocks: int = 1):
        units(1, reduce_blocks)  # validates it
        self.rank, self.world, self.reduce_blocks = rank, world, reduce_blocks
        self._device = torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def map_reduce(self, source, task, state, *, desc=None):
        unit_ranges = units(source.n_blocks, self.reduce_blocks)
        if not unit_ranges:
            raise ValueError(f"{source!r} has no blocks")
        mine = share(len(unit_ranges), self.rank, self.world)
        partials = []
        if len(mine):
            start, stop = unit_ranges[mine.start].start, unit_ranges[mine.stop - 1].stop
            with cpu_threads(self._device):
                pairs = ((b.index, task(b, state, self._device)) for b in stream(source, self._device, start, stop))
                partials = list(reduce_units(pairs, source.n_blocks, self.reduce_blocks))
        return fold(self._exchange(partials))

    def _exchange(self, partials: list) -> list:
        """Every unit's partial, in unit order, from the partials of this rank's units.

        The partials' device tensors go by broadcasts from their rank (all ranks issue the same
        broadcasts in the same order: by rank, unit, tensor); the rest is pickled and gathered.
        """
        if self.world == 1:
            return partials
        split = [split_tensors(p) for p in partials]
        mine = [(packed, [(t.shape, t.dtype) for t in tensors]) for packed, tensors in split]
        gathered = [None] * self.world
        dist.all_gather_object(gathered, pickle.dumps(mine, protocol=5))  # its arrays in band
        out = []
        for rank, metas in enumerate(map(pickle.loads, gathered)):
            for i, (packed, specs) in enumerate(metas):
                if rank == self.rank:
                    tensors = [t.contiguous() for t in split[i][1]]
                else:
                    tensors = [torch.empty(shape, dtype=dtype, device=self._device) for shape, dtype in specs]
                for tensor in tensors:
                    dist.broadcast(tensor, src=rank)
                out.append(partials[i] if rank == self.rank else join_tensors(packed, tensors))
        return out

    def pool(self, factory, n_workers=1):
        raise ConfigError("a collective driver cannot start worker pools")

    def __repr__(self):
        return f"CollectiveRuntime(rank={self.rank}, world={self.world}, device={str(self._device)!r})"
