"""deepclust: deep image clustering (IDFD, SeCu, CDC, AnchorCL) behind one API.

Public entry points::

    from deepclust import DeepClusterer, list_methods, list_datasets, evaluate, kmeans, train
    from deepclust.metrics import cluster_accuracy, nmi, ari
"""

from deepclust._version import __version__
from deepclust.api import DeepClusterer
from deepclust.cluster import kmeans, sinkhorn
from deepclust.config import Config, resolve_config
from deepclust.data import list_datasets, load_dataset
from deepclust.engine import train
from deepclust.methods import list_methods
from deepclust.metrics import evaluate

__all__ = [
    "Config",
    "DeepClusterer",
    "__version__",
    "evaluate",
    "kmeans",
    "list_datasets",
    "list_methods",
    "load_dataset",
    "resolve_config",
    "sinkhorn",
    "train",
]
