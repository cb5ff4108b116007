"""Clustering algorithms: k-means now; Gaussian mixtures and balancing join here."""

from .kmeans import KMeans

__all__ = ["KMeans"]
