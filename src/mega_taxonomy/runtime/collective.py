"""CollectiveRuntime: one rank of a group of workers that run the same driver in lockstep.

A map-reduce runtime sends every pass's state out and every partial back through a driver: a
round trip per pass that costs more than the pass itself when the data are small for the
workers (a Lloyd pass over 1M x 1024 rows takes ~10 ms on a GPU; its 4096 x 1024 float64
partial is 32 MiB). Here instead every worker runs the whole iterative driver (``lloyd``, say)
on the same inputs, with a runtime whose passes cover the worker's own share of the units, and
then exchange the units' partials directly (``torch.distributed``: the device tensors' bytes by
NCCL from GPU to GPU, the rest pickled, between CPUs by gloo). Every rank then adds the same
partials in the same unit order, so every rank holds the same bits as a ``LocalRuntime`` with
the same ``reduce_blocks`` and takes the same decisions (new centroids, convergence) without
asking anyone.

Shares are static (rank r takes a contiguous run of units), which suits data that stay in the
workers' caches from pass to pass; a lost worker fails the whole group, and the caller runs it
again (``RayRuntime.drive``): results do not depend on which attempt finished.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..io.streaming import stream
from .base import ExactPart, Runtime, add_to, block_partials, fold, replaced, settled, units
from .local import cpu_threads
from ..io.transfer import join_tensors, split_tensors

# Bytes at which every tensor of a packed buffer starts, so that a view of any dtype may start there.
_ALIGN = 16
# Bytes a rank sends for the pickled part of its partials before any exchange has said more.
_FIRST_CAPACITY = 1 << 12


def _pack(tensors: list[torch.Tensor], device) -> tuple[torch.Tensor, list[tuple]]:
    """The tensors' bytes end to end in one uint8 tensor, and each one's (shape, dtype, offset)."""
    pieces, specs, offset = [], [], 0
    for tensor in tensors:
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        specs.append((tuple(tensor.shape), tensor.dtype, offset))
        pad = -raw.numel() % _ALIGN
        pieces += [raw, raw.new_zeros(pad)] if pad else [raw]
        offset += raw.numel() + pad
    return (torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.uint8, device=device)), specs


def _unpack(buffer: torch.Tensor, specs: list[tuple]) -> list[torch.Tensor]:
    """The tensors of :func:`_pack`, as views of ``buffer``."""
    return [buffer[offset:offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
            for shape, dtype, offset in specs]


def join_group(endpoint: str, rank: int, world: int, device, timeout: float):
    """Make this process ``rank`` of a ``torch.distributed`` group of ``world`` (NCCL on CUDA, gloo
    on CPUs) whose rank 0 listens at ``endpoint`` (``host:port``); return the gloo group that
    gathers the pickled part of the partials (:class:`CollectiveRuntime`'s ``objects``).

    Through NCCL, the pickles' exchange waits for the device; over gloo they go between CPUs
    while the GPUs finish their passes (on 2 H200s, N = 1M: 15.8 ms per iteration against 17.0).
    CPU groups get the second group too: one code path.
    """
    if ipaddress.ip_address(endpoint.rsplit(":", 1)[0]).is_loopback:  # gloo would pick the outward interface
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://{endpoint}",
                            rank=rank, world_size=world, timeout=timeout)
    return dist.new_group(backend="gloo", timeout=timeout)


def all_gather_bytes(data: bytes, world: int, capacity: int, group=None) -> tuple[list[bytes], int]:
    """Every rank's ``data``, in rank order, and the capacity for the next call (the same on every
    rank: it follows from the gathered lengths).

    One collective of ``capacity`` bytes a rank (a length, then the bytes, zero-padded), and a
    second, as long as the longest, only where some rank's bytes did not fit. Between two
    processes of a 2-core host over gloo, 800 bytes a rank: 0.37-0.46 ms, against 0.84-0.90 ms
    for ``all_gather_object`` (its own pickling, a collective for the sizes, another for the bytes).
    """
    # NCCL gathers device tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"

    def gather(send: np.ndarray) -> np.ndarray:
        got = torch.empty(world * send.size, dtype=torch.uint8, device=device)
        dist.all_gather_into_tensor(got, torch.from_numpy(send).to(device), group=group)
        return got.cpu().numpy().reshape(world, send.size)

    fit = min(len(data), capacity)
    send = np.zeros(8 + capacity, np.uint8)
    send[:8] = np.frombuffer(np.int64(len(data)).tobytes(), np.uint8)
    send[8:8 + fit] = np.frombuffer(data, np.uint8, count=fit)
    got = gather(send)
    lengths = got[:, :8].copy().view(np.int64).ravel().tolist()
    longest = max(lengths)
    if longest > capacity:  # the bytes again, all of them this time
        send = np.zeros(8 + longest, np.uint8)
        send[8:8 + len(data)] = np.frombuffer(data, np.uint8)
        got = gather(send)
    # Room for as much as the longest this time: Lloyd's passes repeat their sizes.
    following = max(_FIRST_CAPACITY, 1 << (longest - 1).bit_length())
    return [got[rank, 8:8 + n].tobytes() for rank, n in enumerate(lengths)], following


@dataclass(frozen=True)
class _Slot:
    """Where an exact sum sat in a rank's partial while the rest of it was gathered."""

    kind: type
    spec: tuple

    def empty(self, device):
        return self.kind.from_spec(self.spec, device)


def _taken_out(partial, kind=ExactPart):
    """(``partial`` with each instance of ``kind`` in it replaced by a :class:`_Slot`, those
    instances in order)."""
    taken = []

    def take(part):
        taken.append(part)
        return part if isinstance(part, _Slot) else _Slot(type(part), part.spec())

    return replaced(partial, kind, take), taken


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
    objects : ProcessGroup, optional
        The group that gathers the pickled part of the partials (default: the default group); a
        gloo group beside an NCCL one keeps the device free of it (``RayRuntime`` makes one).
    """

    def __init__(self, rank: int, world: int, device, reduce_blocks: int = 1, objects=None):
        units(1, reduce_blocks)  # validates it
        self.rank, self.world, self.reduce_blocks, self.objects = rank, world, reduce_blocks, objects
        self._device = torch.device(device)
        self._capacity = _FIRST_CAPACITY  # of the objects' exchange: see all_gather_bytes

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def leader(self) -> bool:
        """Rank 0: every rank holds the same bits, one writes."""
        return self.rank == 0

    def map_reduce(self, source, task, state, *, desc=None):
        unit_ranges = units(source.n_blocks, self.reduce_blocks)
        if not unit_ranges:
            raise ValueError(f"{source!r} has no blocks")
        mine = share(len(unit_ranges), self.rank, self.world)
        total = None
        if len(mine):
            start, stop = unit_ranges[mine.start].start, unit_ranges[mine.stop - 1].stop
            with cpu_threads(self._device):
                # float sums are exact (ExactPart): this rank's blocks add up in any grouping
                pairs = block_partials(task, stream(source, self._device, start, stop), state, self._device)
                total = fold(partial for _, partial in pairs)
        return settled(self._exchange(total))

    def _exchange(self, total):
        """The sum of every rank's ``total`` (None: a rank without units), the same on every rank.

        The exact sums in it (:class:`ExactPart`: every float sum of a pass) are summed by
        ``all_reduce`` (two collectives: the tops' maximum, then the digits' sum), so each rank
        receives one partial's worth of them whatever the number of ranks. The rest (counts,
        selections, per-row labels) is gathered: pickled over ``objects``
        (:func:`all_gather_bytes`; a second collective when it outgrew the last pass's), its
        device tensors end to end in one buffer per rank by one ``all_gather``, then added in
        rank order. With a gloo ``objects`` group the first runs on the CPUs while the GPUs still
        finish the pass.
        """
        if self.world == 1:
            return total
        rest, parts = _taken_out(total)
        packed, tensors = split_tensors(rest)
        buffer, specs = _pack(tensors, self._device)
        mine = (total is not None, packed, specs, buffer.numel())
        gathered, self._capacity = all_gather_bytes(pickle.dumps(mine, protocol=5), self.world, self._capacity,
                                                    self.objects)  # arrays in band
        gathered = [pickle.loads(g) for g in gathered]
        capacity = max(size for *_, size in gathered)  # the same on every rank, as the decision below
        buffers = torch.empty(self.world, capacity, dtype=torch.uint8, device=self._device)
        if capacity:  # padded to the largest rank's buffer (a copy only where it is shorter)
            short = capacity - buffer.numel()
            dist.all_gather_into_tensor(buffers, torch.nn.functional.pad(buffer, (0, short)) if short else buffer)
        rests = [rest if rank == self.rank else join_tensors(rank_packed, _unpack(buffers[rank], rank_specs))
                 for rank, (present, rank_packed, rank_specs, _) in enumerate(gathered) if present]
        if not rests:
            return None
        if total is None:  # no units here: empty sums of the kinds that the ranks with units hold
            parts = [slot.empty(self._device) for slot in _taken_out(rests[0], _Slot)[1]]
        sums = iter(self._all_reduce(parts))
        # in rank order: the ranks' sums go into the first rest, empty ones into the others
        out = replaced(rests[0], _Slot, lambda slot: next(sums))
        for rest in rests[1:]:
            out = add_to(out, replaced(rest, _Slot, lambda slot: slot.empty(self._device)))
        return out

    def _all_reduce(self, parts: list) -> list:
        """Every rank's ``parts`` summed, by their own ``all_reduce``: those on the host over the
        ``objects`` group (gloo), those on the device over the default one (NCCL on GPUs)."""
        out = list(parts)
        for on_host in (True, False):
            indices = [i for i, part in enumerate(parts) if (part.device.type == "cpu") == on_host]
            if indices:
                kind = type(parts[indices[0]])
                group = self.objects if on_host else None
                for i, part in zip(indices, kind.all_reduce([parts[i] for i in indices], group)):
                    out[i] = part
        return out

    def pool(self, factory, n_workers=1):
        raise ConfigError("a collective driver cannot start worker pools")

    def __repr__(self):
        return f"CollectiveRuntime(rank={self.rank}, world={self.world}, device={str(self._device)!r})"
