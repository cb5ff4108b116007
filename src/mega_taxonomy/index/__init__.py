"""Indexes over vectors: the IVF index (k-means or GMM coarse quantizer, ``IVFIndex``), the exact
kd-tree (``KDTree``) and its distributed form over a pool of workers (``DistributedKDTree``,
PANDA's scheme)."""

from .ivf import IVFIndex, SearchStats
from .kdtree import KDTree
from .panda import DistributedKDTree

__all__ = ["DistributedKDTree", "IVFIndex", "KDTree", "SearchStats"]
