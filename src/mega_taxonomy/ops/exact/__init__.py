"""Exact sums of float64 arrays: partials added in any order, by any number of workers, in any
tree or allreduce, give the same bits.

A float64 value is an integer of 53 bits times a power of two. Cut the binary expansion of every
value into digits of 32 bits at fixed positions (digit j holds the bits of weight 2^(32 j) to
2^(32 j + 31)), and the sum of many values is, digit by digit, a sum of integers: exact, so the
same in any order. Each element of an :class:`ExactSum` keeps three digits below its *top*, the
highest digit that any of its values reached; a value's bits below them are dropped (64 to 96 bits
under the leading bit of the largest value, against float64's 53). Which bits are dropped depends
on the final top alone, the top of the largest value, so the result does not depend on the order
either. Digits live in int64 and are never carried from one to the next while adding, so each is
the plain sum of its values' digits: up to 2^31 values add without overflow. The float64 sum is
rounded from the digits once, when it is read (:meth:`ExactSum.value`).

This is what lets a pass's partials be summed by an NCCL or gloo ``all_reduce`` (``MAX`` over the
tops, then ``SUM`` over the digits aligned to them: :func:`all_reduce_exact`) or by workers in a
tree, with the bits of ``LocalRuntime`` adding them one by one. Reproducible summation in the same
spirit: Demmel and Nguyen, "Parallel reproducible summation" (IEEE TC 2015), whose bins are these
fixed digit positions.

Infinite and NaN values make their element NaN.

Examples
--------
>>> import torch
>>> a = ExactSum.of(torch.tensor([1e16, 1.0, -3.5], dtype=torch.float64))
>>> b = ExactSum.of(torch.tensor([1.0, 2.0**-40, 3.5], dtype=torch.float64))
>>> c = ExactSum.of(torch.tensor([-1e16, 0.5, 0.0], dtype=torch.float64))
>>> ((a + b) + c).value().tolist() == (a + (c + b)).value().tolist() == [1.0, 1.5 + 2.0**-40, 0.0]
True
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...runtime import ExactPart

__all__ = ["DIGITS", "ExactSum", "accumulate_reference", "all_reduce_exact", "exact_sum", "merge_reference", "tops_of",
           "value_of", "value_reference"]

DIGITS = 3  # kept below the top: a value's 53 bits span at most three digits of 32
DIGIT_BITS = 32
_MASK = (1 << DIGIT_BITS) - 1
EMPTY_TOP = -64  # the top of an element with no nonzero value: below any value's (the least is -32)
NONFINITE_TOP = 64  # above any finite value's (the most is 31): the element reads NaN


def tops_of(values: torch.Tensor) -> torch.Tensor:
    """The digit that holds each float64 value's leading bit (int64): EMPTY_TOP for zeros,
    NONFINITE_TOP for infinities and NaN; subnormals count as the least normal values' digit."""
    bits = values.view(torch.int64)
    exponent = (bits >> 52) & 0x7FF
    tops = (exponent.clamp_min(1) - 1023) >> 5  # floor((e - 1023) / 32): the leading bit's digit
    tops = torch.where((bits & 0x7FFF_FFFF_FFFF_FFFF) == 0, EMPTY_TOP, tops)
    return torch.where(exponent == 0x7FF, NONFINITE_TOP, tops)


def _digits_below(values: torch.Tensor, tops: torch.Tensor) -> torch.Tensor:
    """(DIGITS, *shape) int64: digits tops, tops - 1, tops - 2 of every value, with its sign."""
    bits = values.view(torch.int64)
    exponent = (bits >> 52) & 0x7FF
    mantissa = bits & ((1 << 52) - 1)
    normal = exponent > 0
    mantissa = torch.where(normal, mantissa | (1 << 52), mantissa)
    low = torch.where(normal, exponent - 1075, -1074)  # the weight of the mantissa's lowest bit
    out = []
    for i in range(DIGITS):
        shift = low - DIGIT_BITS * (tops - i)  # where the mantissa's lowest bit lands in digit tops - i
        up = shift.clamp(0, DIGIT_BITS)
        left = (mantissa & ((torch.ones_like(up) << (DIGIT_BITS - up)) - 1)) << up  # masked first: no overflow
        right = (mantissa >> (-shift).clamp(0, 63)) & _MASK
        out.append(torch.where(shift >= 0, left, right))
    digits = torch.stack(out)
    return torch.where(bits < 0, -digits, digits)


def _aligned(digits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``digits`` moved ``shift`` (>= 0) positions down, to a higher top: those that fall off are dropped."""
    out = torch.zeros_like(digits)
    for i in range(DIGITS):
        for s in range(i + 1):
            out[i] += torch.where(shift == s, digits[i - s], 0)
    return out


def accumulate_reference(tops: torch.Tensor, digits: torch.Tensor, values: torch.Tensor):
    """(tops, digits) of the exact sum plus float64 ``values``: the torch twin of the kernels."""
    value_tops = tops_of(values)
    new = torch.maximum(tops, value_tops)
    return new, _aligned(digits, new - tops) + _digits_below(values, new)


def merge_reference(tops, digits, other_tops, other_digits):
    """(tops, digits) of two exact sums added: both moved to the higher top, digits added."""
    new = torch.maximum(tops, other_tops)
    return new, _aligned(digits, new - tops) + _aligned(other_digits, new - other_tops)


def _accumulate(tops, digits, values, rows=1):
    """``accumulate_reference``'s result, in place where the kernels take it: Triton on CUDA, numba
    on the CPU. ``rows``: ``values`` holds that many arrays of ``tops``' shape, added in turn (on
    CUDA in one launch)."""
    if values.is_cuda:
        from .triton import accumulate_triton

        return accumulate_triton(tops, digits, values, rows)
    if values.device.type == "cpu":
        from .numba import accumulate_numba

        tops, digits = tops.contiguous(), digits.contiguous()
        for row in values.reshape(rows, tops.numel()):
            accumulate_numba(tops.view(-1).numpy(), digits.view(DIGITS, -1).numpy(), row.numpy())
        return tops, digits
    for row in values.reshape(rows, *tops.shape):
        tops, digits = accumulate_reference(tops, digits, row)
    return tops, digits


def _merge(tops, digits, other_tops, other_digits):
    """(tops, digits) of two exact sums added, in place: Triton on CUDA, numba on the CPU."""
    if tops.is_cuda:
        from .triton import merge_triton

        return merge_triton(tops, digits, other_tops, other_digits)
    if tops.device.type == "cpu":
        from .numba import merge_numba

        tops, digits = tops.contiguous(), digits.contiguous()
        merge_numba(tops.view(-1).numpy(), digits.view(DIGITS, -1).numpy(), other_tops.reshape(-1).numpy(),
                    other_digits.reshape(DIGITS, -1).numpy())
        return tops, digits
    return merge_reference(tops, digits, other_tops, other_digits)


def _pow2(exponents: torch.Tensor) -> torch.Tensor:
    """2.0 ** exponents in float64, made from its bits (exact; 0 below the normal range, and the
    largest normal power above it: only NaN elements, masked, go there)."""
    bits = (exponents.clamp(-1023, 1023) + 1023) << 52
    return bits.view(torch.float64)


def value_of(tops: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """The float64 values of exact sums: the digits carried, then added from the lowest (one
    Triton kernel on CUDA, the same bits; :func:`value_reference` elsewhere)."""
    if tops.is_cuda:
        from .triton import value_triton

        return value_triton(tops, digits)
    return value_reference(tops, digits)


def value_reference(tops: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """:func:`value_of`'s torch twin."""
    d0, d1, d2 = digits
    d1 = d1 + (d2 >> DIGIT_BITS)  # arithmetic shifts: floor, so the value is kept for negative digits
    d0 = d0 + (d1 >> DIGIT_BITS)
    # digit i times 2^(32 (top - i)): in two steps where that power is below float64's normal range
    scale = DIGIT_BITS * tops
    late = torch.where(scale < -900, -512, 0)
    low = (d2 & _MASK).double() * _pow2(scale - 2 * DIGIT_BITS - late) + (d1 & _MASK).double() * _pow2(
        scale - DIGIT_BITS - late)
    out = (low + d0.double() * _pow2(scale - late)) * _pow2(late)
    out = torch.where(tops == EMPTY_TOP, 0.0, out)
    return torch.where(tops == NONFINITE_TOP, torch.nan, out)


class ExactSum(ExactPart):
    """The exact sum of float64 arrays of one shape (numpy arrays or tensors, on any device).

    ``ExactSum.of(values)`` holds one array as it is, converted only when something is added to
    it; ``a + b`` and ``a += b`` add exactly; :meth:`value` rounds to float64 once, as an array
    of the kind first given (a numpy array, a tensor on its device, or a float for a scalar).
    """

    __slots__ = ("tops", "digits", "_values", "_kind")

    def __init__(self, tops, digits, kind="tensor"):
        self.tops, self.digits, self._values, self._kind = tops, digits, None, kind

    @classmethod
    def of(cls, values) -> ExactSum:
        kind = "float" if np.isscalar(values) else "numpy" if isinstance(values, np.ndarray) else "tensor"
        out = cls(None, None, kind)
        out._values = torch.as_tensor(values, dtype=torch.float64)
        return out

    @classmethod
    def zeros(cls, shape, device="cpu", kind="tensor") -> ExactSum:
        return cls(torch.full(tuple(shape), EMPTY_TOP, dtype=torch.int64, device=device),
                   torch.zeros((DIGITS, *shape), dtype=torch.int64, device=device), kind)

    def spec(self) -> tuple:
        return self.shape, self._kind, self.device.type == "cpu"

    @classmethod
    def from_spec(cls, spec: tuple, device) -> ExactSum:
        shape, kind, on_host = spec
        return cls.zeros(shape, "cpu" if on_host else device, kind)

    @property
    def shape(self) -> tuple:
        return tuple((self.tops if self._values is None else self._values).shape)

    @property
    def device(self) -> torch.device:
        return (self.tops if self._values is None else self._values).device

    def materialize(self) -> ExactSum:
        """Convert the array held as it is into digits (in place); return self."""
        if self._values is not None:
            empty = ExactSum.zeros(self._values.shape, self._values.device)
            self.tops, self.digits = _accumulate(empty.tops, empty.digits, self._values.contiguous())
            self._values = None
        return self

    def _add_into(self, other: ExactSum) -> None:
        if other.shape != self.shape:
            raise ValueError(f"exact sums of shapes {self.shape} and {other.shape} do not add")
        if other._values is not None:  # a block's partial: one kernel adds it
            self.tops, self.digits = _accumulate(self.tops, self.digits, other._values.to(self.device).contiguous())
            return
        self.tops, self.digits = _merge(self.tops, self.digits, other.tops.to(self.device),
                                        other.digits.to(self.device))

    def add_rows(self, rows) -> ExactSum:
        """Add each row of ``rows`` (float64, shape (r, *self.shape)) in turn, exactly, in place:
        the bits of ``self += ExactSum.of(row)`` row by row, in one kernel on CUDA (where a pass
        streamed in runs of 16 blocks added their statistics in 16 launches a run). Returns self."""
        rows = torch.as_tensor(rows, dtype=torch.float64)
        if tuple(rows.shape[1:]) != self.shape:
            raise ValueError(f"rows of shape {tuple(rows.shape[1:])} do not add to a sum of {self.shape}")
        self.materialize()
        self.tops, self.digits = _accumulate(self.tops, self.digits, rows.to(self.device).contiguous(), len(rows))
        return self

    def __add__(self, other: ExactSum) -> ExactSum:
        out = self.copy().materialize()
        out._add_into(other)
        return out

    def __iadd__(self, other: ExactSum) -> ExactSum:
        self.materialize()._add_into(other)
        return self

    def __reduce__(self):
        return _rebuilt, (self.tops, self.digits, self._values, self._kind)

    def as_kind(self, kind: str) -> ExactSum:
        """The same sum (its arrays shared, not copied), which :meth:`value` gives back as ``kind``:
        "numpy", "tensor" or "float"."""
        out = ExactSum(self.tops, self.digits, kind)
        out._values = self._values
        return out

    def split(self, shapes, kinds) -> list[ExactSum]:
        """A one-dimensional sum cut into the exact sums of its consecutive pieces, of ``shapes``
        (in order), each read back (:meth:`value`) as its entry of ``kinds``: sums that were added
        end to end, one add for them all."""
        self.materialize()
        out, at = [], 0
        for shape, kind in zip(shapes, kinds):
            size = math.prod(shape)
            out.append(ExactSum(self.tops[at:at + size].reshape(shape),
                                self.digits[:, at:at + size].reshape(DIGITS, *shape), kind))
            at += size
        if at != self.shape[0]:
            raise ValueError(f"pieces of {at} values do not cut a sum of {self.shape[0]}")
        return out

    def copy(self) -> ExactSum:
        out = ExactSum(None if self.tops is None else self.tops.clone(),
                       None if self.digits is None else self.digits.clone(), self._kind)
        out._values = self._values  # held, never written
        return out

    def value(self):
        """The sum, rounded to float64 once."""
        if self._values is not None:
            out = self._values + 0.0  # a single array is its own exact sum (-0.0 reads +0.0, as from digits)
        else:
            out = value_of(self.tops, self.digits)
        if self._kind == "float":
            return float(out)
        return out.cpu().numpy() if self._kind == "numpy" else out

    def __repr__(self):
        return f"ExactSum(shape={self.shape}, device={self.device})"

    @classmethod
    def all_reduce(cls, parts: list, group=None) -> list:
        return all_reduce_exact(parts, group)


def exact_sum(values, dim: int = 0):
    """The float64 sum of ``values`` (a tensor or an array) over ``dim`` as an :class:`ExactSum`
    rounds it: the same bits on any device, whatever the order of the values."""
    moved = torch.as_tensor(values, dtype=torch.float64).movedim(dim, 0)
    total = ExactSum.zeros(moved.shape[1:], moved.device).add_rows(moved).value()
    return total if isinstance(values, torch.Tensor) else total.numpy()


def _rebuilt(tops, digits, values, kind) -> ExactSum:
    """An unpickled ExactSum. Its tensors may come back as numpy arrays (``io.transfer.to_host``
    moves device tensors to the host so): then it reads as numpy too, as the arrays it stands for."""
    if kind == "tensor" and any(isinstance(a, np.ndarray) for a in (tops, digits, values)):
        kind = "numpy"
    out = ExactSum(*(None if a is None else torch.as_tensor(a) for a in (tops, digits)), kind)
    out._values = None if values is None else torch.as_tensor(values)
    return out


def all_reduce_exact(sums: list[ExactSum], group=None) -> list[ExactSum]:
    """The exact sums of every rank's ``sums`` (the same shapes, in the same order, on every rank
    of ``torch.distributed``'s ``group``): one ``all_reduce(MAX)`` of the tops, then one
    ``all_reduce(SUM)`` of the digits aligned to them; the bits of adding the ranks' sums one by
    one, in any order."""
    import torch.distributed as dist

    sums = [s.copy().materialize() for s in sums]
    if not sums:
        return sums
    tops = torch.cat([s.tops.reshape(-1) for s in sums])
    dist.all_reduce(tops, op=dist.ReduceOp.MAX, group=group)
    pieces, start = [], 0
    for s in sums:
        n = s.tops.numel()
        new = tops[start:start + n].view(s.tops.shape)
        pieces.append(_aligned(s.digits, new - s.tops).reshape(DIGITS, -1))
        s.tops, start = new, start + n
    digits = torch.cat(pieces, dim=1)
    dist.all_reduce(digits, op=dist.ReduceOp.SUM, group=group)
    start = 0
    for s in sums:
        n = s.tops.numel()
        s.digits, start = digits[:, start:start + n].reshape(DIGITS, *s.tops.shape), start + n
    return sums
