"""mega-taxonomy: organize very large collections of embedding vectors.

Public API re-exports only; the layers are the subpackages (see DESIGN.md).
"""

__version__ = "0.1.0"

from .cluster import GaussianMixture, KMeans
from .errors import ConfigError, DataError, MegaTaxonomyError, StorageError, WorkerError
from .index import DistributedKDTree, IVFIndex, KDTree
from .io import VectorSource
from .kv import EvictStrategy, HashTable
from .learn import (
    FastKMeansClassifier,
    FastKMeansClusterer,
    FastKMeansRegressor,
    FastMultiLabelKMeansClassifier,
)
from .runtime import LocalRuntime
from .storage import Store
from .taxonomy import Balancing, PathCache, Routing, TaxonomyEngine

__all__ = [
    "Balancing", "ConfigError", "DataError", "DistributedKDTree", "EvictStrategy", "FastKMeansClassifier",
    "FastKMeansClusterer", "FastKMeansRegressor", "FastMultiLabelKMeansClassifier", "GaussianMixture", "HashTable",
    "IVFIndex", "KDTree", "KMeans", "LocalRuntime", "MegaTaxonomyError", "PathCache", "RayRuntime", "Routing",
    "StorageError", "Store", "TaxonomyEngine", "VectorSource", "WorkerError", "__version__",
]


def __getattr__(name):
    if name == "RayRuntime":  # imports ray (an optional extra, slow to import) only when asked for
        from .runtime.ray import RayRuntime

        return RayRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
