"""Clustering primitives in torch: k-means (k-means++ seeding, chunked Lloyd), k-means over the
shards of a torch.distributed job, exact k nearest neighbours (cosine), and Sinkhorn-Knopp."""

from .kmeans import KMeansResult, assign_to_centers, kmeans
from .neighbors import nearest_neighbors
from .sharded_kmeans import kmeans_distributed
from .sinkhorn import sinkhorn

__all__ = ["kmeans", "KMeansResult", "assign_to_centers", "kmeans_distributed", "nearest_neighbors", "sinkhorn"]
