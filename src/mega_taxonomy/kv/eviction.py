"""Eviction strategies: the score each inserting call gives a key, and how a hit changes it.

Scores are uint64 carried in int64 tensors (the same bits; ``unsigned_scores`` reads them as
numpy uint64). A full bucket evicts its lowest score, compared as uint64, and refuses a new key
whose score is below that lowest score.

=========== ========================================== ==============================
strategy    score of a new key                         on a hit
=========== ========================================== ==============================
LRU         the table's clock (+1 per key, in order)   the clock
LFU         the caller's score (default 1)             old + score (frequency)
EPOCH_LRU   epoch << 32 | (monotonic ns >> 20) 32 bits the same, newly
EPOCH_LFU   epoch << 32 | caller's score's low 32 bits epoch << 32 | saturating sum
CUSTOMIZED  the caller's score (required)              the caller's score
=========== ========================================== ==============================

The original's LRU reads the GPU's nanosecond clock; a counter per table gives the same order
(later calls and later keys of a batch score higher) on every device, and survives save/load.
"""

from __future__ import annotations

import enum
import time

import numpy as np
import torch

from mega_taxonomy.ops.hash_table import LOW32, SCORE_ADD, SCORE_EPOCH_ADD, SCORE_KEEP, SCORE_SET

__all__ = ["EvictStrategy", "Scorer", "as_bits", "unsigned_scores"]


class EvictStrategy(enum.Enum):
    """How scores are made (module docstring); the lowest score of a full bucket is evicted."""

    LRU = "lru"
    LFU = "lfu"
    EPOCH_LRU = "epoch_lru"
    EPOCH_LFU = "epoch_lfu"
    CUSTOMIZED = "customized"


def to_int64(x: int) -> int:
    """The int64 whose bits are the uint64 ``x`` (mod 2**64)."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >> 63 else x


def as_bits(x, n: int, device, name: str) -> torch.Tensor:
    """``x`` (int64 / uint64 tensor or array, ints) as (n,) int64 bits on ``device``."""
    if (type(x) is torch.Tensor and x.dtype == torch.int64 and x.ndim == 1 and len(x) == n
            and x.device == device):  # as the caller holds them: nothing to check or convert
        return x
    if isinstance(x, np.ndarray) and x.dtype == np.uint64:
        x = torch.from_numpy(x.view(np.int64))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray([to_int64(int(v)) for v in np.ravel(x)], dtype=np.int64))
    if getattr(torch, "uint64", None) is not None and x.dtype == torch.uint64:
        x = x.view(torch.int64)
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError(f"{name} must be integers (uint64 bits in int64), not {x.dtype}")
    x = x.to(device=device, dtype=torch.int64).reshape(-1)
    if len(x) != n:
        raise ValueError(f"{name} has {len(x)} entries for {n} keys")
    return x


def unsigned_scores(scores: torch.Tensor) -> np.ndarray:
    """Scores as numpy uint64 (the bits the int64 tensor carries)."""
    return scores.detach().cpu().numpy().view(np.uint64)


class Scorer:
    """The scores of one table: its strategy, clock and global epoch."""

    def __init__(self, strategy: EvictStrategy):
        self.strategy = EvictStrategy(strategy)
        self.clock = 0
        self.global_epoch = 0

    def epoch(self, global_epoch):
        strategy = self.strategy
        if global_epoch is None:
            return self.global_epoch
        if strategy not in (EvictStrategy.EPOCH_LRU, EvictStrategy.EPOCH_LFU):
            raise ValueError(f"global_epoch is for the epoch strategies, not {strategy.name}")
        if not 0 <= int(global_epoch) < 2**32:
            raise ValueError(f"global_epoch must be in [0, 2**32), got {global_epoch}")
        return int(global_epoch)

    def desired(self, n, scores, device, *, inserting, global_epoch=None):
        """(scores of new keys / operand on hits as int64 bits, the rule on hits)."""
        s, epoch = self.strategy, self.epoch(global_epoch)
        if s in (EvictStrategy.LRU, EvictStrategy.EPOCH_LRU) and scores is not None:
            raise ValueError(f"{s.name} makes its own scores (a clock): pass scores=None")
        if s is EvictStrategy.LRU:
            out = torch.arange(self.clock + 1, self.clock + n + 1, device=device, dtype=torch.int64)
            self.clock += n
            return out, SCORE_SET
        if s is EvictStrategy.EPOCH_LRU:
            now = (time.monotonic_ns() >> 20) & int(LOW32)
            return torch.full((n,), to_int64(epoch << 32 | now), device=device, dtype=torch.int64), SCORE_SET
        if scores is None:
            if s is EvictStrategy.CUSTOMIZED and inserting:
                raise ValueError("CUSTOMIZED needs scores= on every call that inserts")
            if not inserting:
                return torch.zeros(n, device=device, dtype=torch.int64), SCORE_KEEP
            scores = torch.ones(n, dtype=torch.int64, device=device)
        scores = as_bits(scores, n, device, "scores")
        if s is EvictStrategy.LFU:
            return scores, SCORE_ADD
        if s is EvictStrategy.EPOCH_LFU:
            return (scores & int(LOW32)) | to_int64(epoch << 32), SCORE_EPOCH_ADD
        return scores, SCORE_SET

    def state(self):
        return {"clock": self.clock, "global_epoch": self.global_epoch}


