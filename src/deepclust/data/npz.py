"""``npz:PATH`` datasets: pixel arrays or JPEG bytes in a NumPy archive (loaded without pickle).

Layouts (see the shared data README):

- pixels: ``images`` uint8 (N, H, W) or (N, H, W, 3) (also (N, C, H, W), and float in [0, 1],
  which is scaled by 255), optional ``labels`` int (N,) with -1 for unknown, ``classes`` str (K,);
- JPEG bytes: ``jpeg`` uint8 (total,) with N files back to back, ``offsets`` int64 (N + 1,),
  optional ``labels`` and ``classes``. Decoded once and cached as .npy (see :mod:`.cache`);
- feature vectors: ``features`` float (N, D) (an embedding made elsewhere), optional ``labels``
  and ``classes``: a :class:`FeatureData`, clustered in feature mode like an (N, D) array
  given to the estimator.

An npz file has no official split: ``train``, ``test`` and ``train+test`` all give the whole file.
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepclust.data.base import FeatureData, ImageData, as_uint8_images, check_split, resize_images
from deepclust.data.cache import cached_array
from deepclust.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["NPZ_SPLITS", "decode_jpeg_file", "load_npz", "read_npz"]

NPZ_SPLITS = ("train", "test", "train+test")
_LAYOUT_HINT = (
    "expected 'images' (uint8 N,H,W[,3]), 'jpeg' + 'offsets' (JPEG bytes) or 'features' (float N,D), "
    "optional 'labels', 'classes'"
)
_DEFAULT_MIXED_SIZE = 64


def _open_npz(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"npz file not found: {path}; pass npz:PATH pointing at an existing .npz file ({_LAYOUT_HINT})")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not an .npz file; use folder:{path} for a folder of images")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path} is not a readable .npz archive ({type(exc).__name__}); "
            f"save arrays with numpy.savez ({_LAYOUT_HINT})"
        ) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path} holds a single .npy array, not an .npz archive; "
            "save with numpy.savez(path, images=..., labels=...)"
        )
    return z


def _get(z: Any, key: str, path: Path) -> np.ndarray:
    try:
        return z[key]
    except ValueError as exc:  # object arrays need pickle
        raise DataError(
            f"{path}: array {key!r} cannot be read without pickle ({exc}); store plain numeric/str arrays"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: array {key!r} is corrupt ({type(exc).__name__}: {exc}); re-create the file") from None


def _check_finite(arr: np.ndarray, path: Path) -> None:
    """Float pixels must be finite: NaN/inf would silently become 0 or 255 after scaling."""
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise DataError(
                f"{path}: 'images' holds {bad} NaN or infinite value(s); replace them (e.g. numpy.nan_to_num) "
                "and store uint8 0..255 or floats in [0, 1]"
            )


def _torchvision_decode(parts: list[torch.Tensor], rgb: bool) -> list[torch.Tensor]:
    """Decode with torchvision.io (fast, batched); its deprecation notice is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(parts, mode=ImageReadMode.RGB if rgb else ImageReadMode.UNCHANGED)


def _pil_decode(parts: list[torch.Tensor], rgb: bool) -> list[torch.Tensor]:
    """Decode with Pillow (slower fallback); RuntimeError on a bad file, like torchvision."""
    out = []
    for part in parts:
        try:
            with Image.open(io.BytesIO(part.numpy().tobytes())) as im:
                if rgb or im.mode not in ("L", "RGB"):
                    im = im.convert("RGB")
                a = np.asarray(im, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeError(str(exc) or type(exc).__name__) from None
        out.append(torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy()))
    return out


def _decode_list(parts: list[torch.Tensor], rgb: bool = False) -> list[torch.Tensor]:
    try:
        return _torchvision_decode(parts, rgb)
    except (ImportError, AttributeError):  # torchvision without image ops (or after their removal)
        return _pil_decode(parts, rgb)


def _decode_jpeg_bytes(jpeg: np.ndarray, offsets: np.ndarray, source: str, image_size: int | None) -> np.ndarray:
    """Decode N JPEG files stored back to back into uint8 (N, C, H, W)."""
    if jpeg.ndim != 1 or jpeg.dtype != np.uint8:
        raise DataError(f"{source}: 'jpeg' must be a 1-D uint8 byte array, got {jpeg.dtype} with shape {jpeg.shape}")
    if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise DataError(
            f"{source}: 'offsets' must be a 1-D integer array (N + 1,), got {offsets.dtype} {offsets.shape}"
        )
    n = offsets.shape[0] - 1
    if n < 1:
        raise DataError(
            f"{source}: contains zero images ('offsets' has {offsets.shape[0]} entries); expected N + 1 >= 2"
        )
    sizes = np.diff(offsets)
    if offsets[0] < 0 or (sizes <= 0).any() or offsets[-1] > jpeg.shape[0]:
        raise DataError(
            f"{source}: 'offsets' must increase strictly from >= 0 to at most len(jpeg) = {jpeg.shape[0]}; "
            "image i is jpeg[offsets[i]:offsets[i+1]]"
        )
    data = torch.from_numpy(np.ascontiguousarray(jpeg[int(offsets[0]) : int(offsets[-1])]))
    parts = list(torch.split(data, sizes.tolist()))
    try:
        decoded = _decode_list(parts)
    except RuntimeError:
        for i, part in enumerate(parts):
            try:
                _decode_list([part])
            except RuntimeError as exc:
                msg = (str(exc).splitlines() or ["decode failed"])[0].rsplit(", ", 1)[-1]
                raise DataError(f"{source}: image {i} is not a valid JPEG ({msg}); re-create the file") from None
        raise
    channels = {int(d.shape[0]) for d in decoded}
    if not channels <= {1, 3}:  # CMYK and friends: let the decoder convert
        decoded = _decode_list(parts, rgb=True)
        channels = {3}
    c = 1 if channels == {1} else 3
    sizes_hw = {tuple(d.shape[1:]) for d in decoded}
    if len(sizes_hw) > 1 and image_size is None:
        image_size = _DEFAULT_MIXED_SIZE
        logger.warning("%s: JPEG images have %d different sizes; resizing all to %d", source, len(sizes_hw), image_size)
    if len(sizes_hw) == 1:
        h, w = next(iter(sizes_hw))
        if c == 1 or channels == {3}:
            out = torch.stack(decoded)
        else:
            out = torch.stack([d.expand(3, h, w) for d in decoded])
        if image_size is not None:
            out = resize_images(out, image_size)
    else:
        assert image_size is not None
        out = torch.empty((n, c, image_size, image_size), dtype=torch.uint8)
        for i, d in enumerate(decoded):
            out[i] = resize_images(d.expand(c, *d.shape[1:])[None], image_size)[0]
    return out.contiguous().numpy()


def decode_jpeg_file(path: Path, jpeg_key: str = "jpeg", image_size: int | None = None) -> np.ndarray:
    """Decoded uint8 (N, C, H, W) array of a JPEG-bytes npz, from the cache when it is fresh."""
    path = Path(path)

    def compute() -> np.ndarray:
        with _open_npz(path) as z:
            missing = [k for k in (jpeg_key, "offsets") if k not in z.files]
            if missing:
                raise DataError(f"{path}: JPEG layout needs {missing} (keys found: {sorted(z.files)}); {_LAYOUT_HINT}")
            return _decode_jpeg_bytes(_get(z, jpeg_key, path), _get(z, "offsets", path), str(path), image_size)

    variant = "native" if image_size is None else f"s{image_size}"
    return cached_array(path, variant, compute)


def read_npz(path: Path, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (uint8 N,C,H,W), labels (int64, -1 unknown) and class names of an npz file."""
    path = Path(path)
    with _open_npz(path) as z:
        keys = sorted(z.files)
        if "features" in keys:
            images = torch.from_numpy(np.ascontiguousarray(_get(z, "features", path)))
            if images.ndim != 2 or not torch.is_floating_point(images):
                raise DataError(
                    f"{path}: 'features' must be a float array (N, D), got {images.dtype} {tuple(images.shape)}"
                )
        elif "images" in keys:
            raw = _get(z, "images", path)
            _check_finite(raw, path)
            images = as_uint8_images(raw, source=str(path))
            if image_size is not None:
                images = resize_images(images, image_size)
        elif "jpeg" in keys:
            if "offsets" not in keys:
                raise DataError(f"{path} has 'jpeg' but no 'offsets' (keys found: {keys}); {_LAYOUT_HINT}")
            images = None
        else:
            raise DataError(f"{path} has no image array (keys found: {keys}); {_LAYOUT_HINT}")
        labels_np = _get(z, "labels", path) if "labels" in keys else None
        classes_np = _get(z, "classes", path) if "classes" in keys else None
    if images is None:
        images = torch.from_numpy(decode_jpeg_file(path, image_size=image_size))
    n = images.shape[0]
    if labels_np is None:
        labels = torch.full((n,), -1, dtype=torch.int64)
    else:
        if labels_np.ndim != 1 or labels_np.shape[0] != n:
            raise DataError(
                f"{path}: {n} images but 'labels' has shape {labels_np.shape}; expected ({n},), -1 for unknown"
            )
        if not np.issubdtype(labels_np.dtype, np.integer):
            raise DataError(f"{path}: 'labels' must be integers (-1 for unknown), got dtype {labels_np.dtype}")
        if (labels_np < -1).any():
            raise DataError(f"{path}: 'labels' has values below -1; use -1 for unknown labels")
        labels = torch.from_numpy(labels_np.astype(np.int64))
    if classes_np is not None:
        classes = [str(c) for c in np.atleast_1d(classes_np).tolist()]
        if labels.numel() and int(labels.max()) >= len(classes):
            raise DataError(
                f"{path}: label {int(labels.max())} has no name in 'classes' ({len(classes)} names); "
                "fix 'classes' or drop it"
            )
    elif bool((labels >= 0).any()):
        classes = [str(i) for i in range(int(labels.max()) + 1)]
    else:
        classes = []
    return images, labels, classes


def load_npz(
    path: str | Path, split: str = "train", image_size: int | None = None, name: str | None = None
) -> ImageData:
    """Load an npz dataset; every accepted split (train, test, train+test) is the whole file."""
    p = Path(path).expanduser().absolute()
    name = name or f"npz:{p}"
    check_split(name, split, NPZ_SPLITS)
    images, labels, classes = read_npz(p, image_size=image_size)
    if images.ndim == 2:  # 'features': finite values are checked by FeatureData
        logger.info("loaded %s: %d feature vectors of length %d", name, images.shape[0], images.shape[1])
        return FeatureData(images=images, labels=labels, classes=classes, name=name, split=split)
    logger.info("loaded %s: %d images of shape %s", name, images.shape[0], tuple(images.shape[1:]))
    return ImageData(images=images, labels=labels, classes=classes, name=name, split=split)
