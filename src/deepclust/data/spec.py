"""One :class:`DatasetSpec` per registered dataset, in :data:`DATASET_SPECS`: everything the
library knows of a named dataset without reading it.

The registry's loaders and splits (data/registry.py), the shape :func:`deepclust.data.peek`
reports and the stored-at-native-size rule of :func:`deepclust.data.open_dataset` are all read
from here. A new dataset is one entry: its loader (``fn(data_dir, split, image_size) ->
ImageData``), its splits, its shape and whether it has one native size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepclust.data import folder, standard
from deepclust.data.base import ImageData
from deepclust.errors import DataError

__all__ = ["DATASET_SPECS", "DatasetSpec", "Loader"]

Loader = Callable[[Path, str, "int | None"], ImageData]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    ``channels``, ``size`` (the native side in pixels, the shorter one) and ``n_train`` (the
    training images) are what :func:`deepclust.data.peek` reports for it. ``native_size``: every
    image has one size, at which it is stored in memory (the crop or resize to the model's input
    happens per batch); False for variable-size sources (the ImageNet subsets, stored at the
    input size; ``size`` is then the usual 224). ``aliases``: other spellings that name it, after
    lower-casing and ``_`` -> ``-``.
    """

    name: str
    loader: Loader
    splits: tuple[str, ...]
    channels: int
    size: int
    n_train: int
    native_size: bool
    aliases: tuple[str, ...] = ()


def _imagenet(data_dir: Path, split: str, image_size: int | None) -> ImageData:
    raise DataError(
        "dataset 'imagenet' (1.28M images) is read by streaming only, not into memory: train on it "
        "(e.g. deepclust train secu/imagenet) or open it with deepclust.data.open_dataset"
    )


_SUBSET_SPLITS = ("train", "train+test")

_SPECS = (
    DatasetSpec(
        "digits",
        lambda d, s, z: standard.load_digits(d, s, z),
        standard.DIGITS_SPLITS,
        channels=1,
        size=8,
        n_train=1797,
        native_size=True,
    ),
    DatasetSpec(
        "cifar10",
        lambda d, s, z: standard.load_cifar10(d, s, z),
        standard.CIFAR_SPLITS,
        channels=3,
        size=32,
        n_train=50000,
        native_size=True,
        aliases=("cifar-10",),
    ),
    DatasetSpec(
        "cifar10-jpeg",
        lambda d, s, z: standard.load_cifar10(d, s, z, jpeg_only=True),
        standard.CIFAR_SPLITS,
        channels=3,
        size=32,
        n_train=50000,
        native_size=True,
    ),
    DatasetSpec(
        "cifar100-20",
        lambda d, s, z: standard.load_cifar100(d, s, z, coarse=True),
        standard.CIFAR_SPLITS,
        channels=3,
        size=32,
        n_train=50000,
        native_size=True,
        aliases=("cifar100-superclass",),
    ),
    DatasetSpec(
        "cifar100",
        lambda d, s, z: standard.load_cifar100(d, s, z, coarse=False),
        standard.CIFAR_SPLITS,
        channels=3,
        size=32,
        n_train=50000,
        native_size=True,
        aliases=("cifar-100",),
    ),
    DatasetSpec(
        "fashion-mnist",
        lambda d, s, z: standard.load_fashion_mnist(d, s, z),
        standard.CIFAR_SPLITS,
        channels=1,
        size=28,
        n_train=60000,
        native_size=True,
        aliases=("fashionmnist",),
    ),
    DatasetSpec(
        "stl10",
        lambda d, s, z: standard.load_stl10(d, s, z),
        standard.STL10_SPLITS,
        channels=3,
        size=96,
        n_train=13000,
        native_size=True,
        aliases=("stl-10",),
    ),
    DatasetSpec(
        "imagenet10",
        lambda d, s, z: folder.load_imagenet_subset("imagenet10", folder.IMAGENET10_CLASSES, d, s, z),
        _SUBSET_SPLITS,
        channels=3,
        size=224,
        n_train=13000,
        native_size=False,
    ),
    DatasetSpec(
        "imagenet-dogs",
        lambda d, s, z: folder.load_imagenet_subset("imagenet-dogs", folder.IMAGENET_DOGS_CLASSES, d, s, z),
        _SUBSET_SPLITS,
        channels=3,
        size=224,
        n_train=19500,
        native_size=False,
        aliases=("imagenetdogs",),
    ),
    DatasetSpec(
        "tiny-imagenet",
        lambda d, s, z: folder.load_tiny_imagenet(d, s, z),
        folder.TINY_IMAGENET_SPLITS,
        channels=3,
        size=64,
        n_train=100000,
        native_size=True,
        aliases=("tinyimagenet",),
    ),
    # read by streaming only (data/open.py -> data/imagenet.py), never into memory
    DatasetSpec("imagenet", _imagenet, ("train", "val"), channels=3, size=224, n_train=1281167, native_size=False),
)

#: name -> spec, in the order the registry lists them
DATASET_SPECS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
