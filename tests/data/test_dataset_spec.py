"""One DatasetSpec per registered dataset (data/spec.py): the registry, peek and open_dataset
read it."""

from __future__ import annotations

import pytest

from deepclust.data import DATASET_SPECS, list_datasets, list_splits, load_dataset, registry
from deepclust.data import open as open_mod
from deepclust.data.peek import DataShape, peek
from deepclust.errors import DataError


def test_specs_are_named_once_and_their_aliases_lead_to_them() -> None:
    assert list_datasets() == list(DATASET_SPECS)
    aliases = [a for s in DATASET_SPECS.values() for a in s.aliases]
    assert len(set(aliases)) == len(aliases) and not set(aliases) & set(DATASET_SPECS)
    for name, spec in DATASET_SPECS.items():
        assert spec.name == name == name.lower() and "train" in spec.splits
        for alias in spec.aliases:
            assert list_splits(alias.upper().replace("-", "_")) == list(spec.splits)
            assert peek(alias) == DataShape(spec.channels, spec.size, spec.n_train)


def test_the_digits_spec_matches_the_loaded_images() -> None:
    data = load_dataset("digits", "train")
    n, c, h, w = data.images.shape
    assert peek("digits") == DataShape(c, min(h, w), n)  # 1,797 images of 1 x 8 x 8


def test_the_lookups_derived_from_the_specs_keep_the_tables_they_replaced() -> None:
    # transcribed from the four tables before they became data/spec.py (DATASETS, DATASET_SPLITS,
    # peek's _KNOWN, open's NATIVE_SIZE)
    assert open_mod.NATIVE_SIZE == {
        "digits",
        "cifar10",
        "cifar10-jpeg",
        "cifar100",
        "cifar100-20",
        "fashion-mnist",
        "stl10",
        "tiny-imagenet",
    }
    assert [peek(n) for n in ("fashion-mnist", "stl10", "imagenet-dogs", "tiny-imagenet", "imagenet")] == [
        DataShape(1, 28, 60000),
        DataShape(3, 96, 13000),
        DataShape(3, 224, 19500),
        DataShape(3, 64, 100000),
        DataShape(3, 224, 1281167),
    ]
    assert registry.DATASET_SPLITS["imagenet10"] == ("train", "train+test")
    assert registry.DATASET_SPLITS["tiny-imagenet"] == ("train", "val", "test", "train+val")
    assert list(registry.DATASET_SPLITS)[-2:] == ["npz", "folder"]
    with pytest.raises(DataError, match="streaming only"):
        load_dataset("imagenet")
