"""The Triton kernel of ``probe_rerank`` against the float64 brute force and the twin (without a GPU
in Triton's interpreter, set by tests/conftest.py)."""

import numpy as np
import pytest
import torch
from kernel_checks import DEVICE
from test_probe import brute_force, check_close, layout

from mega_taxonomy.ops.probe import probe_rerank


@pytest.mark.parametrize("scan", ["query", "list"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "inner_product"])
@pytest.mark.parametrize("copies,k", [(1, 5), (2, 8)])
def test_kernel_matches_brute_force(metric, copies, k, scan):
    rng = np.random.default_rng(k)
    _, stored, ids, offsets, _ = layout(rng, 150, 12, 6, copies)
    q = rng.normal(size=(7, 12)).astype(np.float32)
    probes = np.stack([rng.choice(6, 3, replace=False) for _ in range(7)])
    probes[2, 1] = -1
    d, i = probe_rerank(torch.tensor(q, device=DEVICE), torch.tensor(probes, device=DEVICE),
                        torch.tensor(offsets, device=DEVICE), torch.tensor(stored, device=DEVICE),
                        torch.tensor(ids, device=DEVICE), k, metric=metric, dedup=copies > 1, backend="triton",
                        layout=scan)
    ref_d, ref_i = brute_force(q, stored, ids, offsets, probes, metric, k)
    check_close(d.cpu().numpy(), i.cpu().numpy(), ref_d, ref_i)


@pytest.mark.parametrize("scan", ["query", "list"])
def test_kernel_pads_short_lists(scan):
    rng = np.random.default_rng(0)
    _, stored, ids, offsets, _ = layout(rng, 12, 4, 6)
    q = rng.normal(size=(3, 4)).astype(np.float32)
    probes = np.array([[0], [-1], [1]])
    d, i = probe_rerank(*(torch.tensor(a, device=DEVICE) for a in (q, probes, offsets, stored, ids)), 16,
                        backend="triton", layout=scan)
    d, i = d.cpu(), i.cpu()
    n = np.diff(offsets)[[0, 1]]
    assert (i[0] >= 0).sum() == n[0] and (i[1] == -1).all() and (i[2] >= 0).sum() == n[1]
    assert torch.isinf(d[i < 0]).all()


def test_list_major_scan_crosses_row_tiles_and_query_tiles():
    """Lists of several row tiles, and lists probed by more queries than a tile holds: the
    list-major scan gives the query-major scan's candidates, row for row, and the brute force's
    answers; a row tile that improves no query's k-th best is skipped without changing them."""
    from mega_taxonomy.ops.probe import triton as probe_triton

    rng = np.random.default_rng(3)
    _, stored, ids, offsets, _ = layout(rng, 400, 16, 2)  # about 200 rows a list: 4 tiles of 64
    q = rng.normal(size=(70, 16)).astype(np.float32)  # 70 queries a list: 2 tiles of 64
    probes = np.stack([rng.permutation(2) for _ in range(70)])
    stored[offsets[0] + 128:offsets[1]] += 50.0  # list 0's last tiles improve no query: skipped
    args = [torch.tensor(a, device=DEVICE) for a in (q, probes, offsets, stored)]
    q_t, probes_t, offsets_t, stored_t = args
    q_base = (q_t.float() ** 2).sum(1)
    x_add = (stored_t.float() ** 2).sum(1)
    x_scale = torch.full_like(x_add, -2.0)
    scan_args = (q_t, q_base, probes_t, offsets_t, stored_t, x_add, x_scale, 8, 0.0)
    by_query = probe_triton.probe_scan_triton(*scan_args)
    by_list = probe_triton.probe_scan_list_triton(*scan_args)
    assert torch.equal(by_list[1], by_query[1])  # the same rows, in the same order
    torch.testing.assert_close(by_list[0], by_query[0], rtol=1e-5, atol=1e-4)
    d, i = probe_rerank(*args, torch.tensor(ids, device=DEVICE), 8, backend="triton", layout="list")
    check_close(d.cpu().numpy(), i.cpu().numpy(), *brute_force(q, stored, ids, offsets, probes, "euclidean", 8))


def test_list_tiles_group_pairs_by_list():
    """Every (query, slot) pair with a list lands in exactly one tile of that list, at most
    ``block_q`` pairs a tile, queries in order within a list."""
    from mega_taxonomy.ops.probe.triton import list_tiles

    probes = torch.tensor([[2, 0], [2, -1], [0, 2], [2, 1]])
    pair_q, pair_s, tile_list, start, end = list_tiles(probes, 4, 2)
    tiles = [(int(tile_list[t]), [(int(pair_q[j]), int(pair_s[j])) for j in range(start[t], end[t])])
             for t in range(len(tile_list))]
    assert tiles == [(0, [(0, 1), (2, 0)]), (1, [(3, 1)]), (2, [(0, 0), (1, 0)]), (2, [(2, 1), (3, 0)])]
