"""Clustering primitives in torch: k-means (k-means++ seeding, chunked Lloyd), k-means over the
shards of a torch.distributed job, and Sinkhorn-Knopp."""

from .kmeans import KMeansResult, assign_to_centers, kmeans
from .distributed import kmeans_distributed
from .sinkhorn import sinkhorn

__all__ = ["kmeans", "KMeansResult", "assign_to_centers", "kmeans_distributed", "sinkhorn"]
