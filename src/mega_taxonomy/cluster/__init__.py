"""Clustering algorithms: k-means now; Gaussian mixtures and balancing join here."""

from .gmm import GaussianMixture
from .kmeans import KMeans

__all__ = ["GaussianMixture", "KMeans"]
