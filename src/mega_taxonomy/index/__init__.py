"""Indexes over vectors: the exact kd-tree (``KDTree``) and its distributed form over a pool of
workers (``DistributedKDTree``, PANDA's scheme)."""

from .kdtree import KDTree
from .panda import DistributedKDTree

__all__ = ["DistributedKDTree", "KDTree"]
