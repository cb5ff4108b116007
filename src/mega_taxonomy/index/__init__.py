"""Search indexes over stored vectors: the IVF index (k-means or GMM coarse quantizer)."""

from .ivf import IVFIndex, SearchStats

__all__ = ["IVFIndex", "SearchStats"]
