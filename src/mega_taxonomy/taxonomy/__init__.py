"""The taxonomy: hierarchical k-means, paths, routing and search."""

from .config import Balancing, Routing
from .engine import TaxonomyEngine
from .path_cache import PathCache
from .tree import Level, Tree

__all__ = ["Balancing", "Level", "PathCache", "Routing", "TaxonomyEngine", "Tree"]
