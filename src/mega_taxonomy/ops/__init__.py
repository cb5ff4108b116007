"""Compute kernels: each op is a dispatcher with a torch twin (``*_reference``), and a Triton
kernel on CUDA where one exists."""

from .assign import METRICS, compute_dtype, distances, nearest, normalize_rows, topk
from .grouped_assign import grouped_nearest, grouped_topk

__all__ = ["METRICS", "compute_dtype", "distances", "grouped_nearest", "grouped_topk", "nearest", "normalize_rows",
           "topk"]
