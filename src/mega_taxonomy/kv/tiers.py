"""Where values live: positions 0..k-1 of every bucket in the fast tier (GPU memory), the rest
in host memory (pinned where CUDA is present), k fixed by ``max_hbm_for_vectors``.

Tiers by position inside a bucket, not by whole buckets, let ``HashTable.warmup`` move a bucket's
hottest entries into GPU memory by permuting that bucket's slots (a key may sit in any slot of
its bucket). On a machine without CUDA both tiers are host memory and behave the same, so the
hybrid bookkeeping is tested on the CPU with the budget alone.
"""

from __future__ import annotations

import torch

__all__ = ["TieredValues", "fast_positions"]


def fast_positions(max_bytes: int, n_buckets: int, bucket_size: int, dim: int, dtype) -> int:
    """Positions per bucket whose values fit in ``max_bytes`` of the fast tier."""
    row = dim * torch.empty((), dtype=dtype).element_size()
    return int(min(bucket_size, max(0, int(max_bytes)) // (row * n_buckets)))


class TieredValues:
    """(n_buckets * bucket_size, dim) values addressed by slot = bucket * bucket_size + position.

    ``values[slots]`` gathers onto the table's device, ``values[slots] = rows`` scatters, and
    ``index_add_`` adds (duplicates add up), whatever the tier of each slot.
    """

    def __init__(self, n_buckets, bucket_size, dim, dtype, device, max_bytes):
        self.bs, self.device = bucket_size, torch.device(device)
        self.k = fast_positions(max_bytes, n_buckets, bucket_size, dim, dtype)
        pin = torch.cuda.is_available() and self.device.type == "cuda"
        self.fast = torch.zeros(n_buckets * self.k, dim, dtype=dtype, device=device)
        self.host = torch.zeros(n_buckets * (bucket_size - self.k), dim, dtype=dtype, pin_memory=pin)

    @property
    def hybrid(self):
        return 0 < self.k < self.bs

    @property
    def shape(self):
        return (len(self.fast) + len(self.host), self.fast.shape[1])

    def single(self):
        """The one tensor that holds every slot (slot == row), or None when both tiers hold some."""
        if self.k == self.bs:
            return self.fast
        return self.host if self.k == 0 else None

    def single_on(self, device):
        """:meth:`single` where it lies on ``device`` (kernels there read and write it in their
        own launches), else None."""
        one = self.single()
        return one if one is not None and one.device == device else None

    def _split(self, slots):
        b, p = slots // self.bs, slots % self.bs
        fast = p < self.k
        return fast, b * self.k + p, b * (self.bs - self.k) + p - self.k

    def __getitem__(self, slots):
        one = self.single()
        if one is not None:
            return one[slots.to(one.device)].to(self.device)
        fast, fi, hi = self._split(slots)
        out = torch.empty(len(slots), self.fast.shape[1], dtype=self.fast.dtype, device=self.device)
        out[fast] = self.fast[fi[fast]]
        out[~fast] = self.host[hi[~fast].cpu()].to(self.device, non_blocking=True)
        return out

    def __setitem__(self, slots, rows):
        self._write(slots, rows, add=False)

    def index_add_(self, slots, rows):
        self._write(slots, rows, add=True)

    def _write(self, slots, rows, add):
        rows = rows.to(self.fast.dtype)
        one = self.single()
        parts = [(one, slots, rows)] if one is not None else None
        if parts is None:
            fast, fi, hi = self._split(slots)
            parts = [(self.fast, fi[fast], rows[fast]), (self.host, hi[~fast], rows[~fast])]
        for target, idx, part in parts:
            idx, part = idx.to(target.device), part.to(target.device)
            if add:
                target.index_add_(0, idx, part)
            else:
                target[idx] = part
