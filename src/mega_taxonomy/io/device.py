"""Arrays between host and device memory, without a stall: small host arrays (a block's group
ids, a level's offsets) to a device, device results (counts, labels) back to the host, a block's
vectors as a tensor where its pass computes.

``torch.as_tensor(array, device="cuda")`` copies from pageable memory and then synchronizes the
stream: the host waits for every kernel queued before it. Once per block, that keeps the host
from running ahead of the GPU, and a streamed pass then runs at the speed of its Python rather
than of its copies (measured on an H200: grouped passes at 0.55 of the host-to-device rate).

``tensor.pin_memory()`` avoids the sync but not the cost: torch's caching host allocator took
0.4 ms a call on the H200's host (a profile of a grouped pass: two calls a block, a quarter of
the pass's host time). Copies here go through a few pinned buffers of our own instead, each
reused once an event says the copy out of it is done.

The copies run on a side stream, which the caller's stream then waits for. On the caller's
stream, a block's group ids wait for the kernels of the block before (stream order), then for
the copy engine, busy with a 128 MiB block copy (``io.streaming`` keeps it busy), so that the
block's compute starts up to a copy late. Grouped passes, which copy such arrays, ran at 0.6-0.8
of the copy rate, flat ones, which do not, at 1.0; with the side stream and two kernel changes
measured in the same run, grouped passes went to 0.85-0.96 (benchmarks/gpu_notes.md).
"""

from __future__ import annotations

import threading
import warnings
import weakref

import numpy as np
import torch

_MIN_BYTES = 1 << 16
_MAX_BUFFERS = 64  # more copies in flight than this: the oldest is waited for


class _PinnedBuffers:
    """Pinned host buffers for small host-to-device copies, in the order they were last used."""

    def __init__(self):
        self._lock = threading.Lock()
        self._buffers = []  # [uint8 pinned tensor, event of its last copy or None], oldest first
        self._streams = {}  # device -> the side stream of the copies

    def copy(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        nbytes = tensor.numel() * tensor.element_size()
        current = torch.cuda.current_stream(device)
        with self._lock:
            side = self._streams.setdefault(current.device, torch.cuda.Stream(current.device))
            entry = self._take(nbytes)
            staged = entry[0][:nbytes].view(tensor.dtype).view(tensor.shape)
            staged.copy_(tensor)
            with torch.cuda.stream(side):
                out = staged.to(device, non_blocking=True)
                entry[1] = torch.cuda.Event()
                entry[1].record(side)
            self._buffers.append(entry)
        current.wait_event(entry[1])
        out.record_stream(current)  # allocated on the side stream, used on the caller's
        return out

    def _take(self, nbytes: int) -> list:
        """A free buffer of at least ``nbytes`` (taken out of the list), the oldest first."""
        for i, (buf, event) in enumerate(self._buffers):
            if buf.numel() >= nbytes and (event is None or event.query()):
                return self._buffers.pop(i)
        if len(self._buffers) >= _MAX_BUFFERS:
            buf, event = self._buffers.pop(0)
            event.synchronize()
            if buf.numel() >= nbytes:
                return [buf, None]
        size = max(_MIN_BYTES, 1 << (nbytes - 1).bit_length())
        return [torch.empty(size, dtype=torch.uint8, pin_memory=True), None]


_pinned = _PinnedBuffers()


def to_device(array, device) -> torch.Tensor:
    """``array`` (numpy or a tensor) on ``device``; to CUDA through pinned buffers, copied
    asynchronously on a side stream that the current stream waits for."""
    tensor = torch.as_tensor(array)
    device = torch.device(device)
    if device.type != "cuda" or tensor.device == device:
        return tensor.to(device)
    if tensor.device.type != "cpu":
        return tensor.to(device, non_blocking=True)
    if tensor.numel() == 0:
        return tensor.to(device)
    return _pinned.copy(tensor.contiguous(), device)


class KeptWhileAlive:
    """Values made from an object, kept while it lives, within a byte budget of the tensors they
    hold. Keyed by the object's identity (numpy arrays and tensors are not hashable) and
    forgotten when it is collected, before its id can be reused. The objects must not change in
    place while values made from them are kept.

    What it is for: every pass of a taxonomy level gives a block the same numpy array of group
    ids. Copying it to the GPU and sorting its rows by group (``grouped_assign/triton.py``: ``segments``)
    again in every pass took host time a block: the grouped passes ran host-bound."""

    def __init__(self, fraction_of_device: float = 1 / 16, cpu_bytes: int = 1 << 30):
        self.fraction_of_device, self.cpu_bytes = fraction_of_device, cpu_bytes
        self._lock = threading.Lock()
        self._values = {}  # (id(obj), key) -> (value, bytes)
        self._bytes = {}  # device -> bytes kept there

    def get(self, obj, key, device: torch.device, make):
        """``make()``, or what it gave for the same live ``obj`` and ``key`` (on ``device``)."""
        entry = (id(obj), key)
        with self._lock:
            if entry in self._values:
                return self._values[entry][0]
        value = make()
        tensors = value if isinstance(value, tuple) else (value,)
        nbytes = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        with self._lock:
            if entry in self._values:  # another thread made it meanwhile
                return self._values[entry][0]
            if self._bytes.get(device, 0) + nbytes <= self._budget(device):
                self._values[entry] = value, nbytes
                self._bytes[device] = self._bytes.get(device, 0) + nbytes
                weakref.finalize(obj, self._forget, entry, device)
        return value

    def _budget(self, device: torch.device) -> int:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory * self.fraction_of_device)
        return self.cpu_bytes

    def _forget(self, entry, device):
        with self._lock:
            _, nbytes = self._values.pop(entry)
            self._bytes[device] -= nbytes


kept = KeptWhileAlive()


def kept_on_device(array, device) -> torch.Tensor:
    """:func:`to_device`, the copy of a numpy array on CUDA kept while the array lives (an array
    given again and again, pass after pass: a level's group ids of a block). The array must not
    change in place meanwhile."""
    device = torch.device(device)
    if device.type != "cuda" or not isinstance(array, np.ndarray):
        return to_device(array, device)
    stream = torch.cuda.current_stream(device)  # the stream that waits for the copy
    return kept.get(array, ("copy", stream), device, lambda: to_device(array, device))


class HostCopy:
    """Device tensors on their way to the host: copied into pinned memory on the current stream
    without waiting (``to("cpu", non_blocking=True)``); :meth:`arrays` waits for the copies
    (one event) and gives them as numpy arrays. A task that needs a block's labels on the host
    queues this and lets the runtime finish the block later (``runtime.Deferred``), where
    ``.cpu()`` waited for the block's copy in and its kernels, the host idle meanwhile."""

    def __init__(self, tensors: dict):
        device = next(iter(tensors.values())).device
        self._host = {name: t.to("cpu", non_blocking=True) for name, t in tensors.items()}
        self._done = torch.cuda.Event()
        self._done.record(torch.cuda.current_stream(device))

    def arrays(self) -> dict:
        self._done.synchronize()
        # Copied out of the pinned buffers (20 us for a block's labels and distances), which torch's
        # host allocator then hands to the next copies: a level keeps every row's label, and
        # page-locked memory that held them all (12 GB at a billion rows) would starve the host.
        arrays = {name: t.numpy().copy() for name, t in self._host.items()}
        self._host = None
        return arrays


def host_arrays(*values) -> list:
    """``values`` as numpy arrays: CUDA tensors (on one device) copied out together, with one wait
    (:class:`HostCopy`); CPU tensors as arrays, anything else as it is. bfloat16 tensors, which
    numpy cannot hold, come as float32."""
    return host_arrays_later(*values)()


def host_arrays_later(*values):
    """:func:`host_arrays` in two steps: the copies are queued now, and the returned function
    waits for them. Work queued on the device in between (the next pass) does not delay them."""
    values = [v.float() if isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16 else v for v in values]
    on_cuda = {i: v for i, v in enumerate(values) if isinstance(v, torch.Tensor) and v.is_cuda}
    copies = HostCopy(on_cuda) if on_cuda else None

    def arrays() -> list:
        copied = copies.arrays() if copies is not None else {}
        return [copied[i] if i in copied else v.numpy() if isinstance(v, torch.Tensor) else v
                for i, v in enumerate(values)]

    return arrays


def as_tensor(vectors, device) -> torch.Tensor:
    """A block's vectors as a tensor on ``device`` (no copy when already there).

    Blocks of files are read-only (memory maps, shared cache entries); torch warns about those
    because it cannot protect them, but nothing here writes to a block's tensor.
    """
    if isinstance(vectors, np.ndarray) and not vectors.flags.writeable:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.as_tensor(vectors).to(device, non_blocking=True)
    return torch.as_tensor(vectors).to(device, non_blocking=True)
