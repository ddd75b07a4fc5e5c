"""Pretrained encoders and cached embeddings (issue #27): cluster images on the features of a
published network instead of training a CNN.

``create_encoder("timm:NAME[@PATH]" | "torchvision:ARCH.WEIGHTS[@PATH]")`` builds an encoder
from local weights; ``embed(data, spec)`` computes (or reuses) the embedding of a dataset in an
on-disk cache and returns it as a read-only memmap (``Embedding.as_feature_data()`` gives the
:class:`~deepclust.data.base.FeatureData` that feature mode trains on).
"""

from deepclust.pretrained.embed import Embedding, default_cache_root, embed
from deepclust.pretrained.encoders import Encoder, Preprocess, create_encoder, list_encoders, parse_spec

__all__ = [
    "Embedding",
    "Encoder",
    "Preprocess",
    "create_encoder",
    "default_cache_root",
    "embed",
    "list_encoders",
    "parse_spec",
]
