"""What a dataset looks like, without loading it: channels, native size, image count.

:func:`peek` reads array headers (``npz:``), a few image headers (``folder:``) or a fixed table
(the registered datasets), so choosing defaults by data kind (:mod:`deepclust.presets`) costs
milliseconds even on ImageNet. A source it cannot read raises the same DataError that loading
it would.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

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


# name -> (channels, native size, training images); ImageNet subsets are stored at their own sizes.
_KNOWN: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 1797),
    "fashion-mnist": (1, 28, 60000),
    "cifar10": (3, 32, 50000),
    "cifar10-jpeg": (3, 32, 50000),
    "cifar100": (3, 32, 50000),
    "cifar100-20": (3, 32, 50000),
    "stl10": (3, 96, 13000),
    "imagenet10": (3, 224, 13000),
    "imagenet-dogs": (3, 224, 19500),
    "tiny-imagenet": (3, 64, 100000),
    "imagenet": (3, 224, 1281167),
}
_PROBES = 16  # folder images whose headers are read


def shape_of(images_shape: tuple[int, ...]) -> DataShape:
    """The shape of an in-memory array: (N, D) features, (N, C, H, W) uint8 images."""
    if len(images_shape) == 2:
        return DataShape(channels=1, size=0, n_samples=int(images_shape[0]), n_features=int(images_shape[1]))
    n, c, h, w = (int(v) for v in images_shape)
    return DataShape(channels=c, size=min(h, w), n_samples=n)


def _npz_shape(path: Path) -> DataShape:
    if not path.is_file():
        raise DataError(f"npz file not found: {path}; pass npz:PATH pointing at an existing .npz file")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "images.npy" in names:
                with z.open("images.npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, _ = read(f)  # the header only, no data
                shape = tuple(int(v) for v in shape)
            else:
                shape = None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npz archive ({type(exc).__name__}); save arrays with numpy.savez") from None
    if shape is not None:
        if len(shape) == 3:
            return DataShape(1, min(shape[1:]), shape[0])
        if len(shape) == 4 and (shape[3] in (1, 3) or shape[1] in (1, 3)):
            c_last = shape[3] in (1, 3)
            hw = shape[1:3] if c_last else shape[2:4]
            return DataShape(shape[3] if c_last else shape[1], min(hw), shape[0])
        raise DataError(f"{path}: images have rank {len(shape)} (shape {shape}); "
                        "expected (N, H, W) grayscale or (N, H, W, 3) RGB")
    with np.load(path, allow_pickle=False) as z:
        if "jpeg" not in z.files or "offsets" not in z.files:
            raise DataError(f"{path} has no image array (keys found: {sorted(z.files)}); expected 'images' or 'jpeg' + 'offsets'")
        offsets = z["offsets"]
        first = bytes(z["jpeg"][int(offsets[0]):int(offsets[1])])
    with Image.open(io.BytesIO(first)) as im:
        return DataShape(1 if im.mode in ("L", "1", "I;16") else 3, min(im.size), int(len(offsets) - 1))


def _folder_shape(root: Path) -> DataShape:
    from deepclust.data.folder import list_image_files

    files = list_image_files(root)
    step = max(1, len(files) // _PROBES)
    sizes, gray = [], 0
    for p in files[::step][:_PROBES]:
        try:
            with Image.open(p) as im:
                sizes.append(min(im.size))
                gray += im.mode in ("L", "1", "I;16", "LA")
        except Exception:  # noqa: BLE001 - an unreadable file is reported when the data is loaded
            continue
    if not sizes:
        raise DataError(f"image folder {root}: none of the first images could be read; check that they are valid image files")
    channels = 1 if gray == len(sizes) else 3
    return DataShape(channels, int(np.median(sizes)), len(files))


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
    key = _canonical(name)
    if key not in _KNOWN:
        raise DataError(_unknown_message(name))
    return DataShape(*_KNOWN[key])
