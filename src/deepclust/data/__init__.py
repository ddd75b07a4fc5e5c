"""Datasets in memory as uint8 tensors: the registry, splits and instance indices.

``load_dataset(name, split, data_dir, image_size)`` returns an :class:`ImageData`;
``IndexedDataset`` wraps it for a DataLoader and yields ``(image, label, index)``.
"""

from deepclust.data.base import ImageData, IndexedDataset
from deepclust.data.open import open_dataset
from deepclust.data.registry import (
    DATASETS,
    list_datasets,
    list_splits,
    load_dataset,
    resolve_data_dir,
)
from deepclust.data.spec import DATASET_SPECS, DatasetSpec
from deepclust.data.stream import StreamData

__all__ = [
    "DATASETS",
    "DATASET_SPECS",
    "DatasetSpec",
    "ImageData",
    "IndexedDataset",
    "list_datasets",
    "list_splits",
    "load_dataset",
    "open_dataset",
    "StreamData",
    "resolve_data_dir",
]
