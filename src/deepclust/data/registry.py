"""The dataset registry: the loaders and splits of the registered datasets (one
:class:`~deepclust.data.spec.DatasetSpec` each, data/spec.py), and :func:`load_dataset`.

A loader is ``fn(data_dir: Path, split: str, image_size: int | None) -> ImageData``. Names
with a ``:`` are ``npz:PATH`` or ``folder:PATH`` (PATH relative to the working directory).
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

from deepclust.data import folder, npz
from deepclust.data.base import ImageData
from deepclust.data.spec import DATASET_SPECS, Loader
from deepclust.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["DATASETS", "DATASET_SPLITS", "list_datasets", "list_splits", "load_dataset", "resolve_data_dir"]

# The old lookups, derived from the one spec per dataset (data/spec.py).
DATASETS: dict[str, Loader] = {name: spec.loader for name, spec in DATASET_SPECS.items()}
DATASET_SPLITS: dict[str, tuple[str, ...]] = {
    **{name: spec.splits for name, spec in DATASET_SPECS.items()},
    "npz": npz.NPZ_SPLITS,
    "folder": folder.FOLDER_SPLITS,
}
_ALIASES = {alias: name for name, spec in DATASET_SPECS.items() for alias in spec.aliases}


def list_datasets() -> list[str]:
    """Registered dataset names (``npz:PATH`` and ``folder:PATH`` are accepted as well).

    Returns
    -------
    list[str]
        The names :func:`load_dataset` and ``data.name`` accept, in registry order.
    """
    return list(DATASETS)


def list_splits(name: str) -> list[str]:
    """The splits a dataset knows (``npz:...`` / ``folder:...`` give the whole file/folder)."""
    key = name.split(":", 1)[0].strip().lower() if ":" in name else _canonical(name)
    if key not in DATASET_SPLITS:
        raise DataError(_unknown_message(name))
    return list(DATASET_SPLITS[key])


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data directory: ``data_dir``, else ``$DEEPCLUST_DATA``, else ``./data`` (absolute)."""
    raw = data_dir if data_dir not in (None, "") else os.environ.get("DEEPCLUST_DATA") or "data"
    return Path(raw).expanduser().absolute()


def _canonical(name: str) -> str:
    n = name.strip().lower().replace("_", "-")
    return _ALIASES.get(n, n)


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(_canonical(name), list(DATASETS), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown dataset {name!r}; {hint}valid names: {', '.join(DATASETS)}, npz:PATH, folder:PATH"


def load_dataset(
    name: str, split: str = "train", data_dir: str | os.PathLike | None = None, image_size: int | None = None
) -> ImageData:
    """Load a dataset into memory as uint8 (N, C, H, W).

    Parameters
    ----------
    name : a name from :func:`list_datasets`, ``npz:PATH`` or ``folder:PATH``.
    split : one of the dataset's splits (``list_splits(name)``); ``train+test`` concatenates
        train then test.
    data_dir : where the datasets live (None: ``$DEEPCLUST_DATA``, else ``./data``).
    image_size : resize to image_size x image_size (None keeps the native size; folder
        datasets have their own defaults).

    Returns
    -------
    ImageData
        uint8 images (N, C, H, W), int64 labels (N,) (-1 where unknown), class names, name and
        split.

    Raises
    ------
    DataError
        On an unknown name or split, or data that are missing or unreadable.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"dataset name must be a non-empty string, got {name!r}; valid names: {', '.join(DATASETS)}")
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1):
        raise DataError(f"image_size must be a positive integer or None, got {image_size!r}")
    if not isinstance(split, str):
        raise DataError(f"split must be a string such as 'train' or 'train+test', got {split!r}")
    split = split.strip().lower()
    if ":" in name:
        scheme, _, path = name.partition(":")
        scheme = scheme.strip().lower()
        if not path.strip():
            raise DataError(f"dataset {name!r} has no path after '{scheme}:'; write npz:PATH or folder:PATH")
        if scheme == "npz":
            return npz.load_npz(path.strip(), split=split, image_size=image_size)
        if scheme == "folder":
            return folder.load_folder(path.strip(), split=split, image_size=image_size)
        raise DataError(f"unknown dataset prefix {scheme + ':'!r} in {name!r}; use npz:PATH or folder:PATH")
    key = _canonical(name)
    if key not in DATASETS:
        raise DataError(_unknown_message(name))
    return DATASETS[key](resolve_data_dir(data_dir), split, image_size)
