"""The kd-tree's bucket scan (the GPU path): its torch twin and its Triton kernel (in Triton's CPU
interpreter without a GPU, tests/conftest.py) against a float64 brute force."""

import numpy as np
import pytest
import torch

from mega_taxonomy.ops.knn import build_tree, knn_reference
from mega_taxonomy.ops.knn.buckets import DeviceTree, bucket_knn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _scan(name):
    if name == "torch":
        return None
    from mega_taxonomy.ops.knn.triton import bucket_scan_triton

    return bucket_scan_triton


# the interpreter runs a program's every step in Python: one shape for the kernel, three for the twin
@pytest.mark.parametrize(("scan", "d"), [("torch", 1), ("torch", 3), ("torch", 6), ("triton", 3)])
def test_bucket_knn_is_exact(scan, d):
    rng = np.random.default_rng(d)
    x = rng.random((400, d))
    q = np.concatenate([rng.random((20, d)), x[:12]])  # some queries on points
    tree = DeviceTree(build_tree(x, leafsize=8), DEVICE)
    got_d, got_i = bucket_knn(tree, torch.as_tensor(q, device=DEVICE), 6, scan=_scan(scan), block=16)
    ref_d, ref_i = knn_reference(x, q, 6)
    np.testing.assert_array_equal(got_i.cpu().numpy(), ref_i)
    np.testing.assert_allclose(got_d.cpu().numpy(), ref_d, rtol=1e-12)


@pytest.mark.parametrize("scan", ["torch", "triton"])
def test_ties_bound_and_k_over_n(scan):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(90, 2)).astype(np.float64)  # duplicates across leaves
    q = rng.integers(0, 4, size=(16, 2)) + 0.5
    tree = DeviceTree(build_tree(x, leafsize=4), DEVICE)
    for k, bound in ((7, np.inf), (5, 0.6)) if scan == "triton" else ((7, np.inf), (5, 0.6), (95, np.inf)):
        got_d, got_i = bucket_knn(tree, torch.as_tensor(q, device=DEVICE), k, bound=bound, scan=_scan(scan), block=8)
        ref_d, ref_i = knn_reference(x, q, k, bound=bound)
        np.testing.assert_array_equal(got_i.cpu().numpy(), ref_i)
        np.testing.assert_allclose(got_d.cpu().numpy(), ref_d)


@pytest.mark.parametrize("k", [1, 10, 16])
def test_the_kernels_bag_keeps_the_k_best_through_ties(k):
    """Many equal distances (points on a small grid, duplicated): the kernel's bag, filled a point
    at a time and put in order at the end, gives the twin's rows, ties to the smaller row."""
    rng = np.random.default_rng(k)
    x = rng.integers(0, 3, size=(150, 3)).astype(np.float64)
    q = np.concatenate([rng.integers(0, 3, size=(20, 3)) + 0.5, x[:10]])
    tree = DeviceTree(build_tree(x, leafsize=8), DEVICE)
    got_d, got_i = bucket_knn(tree, torch.as_tensor(q, device=DEVICE), k, scan=_scan("triton"), block=8)
    ref_d, ref_i = knn_reference(x, q, k)
    np.testing.assert_array_equal(got_i.cpu().numpy(), ref_i)
    np.testing.assert_allclose(got_d.cpu().numpy(), ref_d)
