"""ExactSum against Python's integers: every element the exact sum of its values' bits at or
above the final top's lowest digit, the same bits for any order and grouping of the additions,
the Triton kernel equal to the torch twin integer for integer, and the float64 read within one
rounding of that integer."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from mega_taxonomy.ops.exact import (DIGIT_BITS, DIGITS, EMPTY_TOP, ExactSum, accumulate_reference, merge_reference,
                                     tops_of, value_reference)


def values(rng, n, spread=60):
    """Float64 values of many scales and both signs, with zeros, subnormals and huge ones."""
    out = rng.normal(size=n) * np.exp2(rng.integers(-spread, spread, n))
    out[rng.random(n) < 0.1] = 0.0
    out[rng.random(n) < 0.03] = 5e-324 * rng.integers(1, 1000)
    out[rng.random(n) < 0.03] = rng.choice([-1, 1]) * 1e300
    return out


def truncated(value: float, top: int) -> int:
    """The value's bits from digit ``top - DIGITS + 1`` up, as an integer count of that digit's unit."""
    unit = Fraction(2) ** (DIGIT_BITS * (top - DIGITS + 1))
    exact = Fraction(value) / unit
    return int(exact) if exact >= 0 else -int(-exact)  # toward zero: the bits of |value|, signed


def integer_of(sum_: ExactSum, element: int) -> int:
    digits = sum_.digits.reshape(DIGITS, -1)[:, element].tolist()
    return sum(d << (DIGIT_BITS * (DIGITS - 1 - i)) for i, d in enumerate(digits))


def test_every_element_is_the_exact_sum_of_its_values_bits_below_the_top():
    rng = np.random.default_rng(0)
    parts = [values(rng, 40) for _ in range(7)]
    total = ExactSum.of(parts[0])
    for part in parts[1:]:
        total += ExactSum.of(part)
    tops = total.tops.tolist()
    for e in range(40):
        column = [float(p[e]) for p in parts]
        top = max(tops_of(torch.tensor(column, dtype=torch.float64)).tolist())
        assert tops[e] == top
        if top == EMPTY_TOP:
            assert integer_of(total, e) == 0
            continue
        expected = sum(truncated(v, top) for v in column)
        assert integer_of(total, e) == expected
        # read once: the integer rounded to float64 (at most two roundings: within 2 ulp)
        exact = float(Fraction(expected) * Fraction(2) ** (DIGIT_BITS * (top - DIGITS + 1)))
        got = float(total.value()[e])
        assert got == pytest.approx(exact, rel=4 * 2.0**-53, abs=1e-320)
        # and far closer to the true sum than float64's running sum can promise
        assert abs(got - math.fsum(column)) <= 2.0**-60 * max(abs(v) for v in column) + 1e-320


def test_a_single_array_reads_back_to_the_bit():
    rng = np.random.default_rng(1)
    x = values(rng, 500)
    converted = ExactSum.of(x).materialize()
    np.testing.assert_array_equal(converted.value(), x + 0.0)
    np.testing.assert_array_equal(ExactSum.of(x).value(), x + 0.0)


def add_in_some_order(parts, rng):
    """The exact sum of ``parts`` by a random tree of ``+`` and ``+=``, from a random permutation."""
    pending = [ExactSum.of(parts[i]) for i in rng.permutation(len(parts))]
    while len(pending) > 1:
        i, j = sorted(rng.choice(len(pending), 2, replace=False).tolist())
        b, a = pending.pop(j), pending.pop(i)
        if rng.random() < 0.5:
            a += b
            pending.append(a)
        else:
            pending.append(b + a)
    return pending[0].materialize()


def test_the_same_bits_for_any_order_and_grouping():
    rng = np.random.default_rng(2)
    parts = [values(rng, (30, 4), spread=30) for _ in range(12)]
    first = add_in_some_order(parts, rng)
    for _ in range(5):
        again = add_in_some_order(parts, rng)
        assert torch.equal(again.tops, first.tops) and torch.equal(again.digits, first.digits)
        np.testing.assert_array_equal(again.value(), first.value())
    assert first.value().shape == (30, 4) and isinstance(first.value(), np.ndarray)


def test_cancellation_and_scalars_and_kinds():
    big = ExactSum.of(np.array([1e16, -1.0]))
    total = big + ExactSum.of(np.array([-1e16, 1.0])) + ExactSum.of(np.array([2.0**-30, 0.0]))
    np.testing.assert_array_equal(total.value(), [2.0**-30, 0.0])  # float64's running sum gives 0.0 and 0.0
    scalar = ExactSum.of(0.1) + ExactSum.of(0.2)
    assert scalar.value() == float(Fraction(0.1) + Fraction(0.2)) and isinstance(scalar.value(), float)
    tensor = ExactSum.of(torch.ones(3, dtype=torch.float64)) + ExactSum.of(torch.ones(3, dtype=torch.float64))
    assert torch.equal(tensor.value(), torch.full((3,), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not add"):
        tensor + ExactSum.of(torch.ones(2, dtype=torch.float64))


def test_a_sum_of_pieces_end_to_end_splits_into_the_sums_of_the_pieces():
    rng = np.random.default_rng(5)
    shapes, kinds = [(), (3,), (2, 4)], ["float", "numpy", "numpy"]
    blocks = [[values(rng, math.prod(shape), spread=40).reshape(shape) for shape in shapes] for _ in range(4)]
    flat = [ExactSum.of(np.concatenate([np.ravel(v) for v in block])) for block in blocks]
    pieces = sum(flat[1:], flat[0]).split(shapes, kinds)
    for i, (piece, kind) in enumerate(zip(pieces, kinds)):
        alone = ExactSum.of(blocks[0][i])
        for block in blocks[1:]:
            alone += ExactSum.of(block[i])
        assert piece.value() == alone.value() if kind == "float" else np.array_equal(piece.value(), alone.value())
        assert type(piece.value()) is (float if kind == "float" else np.ndarray)
    more = ExactSum.of(np.arange(12.0)).split(shapes, kinds)  # pieces still add, exactly
    total = pieces[2] + more[2]
    np.testing.assert_array_equal(total.value(), alone.value() + np.arange(4.0, 12.0).reshape(2, 4))
    with pytest.raises(ValueError, match="do not cut"):
        ExactSum.of(np.zeros(5)).split([(3,)], ["numpy"])


def test_infinities_and_nan_read_nan():
    total = ExactSum.of(np.array([1.0, np.inf, np.nan, 2.0])) + ExactSum.of(np.array([np.inf, 1.0, 1.0, 3.0]))
    out = total.value()
    assert out[0] != out[0] and out[1] != out[1] and out[2] != out[2] and out[3] == 5.0


def test_compiled_kernels_equal_the_twin():
    """numba's accumulate and merge (the CPU path) against the torch twin, integer for integer."""
    from mega_taxonomy.ops.exact.numba import accumulate_numba, merge_numba

    rng = np.random.default_rng(4)
    sums = []
    for _ in range(2):
        tops = torch.full((900,), EMPTY_TOP, dtype=torch.int64)
        digits = torch.zeros(DIGITS, 900, dtype=torch.int64)
        ref = (tops.clone(), digits.clone())
        for _ in range(3):
            x = torch.from_numpy(values(rng, 900, spread=120))
            x[:3] = torch.tensor([np.inf, np.nan, -0.0], dtype=torch.float64)
            ref = accumulate_reference(*ref, x)
            accumulate_numba(tops.numpy(), digits.numpy(), x.numpy())
            assert torch.equal(tops, ref[0]) and torch.equal(digits, ref[1])
        sums.append((tops, digits))
    (a_tops, a_digits), (b_tops, b_digits) = sums
    expected = merge_reference(a_tops, a_digits, b_tops, b_digits)
    merge_numba(a_tops.numpy(), a_digits.numpy(), b_tops.numpy(), b_digits.numpy())
    assert torch.equal(a_tops, expected[0]) and torch.equal(a_digits, expected[1])


def test_triton_kernel_equals_the_twin():
    pytest.importorskip("triton")
    from mega_taxonomy.ops.exact.triton import accumulate_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled there, else interpreted (tests/conftest.py)
    rng = np.random.default_rng(3)
    tops = torch.full((1500,), EMPTY_TOP, dtype=torch.int64, device=device)
    digits = torch.zeros(DIGITS, 1500, dtype=torch.int64, device=device)
    ref = (tops.clone(), digits.clone())
    for _ in range(4):
        x = torch.from_numpy(values(rng, 1500))
        x[:3] = torch.tensor([np.inf, np.nan, -0.0], dtype=torch.float64)
        x = x.to(device)
        ref = accumulate_reference(*ref, x)
        tops, digits = accumulate_triton(tops, digits, x)
        assert torch.equal(tops, ref[0]) and torch.equal(digits, ref[1])


def test_rows_added_at_once_are_the_bits_of_adding_them_one_by_one():
    """``add_rows`` (one kernel on CUDA, ``accumulate_triton`` over rows under the interpreter)
    against ``+=`` row by row."""
    pytest.importorskip("triton")
    from mega_taxonomy.ops.exact.triton import accumulate_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled there, else interpreted (tests/conftest.py)
    rng = np.random.default_rng(7)
    rows = torch.from_numpy(np.stack([values(rng, 1200, spread=200) for _ in range(5)])).reshape(5, 40, 30)
    rows[2, 0, :2] = torch.tensor([np.inf, np.nan], dtype=torch.float64)
    one_by_one = ExactSum.zeros((40, 30), device)
    for row in rows:
        one_by_one += ExactSum.of(row.to(device))
    at_once = ExactSum.zeros((40, 30), device).add_rows(rows.to(device))
    assert torch.equal(at_once.tops, one_by_one.tops) and torch.equal(at_once.digits, one_by_one.digits)
    empty = ExactSum.zeros((40, 30), device)
    tops, digits = accumulate_triton(empty.tops, empty.digits, rows.to(device), len(rows))
    assert torch.equal(tops, one_by_one.tops) and torch.equal(digits, one_by_one.digits)
    with pytest.raises(ValueError, match="do not add"):
        ExactSum.zeros((40, 30)).add_rows(rows[:, :, :2])


def test_triton_merge_equals_the_twin():
    """``merge_triton`` against ``merge_reference`` integer for integer: sums of other scales on
    either side (the digits move down on both), empty elements, infinities and NaN."""
    pytest.importorskip("triton")
    from mega_taxonomy.ops.exact.triton import merge_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled there, else interpreted (tests/conftest.py)
    rng = np.random.default_rng(6)
    sums = []
    for spread in (60, 300):
        total = ExactSum.zeros((2000,), device)
        for _ in range(3):
            x = torch.from_numpy(values(rng, 2000, spread=spread))
            x[rng.random(2000) < 0.1] = 0.0
            total += ExactSum.of(x.to(device))
        sums.append(total)
    a, b = sums
    a.tops[:4], b.tops[4:8] = EMPTY_TOP, EMPTY_TOP
    a.digits[:, :4], b.digits[:, 4:8] = 0, 0
    b += ExactSum.of(torch.tensor([np.inf, np.nan] + [0.0] * 1998, dtype=torch.float64, device=device))
    want = merge_reference(a.tops, a.digits, b.tops, b.digits)
    got = merge_triton(a.tops.clone(), a.digits.clone(), b.tops, b.digits)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert (a.tops > b.tops).any() and (a.tops < b.tops).any()


@pytest.mark.parametrize("accumulate", [False, True])
def test_triton_merge_of_parts_equals_the_twin(accumulate):
    """``merge_parts_triton``: G exact sums end to end merged into one (added to it, with
    ``accumulate``) are ``merge_reference``'s merges in turn, and their counts the counts' sum."""
    pytest.importorskip("triton")
    from mega_taxonomy.ops.exact.triton import merge_parts_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(7)
    def summed(spread):
        total = ExactSum.zeros((1500,), device)
        total += ExactSum.of(torch.from_numpy(values(rng, 1500, spread=spread)).to(device))
        return total

    parts = [summed(60 + 80 * g) for g in range(3)]
    parts[1].tops[:5], parts[1].digits[:, :5] = EMPTY_TOP, 0
    start = summed(60)
    counts = torch.from_numpy(rng.integers(0, 1000, (4, 1500))).to(device)
    want = (start.tops, start.digits) if accumulate else (torch.full_like(start.tops, EMPTY_TOP),
                                                           torch.zeros_like(start.digits))
    for part in parts:
        want = merge_reference(*want, part.tops, part.digits)
    stacked = torch.stack([torch.cat([p.tops[None], p.digits]) for p in parts])  # (G, 4, N)
    sums = torch.cat([start.tops[None], start.digits])
    total = counts[3].clone()
    merge_parts_triton(stacked, sums, accumulate, counts[:3].contiguous(), total)
    assert torch.equal(sums[0], want[0]) and torch.equal(sums[1:], want[1])
    assert torch.equal(total, counts[:3].sum(0) + (counts[3] if accumulate else 0))


def test_triton_rounding_equals_the_twin():
    """``value_triton`` against ``value_reference`` to the bit: sums of every scale, cancellations,
    empty elements, infinities and NaN, and tops low enough for the twin's two-step scaling."""
    pytest.importorskip("triton")
    from mega_taxonomy.ops.exact.triton import value_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled there, else interpreted (tests/conftest.py)
    rng = np.random.default_rng(5)
    total = ExactSum.zeros((3000,), device)
    for spread in (60, 1000, 1070):
        x = torch.from_numpy(values(rng, 3000, spread=spread))
        x[:4] = torch.tensor([np.inf, np.nan, -0.0, 0.0], dtype=torch.float64)
        total += ExactSum.of(x.to(device))
        cancel = torch.from_numpy(rng.random(3000) < 0.2)
        total += ExactSum.of(torch.where(cancel, -x, 0.0).to(device))  # elements cancelled whole
        got, want = value_triton(total.tops, total.digits), value_reference(total.tops, total.digits)
        assert torch.equal(got.view(torch.int64), want.view(torch.int64))
    assert (total.tops * DIGIT_BITS < -900).any() and (want == 0).any() and want.isnan().any()


ALL_REDUCE = """
import datetime, os, sys
import numpy as np
import torch
import torch.distributed as dist
from mega_taxonomy.ops.exact import ExactSum, all_reduce_exact
rank, world = int(sys.argv[1]), int(sys.argv[2])
os.environ["GLOO_SOCKET_IFNAME"] = "lo"
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[3]}", rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
rng = np.random.default_rng(11)
parts = [[rng.normal(size=(5, 3)) * np.exp2(rng.integers(-70, 70, (5, 3))), rng.normal(size=7) * 1e10]
         for _ in range(world)]
parts[1] = [np.zeros_like(p) for p in parts[1]]  # rank 1 adds empty sums: nothing changes
mine = [ExactSum.zeros(p.shape, kind="numpy") if rank == 1 else ExactSum.of(p) for p in parts[rank]]
reduced = all_reduce_exact(mine)
expected = [ExactSum.of(p) for p in parts[world - 1]]
for r in reversed(range(world - 1)):
    expected = [e + ExactSum.of(p) for e, p in zip(expected, parts[r])]
for got, want in zip(reduced, expected):
    assert torch.equal(got.tops, want.tops) and torch.equal(got.digits, want.digits), rank
    np.testing.assert_array_equal(got.value(), want.value())
print("ok", flush=True)
dist.destroy_process_group()
"""


def test_all_reduce_gives_the_bits_of_adding_the_ranks_one_by_one(tmp_path):
    """Three processes over gloo: the tops' maximum, then the aligned digits' sum, equal the
    ranks' sums added in reverse order in one process."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE)
    ranks = [subprocess.Popen([sys.executable, str(script), str(rank), "3", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(3)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0, 0], outputs
    assert all(out == "ok\n" for out, _ in outputs)
