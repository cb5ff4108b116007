"""mega-taxonomy: organize very large collections of embedding vectors.

Public API re-exports only; the layers are the subpackages (see DESIGN.md).
"""

__version__ = "0.1.0"

from .cluster import KMeans
from .errors import ConfigError, DataError, MegaTaxonomyError, StorageError
from .io import VectorSource
from .runtime import LocalRuntime
from .storage import Store
from .taxonomy import TaxonomyEngine

__all__ = [
    "ConfigError", "DataError", "KMeans", "LocalRuntime", "MegaTaxonomyError", "StorageError", "Store",
    "TaxonomyEngine", "VectorSource", "__version__",
]
