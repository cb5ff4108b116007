"""Partials and states crossing processes, with the device tensors inside them handled apart.

A partial may keep tensors on the GPU that computed it (a level's float64 sums stay there while
a worker adds up its blocks). Whatever the partial's class, pickling finds those tensors:

- :func:`to_host` replaces them by numpy arrays, for a process that may have no GPU (a Ray
  driver): what a worker sends back and what a driver broadcasts;
- :func:`split_tensors` takes them out, so that a collective sends them device to device (NCCL)
  and only the small rest is pickled; :func:`join_tensors` puts them back.
"""

from __future__ import annotations

import io
import pickle

import torch


class _Extracting(pickle.Pickler):
    """Pickles an object with its device tensors left out (kept in ``tensors``, in order) and its
    large arrays out of band (in ``buffers``, not copied)."""

    def __init__(self, file):
        self.tensors, self.buffers = [], []
        super().__init__(file, protocol=5, buffer_callback=self.buffers.append)

    def persistent_id(self, obj):
        if isinstance(obj, torch.Tensor) and obj.device.type != "cpu":
            self.tensors.append(obj)
            return len(self.tensors) - 1
        return None


class _Joining(pickle.Unpickler):
    def __init__(self, file, buffers, tensors):
        super().__init__(file, buffers=buffers)
        self._tensors = tensors

    def persistent_load(self, pid):
        return self._tensors[pid]


def split_tensors(obj) -> tuple[tuple, list[torch.Tensor]]:
    """``obj`` packed (picklable, without copies of its arrays) without its device tensors, and
    those tensors."""
    file = io.BytesIO()
    pickler = _Extracting(file)
    pickler.dump(obj)
    return (file.getvalue(), pickler.buffers), pickler.tensors


def join_tensors(packed: tuple, tensors) -> object:
    """The object of :func:`split_tensors`, with ``tensors`` (the same ones or copies) put back."""
    data, buffers = packed
    return _Joining(io.BytesIO(data), buffers, list(tensors)).load()


def _host(tensor: torch.Tensor):
    tensor = tensor.detach().cpu()
    return tensor if tensor.dtype == torch.bfloat16 else tensor.numpy()  # numpy has no bfloat16


def to_host(obj):
    """``obj`` with every device tensor in it replaced by a numpy array of its values (a CPU
    tensor for bfloat16); the object itself when it holds none."""
    packed, tensors = split_tensors(obj)
    if not tensors:
        return obj
    return join_tensors(packed, [_host(t) for t in tensors])
