"""The Triton kernel of ``grouped_nearest`` against its torch twin and a float64 brute force.

Without a GPU the kernel runs in Triton's CPU interpreter (conftest.py).
"""

import numpy as np
import pytest
import torch
from kernel_checks import DEVICE, RTOL, brute_force_distances

from mega_taxonomy.ops import grouped_nearest
from mega_taxonomy.ops.grouped_assign import grouped_nearest_reference


def problem(rng, n, n_groups, max_children, d):
    counts = rng.integers(0, max_children + 1, size=n_groups)
    counts[0] = max(counts[0], 1)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    centers = rng.normal(size=(offsets[-1], d)) * 2
    groups = rng.integers(0, n_groups, size=n)
    # rows near one of their group's children, when it has some
    near = np.array([offsets[g] + rng.integers(max(counts[g], 1)) for g in groups]) % max(offsets[-1], 1)
    x = centers[near] + rng.normal(size=(n, d))
    return x, groups, centers, offsets


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
# few wide groups (several child tiles), many narrow ones (some empty), one child each
@pytest.mark.parametrize("n,n_groups,max_children,d", [(300, 2, 150, 24), (400, 60, 9, 40), (50, 50, 1, 16)])
def test_kernel_matches_brute_force_and_twin(metric, dtype, n, n_groups, max_children, d):
    rng = np.random.default_rng(n + n_groups + d)
    x, groups, c, offsets = problem(rng, n, n_groups, max_children, d)
    xt, ct = torch.tensor(x, dtype=dtype, device=DEVICE), torch.tensor(c, dtype=dtype, device=DEVICE)
    gt, ot = torch.tensor(groups, device=DEVICE), torch.tensor(offsets, device=DEVICE)
    dist, idx = grouped_nearest(xt, gt, ct, ot, metric=metric, backend="triton")
    full = brute_force_distances(xt, ct, metric)
    mask = torch.full(full.shape, float("inf"), dtype=torch.float64)
    for i, g in enumerate(groups):
        mask[i, offsets[g]:offsets[g + 1]] = 0
    full = full + mask
    has = torch.isfinite(full).any(1)
    idx, dist = idx.cpu(), dist.cpu().double()
    assert (idx[~has] == -1).all() and torch.isinf(dist[~has]).all()
    best = full[has].min(1).values
    chosen = full[has].gather(1, idx[has][:, None]).squeeze(1)
    scale = full[has].masked_fill(~torch.isfinite(full[has]), 0).abs().max(1).values + 1e-12
    bad = torch.nonzero(chosen - best > RTOL[dtype] * scale).squeeze(1)
    assert len(bad) == 0, f"rows {bad[:10].tolist()} chose a worse child"
    torch.testing.assert_close(dist[has], chosen, rtol=10 * RTOL[dtype], atol=10 * RTOL[dtype] * float(scale.max()))
    _, twin = grouped_nearest_reference(xt, gt, ct, ot, metric=metric)
    assert (twin.cpu() == idx).float().mean().item() >= 1 - 2 / n


def test_ties_go_to_the_lowest_child_across_tiles():
    x = torch.zeros(3, 8, device=DEVICE)
    c = torch.ones(300, 8, device=DEVICE)  # equal distances over several child tiles of group 1
    offsets = torch.tensor([0, 10, 300], device=DEVICE)
    _, idx = grouped_nearest(x, torch.tensor([1, 0, 1], device=DEVICE), c, offsets, backend="triton")
    assert idx.tolist() == [10, 0, 10]


def test_offsets_move_once_per_array():
    """The blocks of a pass pass the same offsets array: moved once (``OperandCache.offsets_on``), and
    again for another array, even one of equal values."""
    from mega_taxonomy.ops import OperandCache

    offsets_on = OperandCache().offsets_on
    offsets = np.array([0, 2, 7, 7])
    first = offsets_on(offsets, torch.device(DEVICE))
    assert first[1] == 5 and first[0].tolist() == [0, 2, 7, 7]
    assert offsets_on(offsets, torch.device(DEVICE))[0] is first[0]
    assert offsets_on(offsets.copy(), torch.device(DEVICE))[0] is not first[0]


def test_segments_are_kept_per_groups_tensor_until_it_changes():
    """A level's passes give each block the same groups tensor: its sort by group is made once.
    Written to in place, the tensor sorts again; collected, its segments are forgotten."""
    from mega_taxonomy.io import device
    from mega_taxonomy.ops.grouped_assign import triton as grouped_assign_triton

    rng = np.random.default_rng(5)
    x, groups, c, offsets = problem(rng, 200, 20, 6, 16)
    xt, ct = torch.tensor(x, dtype=torch.float32, device=DEVICE), torch.tensor(c, dtype=torch.float32, device=DEVICE)
    gt, ot = torch.tensor(groups, device=DEVICE), torch.tensor(offsets, device=DEVICE)
    made = []
    real = grouped_assign_triton.segments
    grouped_assign_triton.segments = lambda *args: made.append(args[1:]) or real(*args)
    try:
        first = grouped_nearest(xt, gt, ct, ot, backend="triton")[1]
        assert torch.equal(grouped_nearest(xt, gt, ct, ot, backend="triton")[1], first) and len(made) == 1
        gt[:100] = torch.tensor(rng.integers(0, 20, 100), device=DEVICE)  # in place: a new version
        moved = grouped_nearest(xt, gt, ct, ot, backend="triton")[1]
        assert len(made) == 2
        assert torch.equal(moved, grouped_nearest_reference(xt, gt, ct, ot)[1])
    finally:
        grouped_assign_triton.segments = real
    kept_before = sum(device.kept._bytes.values())
    del gt
    assert sum(device.kept._bytes.values()) < kept_before


def test_kept_values_live_as_long_as_their_object_within_the_budget():
    from mega_taxonomy.io.device import KeptWhileAlive

    kept = KeptWhileAlive(cpu_bytes=1000)
    cpu = torch.device("cpu")
    a, b = np.zeros(10), np.zeros(10)
    calls = []

    def make(n):
        return lambda: calls.append(n) or torch.zeros(n, dtype=torch.float64)

    assert kept.get(a, "k", cpu, make(100)) is kept.get(a, "k", cpu, make(100))  # 800 bytes: kept
    assert kept.get(a, "other", cpu, make(1)) is not None and len(calls) == 2
    kept.get(b, "k", cpu, make(100))
    kept.get(b, "k", cpu, make(100))  # over the budget: made again every time
    assert len(calls) == 4
    del a
    assert kept._bytes[cpu] == 0 and not kept._values  # forgotten with their object
    kept.get(b, "k", cpu, make(100))
    assert len(calls) == 5 and kept._bytes[cpu] == 800
