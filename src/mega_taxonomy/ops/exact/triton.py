"""Triton kernels of ``ExactSum``: float64 values added into exact sums in one pass, and exact sums
rounded back to float64 in one pass.

Kernel contract
  tops   : (N,)    int64 in and out: each element's top digit
  digits : (3, N)  int64 in and out: its digits top, top - 1, top - 2 (plane i at i * N)
  values : (R, N)  float64: added row by row (accumulate), or (N,) out (value)
  other  : (N,), (3, N) int64: the tops and digits of another exact sum, added (merge)
  parts  : (G, 4, N) int64: G exact sums, each its tops then its digits, added (merge_parts)
The arithmetic is ``accumulate_reference``'s, ``merge_reference``'s and ``value_of``'s, integer for
integer and rounding for rounding (the same bits); ``exact_add`` is the same step for a tile of a
kernel that sums blocks (``update/triton.py``). The rounding is one kernel where its torch twin is about twenty: on
an H100 a k-means iteration of 100k x 1024 rows, 256 clusters, spent 0.47 ms in its kernels and
about 1.9 ms of the host's in the twin's launches, for the sums and the inertia.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import DIGIT_BITS, DIGITS, EMPTY_TOP, NONFINITE_TOP

BLOCK = 1024


@triton.jit
def _digit(mantissa, low, top, i: tl.constexpr):
    """Digit ``top - i`` of mantissa * 2^low (unsigned). No 32-bit mask literal: Triton would type
    0xFFFFFFFF as uint32; the low 32 bits of v are v - ((v >> 32) << 32) for v >= 0."""
    shift = low - 32 * (top - i)
    up = tl.minimum(tl.maximum(shift, 0), 32)
    kept = mantissa >> (32 - up)  # the mantissa's bits that would land past the digit
    left = (mantissa - (kept << (32 - up))) << up
    right = mantissa >> tl.minimum(tl.maximum(-shift, 0), 63)
    right = right - ((right >> 32) << 32)
    return tl.where(shift >= 0, left, right)


@triton.jit
def _moved(d0, d1, d2, shift):
    """The digits moved ``shift`` (>= 0) positions down; those that fall off dropped."""
    n0 = tl.where(shift == 0, d0, 0)
    n1 = tl.where(shift == 0, d1, 0) + tl.where(shift == 1, d0, 0)
    n2 = tl.where(shift == 0, d2, 0) + tl.where(shift == 1, d1, 0) + tl.where(shift == 2, d0, 0)
    return n0, n1, n2


@triton.jit
def exact_add(top, d0, d1, d2, value, EMPTY: tl.constexpr, NONFINITE: tl.constexpr):
    """(top, d0, d1, d2) of an exact sum plus the float64 ``value`` (tiles of the same shape)."""
    bits = value.to(tl.int64, bitcast=True)
    exponent = (bits >> 52) & 0x7FF
    value_top = (tl.maximum(exponent, 1) - 1023) >> 5
    value_top = tl.where((bits & 0x7FFFFFFFFFFFFFFF) == 0, EMPTY, value_top)
    value_top = tl.where(exponent == 0x7FF, NONFINITE, value_top)
    new = tl.maximum(top, value_top)
    d0, d1, d2 = _moved(d0, d1, d2, new - top)
    normal = exponent > 0
    mantissa = bits & 0xFFFFFFFFFFFFF
    mantissa = tl.where(normal, mantissa | 0x10000000000000, mantissa)
    low = tl.where(normal, exponent - 1075, -1074)
    sign = tl.where(bits < 0, -1, 1)
    d0 += sign * _digit(mantissa, low, new, 0)
    d1 += sign * _digit(mantissa, low, new, 1)
    d2 += sign * _digit(mantissa, low, new, 2)
    return new, d0, d1, d2


@triton.jit
def exact_add_running(top, d0, d1, d2, running, value, EMPTY: tl.constexpr, NONFINITE: tl.constexpr):
    """``exact_add`` of ``value`` to an exact sum held as (top, d0, d1, d2) plus the float64
    ``running``: into ``running`` where that float64 addition is exact (its rounding error,
    Knuth's two-sum, is 0: most additions of a sum of like numbers), into the digits elsewhere
    (rounded, overflowed, not finite), and only where some element of the tile needs them, which
    saves ``exact_add``'s integer steps. The caller adds ``running`` to the digits at the end:
    the same exact sum, added in another order. Returns (top, d0, d1, d2, running)."""
    total = running + value
    back = total - running
    exact = ((running - (total - back)) + (value - back)) == 0.0  # False for NaN: overflow, inf, NaN
    if tl.max((~exact).to(tl.int32), axis=0) > 0:
        top, d0, d1, d2 = exact_add(top, d0, d1, d2, tl.where(exact, 0.0, value), EMPTY, NONFINITE)
    return top, d0, d1, d2, tl.where(exact, total, running)


@triton.jit
def _load_sums(tops_ptr, digits_ptr, N, EMPTY: tl.constexpr, BLOCK: tl.constexpr):
    """(elements, in range, top, d0, d1, d2) of this program's BLOCK elements of exact sums."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    top = tl.load(tops_ptr + i, mask=ok, other=EMPTY)
    d0 = tl.load(digits_ptr + i, mask=ok, other=0)
    d1 = tl.load(digits_ptr + N + i, mask=ok, other=0)
    d2 = tl.load(digits_ptr + 2 * N + i, mask=ok, other=0)
    return i, ok, top, d0, d1, d2


@triton.jit
def _accumulate_kernel(tops_ptr, digits_ptr, values_ptr, N, R, EMPTY: tl.constexpr, NONFINITE: tl.constexpr,
                       BLOCK: tl.constexpr):
    """The R rows of values (R, N) added in turn."""
    i, ok, top, d0, d1, d2 = _load_sums(tops_ptr, digits_ptr, N, EMPTY, BLOCK)
    row = values_ptr + i
    for _ in range(R):
        top, d0, d1, d2 = exact_add(top, d0, d1, d2, tl.load(row, mask=ok, other=0.0), EMPTY, NONFINITE)
        row += N  # (the pointers' 64-bit arithmetic: R * N may pass 2^31)
    _store_sums(tops_ptr, digits_ptr, i, ok, top, d0, d1, d2, N)


@triton.jit
def exact_merge(top, d0, d1, d2, other, o0, o1, o2):
    """(top, d0, d1, d2) of an exact sum plus another's (tiles of the same shape)."""
    new = tl.maximum(top, other)
    d0, d1, d2 = _moved(d0, d1, d2, new - top)
    o0, o1, o2 = _moved(o0, o1, o2, new - other)
    return new, d0 + o0, d1 + o1, d2 + o2


@triton.jit
def _store_sums(tops_ptr, digits_ptr, i, ok, top, d0, d1, d2, N):
    tl.store(tops_ptr + i, top, mask=ok)
    tl.store(digits_ptr + i, d0, mask=ok)
    tl.store(digits_ptr + N + i, d1, mask=ok)
    tl.store(digits_ptr + 2 * N + i, d2, mask=ok)


@triton.jit
def _merge_kernel(tops_ptr, digits_ptr, other_tops_ptr, other_digits_ptr, N, EMPTY: tl.constexpr,
                  BLOCK: tl.constexpr):
    i, ok, top, d0, d1, d2 = _load_sums(tops_ptr, digits_ptr, N, EMPTY, BLOCK)
    _, _, other, o0, o1, o2 = _load_sums(other_tops_ptr, other_digits_ptr, N, EMPTY, BLOCK)
    top, d0, d1, d2 = exact_merge(top, d0, d1, d2, other, o0, o1, o2)
    _store_sums(tops_ptr, digits_ptr, i, ok, top, d0, d1, d2, N)


@triton.jit
def _merge_parts_kernel(parts_ptr, sums_ptr, part_counts_ptr, counts_ptr, N, G, EMPTY: tl.constexpr,
                        ACCUMULATE: tl.constexpr, COUNTS: tl.constexpr, BLOCK: tl.constexpr):
    """G exact sums stored end to end as (G, 4, N) (each its tops, then its digits) merged into
    the (4, N) sums (ACCUMULATE: added to those already there, else written); with COUNTS, the
    (G, N) int64 counts added into the (N,) counts alike."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    if ACCUMULATE:
        _, _, top, d0, d1, d2 = _load_sums(sums_ptr, sums_ptr + N, N, EMPTY, BLOCK)
    else:
        top = tl.full((BLOCK,), EMPTY, tl.int64)
        d0 = tl.zeros((BLOCK,), tl.int64)
        d1 = tl.zeros((BLOCK,), tl.int64)
        d2 = tl.zeros((BLOCK,), tl.int64)
    count = tl.zeros((BLOCK,), tl.int64)
    if COUNTS and ACCUMULATE:
        count = tl.load(counts_ptr + i, mask=ok, other=0)
    part = parts_ptr
    for g in range(G):
        _, _, other, o0, o1, o2 = _load_sums(part, part + N, N, EMPTY, BLOCK)
        top, d0, d1, d2 = exact_merge(top, d0, d1, d2, other, o0, o1, o2)
        part += 4 * N
        if COUNTS:
            count += tl.load(part_counts_ptr + g * N + i, mask=ok, other=0)
    _store_sums(sums_ptr, sums_ptr + N, i, ok, top, d0, d1, d2, N)
    if COUNTS:
        tl.store(counts_ptr + i, count, mask=ok)


@triton.jit
def _pow2(exponents):
    """2.0 ** exponents in float64 from its bits, the exponents clamped as ``exact._pow2`` clamps them."""
    return ((tl.minimum(tl.maximum(exponents, -1023), 1023) + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def _value_kernel(tops_ptr, digits_ptr, out_ptr, N, EMPTY: tl.constexpr, NONFINITE: tl.constexpr,
                  BLOCK: tl.constexpr):
    """``value_of`` of BLOCK elements: the digits carried, then added from the lowest. Every product
    is by a power of two, exact, so a fused multiply-add rounds as the twin's two operations do."""
    i, ok, top, d0, d1, d2 = _load_sums(tops_ptr, digits_ptr, N, EMPTY, BLOCK)
    d1 = d1 + (d2 >> 32)  # arithmetic shifts, as the twin's
    d0 = d0 + (d1 >> 32)
    low2 = d2 - ((d2 >> 32) << 32)  # the low 32 bits, as d & 0xFFFFFFFF (see _digit)
    low1 = d1 - ((d1 >> 32) << 32)
    scale = 32 * top
    late = tl.where(scale < -900, -512, 0).to(tl.int64)
    low = low2.to(tl.float64) * _pow2(scale - 64 - late) + low1.to(tl.float64) * _pow2(scale - 32 - late)
    out = (low + d0.to(tl.float64) * _pow2(scale - late)) * _pow2(late)
    out = tl.where(top == EMPTY, 0.0, out)
    out = tl.where(top == NONFINITE, float("nan"), out)
    tl.store(out_ptr + i, out, mask=ok)


def value_triton(tops: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """``value_of`` in one kernel: float64 of ``tops``' shape."""
    assert DIGITS == 3 and DIGIT_BITS == 32  # the kernel's unrolled digits
    tops, digits = tops.contiguous(), digits.contiguous()
    out = torch.empty(tops.shape, dtype=torch.float64, device=tops.device)
    n = tops.numel()
    if n:
        _value_kernel[(triton.cdiv(n, BLOCK),)](tops, digits, out, n, EMPTY=EMPTY_TOP, NONFINITE=NONFINITE_TOP,
                                                BLOCK=BLOCK)
    return out


def accumulate_triton(tops: torch.Tensor, digits: torch.Tensor, values: torch.Tensor, rows: int = 1):
    """``accumulate_reference`` in one kernel, in place (where ``tops`` and ``digits`` are contiguous);
    ``rows``: ``values`` holds that many arrays of ``tops``' size end to end, added in turn."""
    assert DIGITS == 3 and DIGIT_BITS == 32  # the kernel's unrolled digits
    tops, digits = tops.contiguous(), digits.contiguous()
    n = tops.numel()
    if n and rows:
        _accumulate_kernel[(triton.cdiv(n, BLOCK),)](tops, digits, values.contiguous(), n, rows, EMPTY=EMPTY_TOP,
                                                     NONFINITE=NONFINITE_TOP, BLOCK=BLOCK)
    return tops, digits


def merge_triton(tops: torch.Tensor, digits: torch.Tensor, other_tops: torch.Tensor, other_digits: torch.Tensor):
    """``merge_reference`` in one kernel, in place (where ``tops`` and ``digits`` are contiguous): the
    twin is about forty launches, which bound a streamed GMM pass that merges four sums a run."""
    assert DIGITS == 3 and DIGIT_BITS == 32  # the kernel's unrolled digits
    tops, digits = tops.contiguous(), digits.contiguous()
    n = tops.numel()
    if n:
        _merge_kernel[(triton.cdiv(n, BLOCK),)](tops, digits, other_tops.contiguous(), other_digits.contiguous(), n,
                                                EMPTY=EMPTY_TOP, BLOCK=BLOCK)
    return tops, digits


def merge_parts_triton(parts: torch.Tensor, sums: torch.Tensor, accumulate: bool,
                       part_counts: torch.Tensor | None = None, counts: torch.Tensor | None = None):
    """The G exact sums of ``parts`` (G, 4, *shape) merged into ``sums`` (4, *shape) in one kernel,
    in place (both contiguous; ``accumulate``: added to the sums there, else replacing them), and
    the int64 ``part_counts`` (G, *shape) summed into ``counts`` (*shape) alike. Exact sums merge
    in any order to the same bits, so G partials of any grouping give those of one sum."""
    assert DIGITS == 3 and DIGIT_BITS == 32  # the kernel's unrolled digits
    assert parts.is_contiguous() and sums.is_contiguous()
    n = sums[0].numel()
    if n:
        _merge_parts_kernel[(triton.cdiv(n, BLOCK),)](parts, sums, sums if part_counts is None else part_counts,
                                                      sums if counts is None else counts, n, parts.shape[0],
                                                      EMPTY=EMPTY_TOP, ACCUMULATE=accumulate,
                                                      COUNTS=counts is not None, BLOCK=BLOCK)
    return sums
