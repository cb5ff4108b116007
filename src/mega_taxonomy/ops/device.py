"""Small host arrays (a block's group ids, a level's offsets) moved to a device without a stall.

``torch.as_tensor(array, device="cuda")`` copies from pageable memory and then synchronizes the
stream: the host waits for every kernel queued before it. Once per block, that keeps the host
from running ahead of the GPU, and a streamed pass then runs at the speed of its Python rather
than of its copies (measured on an H200: grouped passes at 0.55 of the host-to-device rate).
"""

from __future__ import annotations

import torch


def to_device(array, device) -> torch.Tensor:
    """``array`` (numpy or a tensor) on ``device``; to CUDA through torch's cache of pinned host
    buffers, copied asynchronously (the cache keeps a buffer until its copy is done)."""
    tensor = torch.as_tensor(array)
    device = torch.device(device)
    if device.type != "cuda" or tensor.device == device:
        return tensor.to(device)
    if tensor.device.type != "cpu":
        return tensor.to(device, non_blocking=True)
    return tensor.pin_memory().to(device, non_blocking=True)
