"""Blocks moved to a CUDA device ahead of their use, so that a pass over data in host memory or
on disk runs at the transfer (or decoding) rate rather than at transfer + compute.

A pass over host data on a GPU otherwise copies each block from pageable memory, synchronously,
just before computing on it. Here:

- a reader thread pulls blocks from the source (decoding files there, in parallel with the GPU
  work and with the Python of the tasks) and stages each one into a pinned host buffer (a block
  of a pinned tensor, e.g. ``torch.empty(..., pin_memory=True)``, is used in place);
- the host-to-device copies run on their own CUDA stream, ``depth`` blocks ahead of the block
  being computed on; the compute stream waits on each copy's event only when it needs the block;
- rows of in-memory data that were never validated are checked on the device, right after their
  copy (``VectorSource.unchecked_blocks``): checked on the host, they were read from host memory
  twice, by the check and by the copy, and the first pass ran at 0.6 of the copy rate;
- a tensor already on the device is neither staged nor copied: its blocks are read in the
  caller's thread, their rows checked on the side stream as copied rows are, ahead of their turn;
  or, for tasks that compute many blocks at once, it is taken whole (``resident``);
- for such tasks, rows in host memory go a run of many blocks at a time (``stream_runs``), so
  that a pass's host work is per run, not per block.

Blocks keep their index, ordinals and ids; only ``vectors`` becomes a tensor on the device, with
the same values, so results are the same bits as with synchronous copies.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import warnings

import numpy as np
import torch

from .readahead import put_unless
from .shards import BLOCK_ROWS, TORCH_DTYPES, Block

RUN_BYTES = 256 << 20  # rows of a run (stream_runs)


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
        # one copy_: torch splits a large one over its own threads (an H200's host: 40 GB/s for a
        # run of 256 MiB; split again over our threads, 24-32 GB/s)
        view.copy_(host)
        return buf, view


def run_blocks(source, device) -> int | None:
    """Blocks per run for a pass over ``source`` on ``device`` by runs (:func:`stream_runs`): runs
    of about ``RUN_BYTES`` of rows; None where runs do not apply (not CUDA, or rows not in host
    memory: files stream block by block, rows on the device are taken whole)."""
    device = _indexed(device)
    if device.type != "cuda" or not hasattr(source, "unchecked_run") or getattr(source, "_array", None) is None:
        return None
    if _already_on(source, device):
        return None
    block_bytes = BLOCK_ROWS * source.dim * TORCH_DTYPES[source.dtype].itemsize  # bfloat16 too
    return max(1, RUN_BYTES // block_bytes)


def stream_runs(source, device, size: int, *, depth: int = 2):
    """Yield ``(start, stop, block)`` for runs of ``size`` blocks of an in-memory host source, in
    order: ``block`` holds the rows of blocks [start, stop) on the CUDA ``device`` (index
    ``start``), copied ahead on a side stream as :func:`stream` copies blocks and checked there;
    None where a row of the run is not valid, or validation dropped rows: the caller then takes
    those blocks one by one (``stream(source, device, start, stop)``, which raises or skips as
    ``on_invalid`` says).

    Why runs: a block of 65,536 rows of 128 float16 is 16 MiB, a third of a millisecond of copy,
    against about 1 ms of host work for the task of a block; a pass that computes many blocks
    at once (``BlockTask.whole``) does that work once a run.
    """
    device = _indexed(device)
    if device.type != "cuda":
        yield from _runs_in_place(source, size)
        return
    copy_stream = torch.cuda.Stream(device=device)
    staging = _Staging(depth + 1)
    done = threading.Event()
    in_flight = collections.deque()

    def send(start):
        """(start, stop, what _sent gives for the run, or None where it goes block by block)."""
        stop = min(start + size, source.n_blocks)
        run = source.unchecked_run(start, stop)
        if run is None:
            return start, stop, None
        block, checked = run
        host, buf = _host_tensor(block.vectors), None
        if not host.is_pinned():  # a pinned tensor is copied from in place
            buf, host = staging.stage(host.contiguous(), done)
        return start, stop, _sent((block, host, buf, checked), device, copy_stream)

    try:
        starts = collections.deque(range(0, source.n_blocks, size))
        while starts or in_flight:
            while starts and len(in_flight) < depth:
                in_flight.append(send(starts.popleft()))
            start, stop, sent = in_flight.popleft()
            if sent is None:
                yield start, stop, None
                continue
            block, dev, event, buf, finite = sent
            _take_over(dev, event, buf, staging, device)
            if finite is not None:
                event.synchronize()
                if not bool(finite):
                    yield start, stop, None
                    continue
                source.mark_run_checked(start, stop)
            yield start, stop, Block(block.index, block.ordinals, block.ids, dev)
    finally:
        done.set()


def _runs_in_place(source, size):
    """:func:`stream_runs` off CUDA: each run's rows where they are, checked here."""
    for start in range(0, source.n_blocks, size):
        stop = min(start + size, source.n_blocks)
        run = source.unchecked_run(start, stop)
        if run is not None and not run[1]:
            if bool(torch.isfinite(_host_tensor(run[0].vectors)).all()):
                source.mark_run_checked(start, stop)
            else:
                run = None
        if run is None:
            yield start, stop, None
        else:
            block = run[0]
            yield start, stop, Block(block.index, block.ordinals, block.ids, _host_tensor(block.vectors))


def _readers(source) -> int:
    """Reader threads for a source: files decode in parallel (pyarrow and numpy release the GIL;
    every read opens its own file handle); in-memory blocks only need staging, one thread."""
    if getattr(source, "_in_memory", True):
        return 1
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _indexed(device) -> torch.device:
    """``device`` with its index ("cuda" is the current CUDA device)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _already_on(source, device: torch.device) -> bool:
    """Whether the blocks of ``source`` are on the CUDA ``device`` (indexed) already
    (``source.device``: an in-memory tensor there)."""
    where = getattr(source, "device", None)
    return where is not None and _indexed(where) == device


def resident(source, device):
    """The whole of ``source`` as one block when its rows are on the CUDA ``device`` already and
    valid (``VectorSource.whole_block``), else None. A pass computes on it at once: a tensor there
    needs no copy, and cut into blocks it cost about 1 ms of host time per block of 65,536 rows,
    more than the kernels of many shapes take (H200: 1M x 128 rows, 1,024 centroids, TF32)."""
    device = _indexed(device)
    if device.type != "cuda" or not _already_on(source, device) or not hasattr(source, "whole_block"):
        return None
    return source.whole_block()


def _unchecked_blocks(source, start, stop):
    """``(block, checked)``: see ``VectorSource.unchecked_blocks`` (other sources: all checked)."""
    if hasattr(source, "unchecked_blocks"):
        return source.unchecked_blocks(start, stop)
    return ((block, True) for block in source.blocks(start, stop))


def _checked_on_device(source, block, dev, finite):
    """The block and its device rows once the device's check (``finite``: whether every value is
    finite, copied back) has arrived: a good block is recorded as checked; one with a bad row is
    read again through ``source.blocks``, which raises naming its row or skips it."""
    if bool(finite):
        source.mark_checked(block)
        return block, dev
    (block,) = source.blocks(block.index, block.index + 1)
    return block, torch.as_tensor(block.vectors).to(dev.device)


def stream(source, device, start: int = 0, stop: int | None = None, *, depth: int = 3,
           readers: int | None = None):
    """Yield the blocks [start, stop) of ``source`` (a VectorSource; stop None: to the end), in
    order, with their vectors on the CUDA ``device``.

    Blocks are read by ``readers`` threads (block b by thread b % readers), staged through pinned
    buffers (a pinned tensor source is copied from in place) and copied on a side stream,
    ``depth`` blocks ahead of the one yielded; rows never validated are checked there too. A
    source whose blocks are on the device already (``source.device``) is read in the caller's
    thread: nothing to stage or copy. Errors of the source are raised here, in the caller's
    thread. Not on CUDA: ``source.blocks()``.
    """
    device = _indexed(device)
    stop = source.n_blocks if stop is None else stop
    if device.type != "cuda":
        yield from source.blocks(start, stop)
        return
    done = threading.Event()
    if _already_on(source, device):
        take, threads, staging = _in_this_thread(source, start, stop)
    else:
        take, threads, staging = _from_readers(source, start, stop, readers or _readers(source), depth, done)
    copy_stream = torch.cuda.Stream(device=device)
    in_flight = collections.deque()
    try:
        b = start
        while b < stop or in_flight:
            while b < stop and len(in_flight) < depth:
                item = take(b - start, wait=not in_flight)  # wait for a reader only when nothing is in flight
                if item is None:
                    break
                b += 1
                in_flight.append(_sent(item, device, copy_stream))
            block, dev, event, buf, finite = in_flight.popleft()
            if event is not None:
                _take_over(dev, event, buf, staging, device)
            if finite is not None:
                event.synchronize()
                block, dev = _checked_on_device(source, block, dev, finite)
            yield Block(block.index, block.ordinals, block.ids, dev)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=10)


def _take_over(dev, event, buf, staging, device):
    """Rows copied on the side stream (``event``: done) handed to the compute stream: it waits
    for the copy, the allocator keeps ``dev`` until compute is done with it, and the staging
    buffer the copy read from goes back to be reused."""
    compute = torch.cuda.current_stream(device)
    compute.wait_event(event)
    dev.record_stream(compute)
    if buf is not None:
        staging.free.put((buf, event))


def _sent(item, device, copy_stream):
    """``(block, rows on device, event, staging buffer, finite)`` of a read block: rows elsewhere
    are copied to ``device``, and rows never validated are checked there, on the copy stream
    (``event``: both done); rows there already and checked pass through."""
    block, host, buf, checked = item
    if host is None and checked and block.vectors.device == device:
        return block, block.vectors, None, None, None
    # Rows on a device may still be in the making on the reading thread's stream there (a
    # conversion to the source's dtype, say): the copy stream waits for it.
    made_on = torch.cuda.current_stream(block.vectors.device) if host is None else None
    finite = None
    with torch.cuda.stream(copy_stream):
        if made_on is not None:
            copy_stream.wait_stream(made_on)
        dev = (block.vectors if host is None else host).to(device, non_blocking=True)  # no copy if there
        if not checked:  # on the copy stream: ready, like the copy, before the block's turn
            finite = torch.isfinite(dev).all().to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record(copy_stream)
    return block, dev, event, buf, finite


def _in_this_thread(source, start, stop):
    """``take(i, wait)`` for a source already on the device: its blocks read here, as they are
    wanted (starting a reader thread and waiting for it to hand over the first block took 0.48
    ms of every pass on an H200 host, the GPU idle meanwhile)."""
    blocks = iter(_unchecked_blocks(source, start, stop))

    def take(i, wait):
        block, checked = next(blocks)
        return block, None, None, checked

    return take, [], None


def _from_readers(source, start, stop, readers, depth, done):
    """``take(i, wait)`` of the i-th block from ``readers`` started threads (None when it would
    wait and ``wait`` is false), the threads, and their pinned staging buffers."""
    queues = [queue.Queue(maxsize=2) for _ in range(readers)]
    staging = _Staging(2 * readers + depth + 1)  # queued + in flight + one being filled per reader

    def put(q, item):
        return put_unless(q, item, done)

    def read(rank):
        q = queues[rank]
        try:
            # one thread: one stream of blocks (in memory; files: runs of uncached blocks read in one go)
            blocks = _unchecked_blocks(source, start, stop) if readers == 1 else (
                (block, True) for b in range(start + rank, stop, readers)
                for block in source.blocks(b, b + 1))
            for block, checked in blocks:
                vectors = block.vectors
                if isinstance(vectors, torch.Tensor) and vectors.is_cuda:
                    item = (block, None, None, checked)
                else:
                    host, buf = _host_tensor(vectors), None
                    if not host.is_pinned():
                        buf, host = staging.stage(host.contiguous(), done)
                        if host is None:
                            return
                    item = (block, host, buf, checked)
                if not put(q, item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(q, exc)

    def take(i, wait):
        try:
            item = queues[i % readers].get(block=wait)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    threads = [threading.Thread(target=read, args=(rank,), name=f"mega-taxonomy-h2d-{rank}", daemon=True)
               for rank in range(readers)]
    for thread in threads:
        thread.start()
    return take, threads, staging
