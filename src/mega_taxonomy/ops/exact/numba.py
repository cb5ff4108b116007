"""Compiled CPU kernels (numba) of ``ExactSum``: float64 values, or other exact sums, added in place.

# Inputs (flat, C-contiguous):
#   tops   : (n,)     int64 in and out: each element's top digit
#   digits : (3, n)   int64 in and out: its digits top, top - 1, top - 2
#   values : (n,)     float64 (accumulate_numba), or other_tops (n,) and other_digits (3, n) (merge_numba)

The arithmetic is ``accumulate_reference``'s, integer for integer (the same bits), in one loop
over the elements: 4-5 ns an element here, against the twin's 45 (a deep taxonomy level's block
partial, 65,536 nodes x 16 dimensions, is a million elements per block).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import DIGIT_BITS, DIGITS, EMPTY_TOP, NONFINITE_TOP

_MASK = (1 << DIGIT_BITS) - 1


@njit(cache=True, nogil=True, inline="always")
def _digit(mantissa, low, top, i):  # pragma: no cover - compiled
    shift = low - DIGIT_BITS * (top - i)
    if shift >= DIGIT_BITS:
        return 0
    if shift >= 0:
        return (mantissa & ((1 << (DIGIT_BITS - shift)) - 1)) << shift
    if shift <= -63:
        return 0
    return (mantissa >> -shift) & _MASK


@njit(cache=True, nogil=True, inline="always")
def _move(digits, e, shift):  # pragma: no cover - compiled
    """Element e's digits moved ``shift`` (>= 1) positions down; those that fall off dropped."""
    for i in range(DIGITS - 1, -1, -1):
        digits[i, e] = digits[i - shift, e] if i - shift >= 0 else 0


@njit(cache=True, nogil=True, boundscheck=False)
def accumulate_numba(tops, digits, values):  # pragma: no cover - compiled
    bits_of = values.view(np.int64)
    for e in range(values.shape[0]):
        bits = bits_of[e]
        exponent = (bits >> 52) & 0x7FF
        if bits & 0x7FFFFFFFFFFFFFFF == 0:
            continue  # a zero adds nothing, and its top is below every other
        top = NONFINITE_TOP if exponent == 0x7FF else (max(exponent, 1) - 1023) >> 5
        if top > tops[e]:
            _move(digits, e, top - tops[e])
            tops[e] = top
        top = tops[e]
        mantissa = bits & 0xFFFFFFFFFFFFF
        low = -1074
        if exponent > 0:
            mantissa |= 0x10000000000000
            low = exponent - 1075
        sign = -1 if bits < 0 else 1
        for i in range(DIGITS):
            digits[i, e] += sign * _digit(mantissa, low, top, i)


@njit(cache=True, nogil=True, boundscheck=False)
def merge_numba(tops, digits, other_tops, other_digits):  # pragma: no cover - compiled
    for e in range(tops.shape[0]):
        other = other_tops[e]
        if other == EMPTY_TOP:
            continue
        if other > tops[e]:
            _move(digits, e, other - tops[e])
            tops[e] = other
        shift = tops[e] - other
        for i in range(shift, DIGITS):
            digits[i, e] += other_digits[i - shift, e]
