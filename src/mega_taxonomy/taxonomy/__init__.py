"""The taxonomy: hierarchical k-means, paths, routing and search."""

from .engine import TaxonomyEngine
from .tree import Level, Tree

__all__ = ["Level", "TaxonomyEngine", "Tree"]
