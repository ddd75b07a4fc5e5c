"""deepclust: deep image clustering (IDFD, SeCu, CDC, AnchorCL) behind one API.

Public entry points::

    from deepclust import DeepClusterer, list_methods, list_datasets, evaluate, kmeans, train
    from deepclust.metrics import cluster_accuracy, nmi, ari
"""

from deepclust._version import __version__  # noqa: E402

from deepclust.cluster import kmeans, sinkhorn  # noqa: E402
from deepclust.config import Config, resolve_config  # noqa: E402
from deepclust.data import list_datasets, load_dataset  # noqa: E402
from deepclust.engine import train  # noqa: E402
from deepclust.methods import list_methods  # noqa: E402
from deepclust.metrics import evaluate  # noqa: E402
from deepclust.api import DeepClusterer  # noqa: E402

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
