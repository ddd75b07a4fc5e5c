"""Clustering primitives in torch: k-means (k-means++ seeding, chunked Lloyd) and Sinkhorn-Knopp."""

from .kmeans import KMeansResult, assign_to_centers, kmeans
from .sinkhorn import sinkhorn

__all__ = ["kmeans", "KMeansResult", "assign_to_centers", "sinkhorn"]
