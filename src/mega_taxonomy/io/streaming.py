"""Blocks moved to a CUDA device ahead of their use, so that a pass over data in host memory or
on disk runs at the transfer (or decoding) rate rather than at transfer + compute.

A pass over host data on a GPU otherwise copies each block from pageable memory, synchronously,
just before computing on it. Here:

- a reader thread pulls blocks from the source (decoding files there, in parallel with the GPU
  work and with the Python of the tasks) and stages each one into a pinned host buffer (a block
  of a pinned tensor, e.g. ``torch.empty(..., pin_memory=True)``, is used in place);
- the host-to-device copies run on their own CUDA stream, ``depth`` blocks ahead of the block
  being computed on; the compute stream waits on each copy's event only when it needs the block.

Blocks keep their index, ordinals and ids; only ``vectors`` becomes a tensor on the device, with
the same values, so results are the same bits as with synchronous copies.
"""

from __future__ import annotations

import collections
import queue
import threading
import warnings

import numpy as np
import torch

from .sources import Block

_DONE = object()


def _host_tensor(vectors) -> torch.Tensor:
    if isinstance(vectors, torch.Tensor):
        return vectors
    with warnings.catch_warnings():  # read-only blocks (memory maps, cache entries): only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(vectors))


class _Staging:
    """Pinned host buffers, reused once the copy that read them has completed."""

    def __init__(self, count):
        self.free = queue.Queue()
        for _ in range(count):
            self.free.put((None, None))

    def stage(self, host: torch.Tensor, stop: threading.Event):
        while True:
            try:
                buf, event = self.free.get(timeout=0.1)
                break
            except queue.Empty:
                if stop.is_set():
                    return None, None
        if event is not None:
            event.synchronize()  # the copy out of this buffer has finished
        if buf is None or buf.numel() < host.numel() or buf.dtype != host.dtype:
            buf = torch.empty(max(host.numel(), 1), dtype=host.dtype, pin_memory=True)
        view = buf[: host.numel()].view(host.shape)
        view.copy_(host)
        return buf, view


def to_device(blocks, device, *, depth: int = 3):
    """Yield the blocks of ``blocks`` (an iterator) with their vectors on the CUDA ``device``.

    Blocks already on the device pass through; others are staged through pinned buffers by a
    reader thread and copied on a side stream ``depth`` blocks ahead. Errors of the source are
    raised here, in the caller's thread.
    """
    device = torch.device(device)
    if device.type != "cuda":
        yield from blocks
        return
    ready = queue.Queue(maxsize=depth)
    stop = threading.Event()
    staging = _Staging(2 * depth + 1)  # in flight + queued + one being filled

    def read():
        try:
            for block in blocks:
                vectors = block.vectors
                if isinstance(vectors, torch.Tensor) and vectors.is_cuda:
                    item = (block, None, None)
                else:
                    host = _host_tensor(vectors)
                    buf = None
                    if not host.is_pinned():
                        buf, host = staging.stage(host.contiguous(), stop)
                        if host is None:
                            return
                    item = (block, host, buf)
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            ready.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(exc)

    reader = threading.Thread(target=read, name="mega-taxonomy-h2d", daemon=True)
    reader.start()
    copy_stream = torch.cuda.Stream(device=device)
    in_flight = collections.deque()
    finished = False
    try:
        while True:
            while not finished and len(in_flight) < depth:
                try:  # wait for the reader only when nothing is in flight
                    item = ready.get(block=not in_flight)
                except queue.Empty:
                    break
                if item is _DONE:
                    finished = True
                    break
                if isinstance(item, BaseException):
                    raise item
                block, host, buf = item
                if host is None:
                    in_flight.append((block, block.vectors, None, None))
                    continue
                with torch.cuda.stream(copy_stream):
                    dev = host.to(device, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(copy_stream)
                in_flight.append((block, dev, event, buf))
            if not in_flight:
                if finished:
                    return
                continue
            block, dev, event, buf = in_flight.popleft()
            if event is not None:
                compute = torch.cuda.current_stream(device)
                compute.wait_event(event)
                dev.record_stream(compute)  # the allocator must not reuse it before compute is done
                if buf is not None:
                    staging.free.put((buf, event))
            yield Block(block.index, block.ordinals, block.ids, dev)
    finally:
        stop.set()
        reader.join(timeout=10)
