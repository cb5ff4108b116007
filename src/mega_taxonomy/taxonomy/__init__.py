"""The taxonomy: hierarchical k-means, paths, routing and search."""

from .config import Balancing, Routing
from .engine import TaxonomyEngine
from .tree import Level, Tree

__all__ = ["Balancing", "Level", "Routing", "TaxonomyEngine", "Tree"]
