"""What a dataset looks like, without loading it: channels, native size, image count.

:func:`peek` reads array headers (``npz:``), sampled image headers (``folder:``) or the dataset's
spec (the registered datasets, data/spec.py), so choosing defaults by data kind (:mod:`deepclust.presets`) costs
milliseconds even on ImageNet. A source it cannot read raises the same DataError that loading
it would.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from deepclust.data.base import image_layout
from deepclust.data.folder import _GRAY_MODES, probe_folder
from deepclust.data.spec import DATASET_SPECS
from deepclust.errors import DataError

__all__ = ["DataShape", "peek", "shape_of"]


@dataclass(frozen=True)
class DataShape:
    """Channels (1 or 3), native side in pixels (the shorter side; 0 for feature vectors),
    image count (approximate for folders: the files found) and feature length (0: images)."""

    channels: int
    size: int
    n_samples: int
    n_features: int = 0


def shape_of(images_shape: tuple[int, ...]) -> DataShape:
    """The shape of an in-memory array: (N, D) features, (N, C, H, W) uint8 images."""
    if len(images_shape) == 2:
        return DataShape(channels=1, size=0, n_samples=int(images_shape[0]), n_features=int(images_shape[1]))
    n, c, h, w = (int(v) for v in images_shape)
    return DataShape(channels=c, size=min(h, w), n_samples=n)


_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_header(f, z, key: str) -> tuple[int, ...]:
    """The shape in the .npy header of member ``key`` (``f`` open on it, left at its data)."""
    read = _HEADERS.get(np.lib.format.read_magic(f))
    return tuple(int(v) for v in (read(f)[0] if read is not None else z[key].shape))  # other versions: load it


def _npz_shape(path: Path) -> DataShape:
    from deepclust.data.npz import _LAYOUT_HINT, _open_npz  # the loader's own error lines

    with _open_npz(path) as z:
        if "features" in z.files:
            with z.zip.open("features.npy") as f:
                n, d = (_read_header(f, z, "features") + (0, 0))[:2]
            return DataShape(channels=1, size=0, n_samples=n, n_features=d)
        if "images" in z.files:
            with z.zip.open("images.npy") as f:  # the header only, no pixels
                shape = _read_header(f, z, "images")
            layout = image_layout(shape, str(path))
            n = shape[0]
            nchw = (n, 1, *shape[1:]) if layout == "NHW" else (n, shape[3], *shape[1:3]) if layout == "NHWC" else shape
            return shape_of(nchw)
        if "jpeg" in z.files and "offsets" in z.files:
            offsets = z["offsets"]
            with z.zip.open("jpeg.npy") as f:  # the first file's bytes, not the whole archive
                _read_header(f, z, "jpeg")
                f.read(int(offsets[0]))
                first = f.read(int(offsets[1]) - int(offsets[0]))
            with Image.open(io.BytesIO(first)) as im:
                return DataShape(1 if im.mode in _GRAY_MODES else 3, min(im.size), int(len(offsets) - 1))
        raise DataError(f"{path} has no image array (keys found: {sorted(z.files)}); {_LAYOUT_HINT}")


def _folder_shape(root: Path) -> DataShape:
    """Channels and native side by the streaming loader's own probe (folder.probe_folder)."""
    from deepclust.data.imagenet import list_folder

    root, files = list_folder(root)
    _, channels, size = probe_folder(root, files)
    return DataShape(channels, size, len(files))


def peek(name: str, data_dir: str | None = None) -> DataShape:
    """The :class:`DataShape` of dataset ``name`` (a registered name, ``npz:PATH`` or ``folder:PATH``)."""
    from deepclust.data.registry import _canonical, _unknown_message

    if ":" in name:
        scheme, _, path = name.partition(":")
        p = Path(path.strip()).expanduser().absolute()
        if scheme.strip().lower() == "npz":
            return _npz_shape(p)
        if scheme.strip().lower() == "folder":
            return _folder_shape(p)
        raise DataError(f"unknown dataset prefix {scheme + ':'!r} in {name!r}; use npz:PATH or folder:PATH")
    spec = DATASET_SPECS.get(_canonical(name))
    if spec is None:
        raise DataError(_unknown_message(name))
    return DataShape(spec.channels, spec.size, spec.n_train)
