"""The in-memory dataset type, its PyTorch wrapper and small array helpers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deepclust.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["FeatureData", "ImageData", "IndexedDataset", "as_uint8_images", "check_split", "concat", "resize_images"]


@dataclass
class ImageData:
    """A whole dataset held in memory as one uint8 tensor.

    ``images`` is uint8 (N, C, H, W) with C = 1 or 3, contiguous, on the CPU; ``labels`` is
    int64 (N,) with -1 where the label is unknown; position ``i`` is the instance index.
    ``name`` is the dataset name as recorded in results (``"cifar10-jpeg"`` when read from the
    JPEG copy); ``paths`` holds file paths relative to the folder for ``folder:`` datasets.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    split: str
    paths: list[str] | None = None

    def __post_init__(self) -> None:
        imgs, labels = self.images, self.labels
        if not isinstance(imgs, torch.Tensor) or imgs.dtype != torch.uint8 or imgs.ndim != 4:
            raise DataError(
                f"dataset {self.name!r}: images must be a uint8 tensor (N, C, H, W), got "
                f"{getattr(imgs, 'dtype', type(imgs))} with shape {tuple(getattr(imgs, 'shape', ()))}"
            )
        if imgs.shape[1] not in (1, 3):
            raise DataError(
                f"dataset {self.name!r}: images must have 1 or 3 channels (N, C, H, W), got shape {tuple(imgs.shape)}"
            )
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(np.asarray(labels))
        if labels.ndim != 1 or labels.shape[0] != imgs.shape[0]:
            raise DataError(
                f"dataset {self.name!r}: {imgs.shape[0]} images but labels have shape {tuple(labels.shape)}; "
                "expected one label per image"
            )
        self.images = imgs.cpu().contiguous()
        self.labels = labels.to(device="cpu", dtype=torch.int64).contiguous()
        self.classes = [str(c) for c in self.classes]
        if self.paths is not None:
            self.paths = list(self.paths)
            if len(self.paths) != imgs.shape[0]:
                raise DataError(f"dataset {self.name!r}: {imgs.shape[0]} images but {len(self.paths)} paths")

    @property
    def n_samples(self) -> int:
        """Number of images N."""
        return int(self.images.shape[0])

    @property
    def n_channels(self) -> int:
        """Channels C (1 or 3)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def has_labels(self) -> bool:
        """True when at least one label is known (>= 0)."""
        return bool((self.labels >= 0).any()) if self.n_samples else False

    @property
    def n_classes(self) -> int:
        """len(classes), or the number of distinct known labels when no names are given."""
        if self.classes:
            return len(self.classes)
        known = self.labels[self.labels >= 0]
        return int(known.unique().numel())

    def subset(self, idx: Any) -> ImageData:
        """The images at ``idx`` (indices, a boolean mask or a slice), as a new ImageData.

        Instance indices of the subset are positions in the subset.
        """
        if isinstance(idx, slice):
            index = torch.arange(self.n_samples)[idx]
        else:
            index = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
            if index.dtype == torch.bool:
                if index.shape != (self.n_samples,):
                    raise DataError(
                        f"subset: boolean mask has shape {tuple(index.shape)}, expected ({self.n_samples},)"
                    )
                index = index.nonzero().flatten()
            index = index.to(torch.int64).flatten().cpu()
        if index.numel() and (int(index.min()) < -self.n_samples or int(index.max()) >= self.n_samples):
            raise DataError(f"subset: index out of range for a dataset of {self.n_samples} images")
        paths = [self.paths[i] for i in index.tolist()] if self.paths is not None else None
        return type(self)(  # a FeatureData subset stays a FeatureData
            images=self.images[index].contiguous(),
            labels=self.labels[index].clone(),
            classes=list(self.classes),
            name=self.name,
            split=self.split,
            paths=paths,
        )

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        return (
            f"ImageData(name={self.name!r}, split={self.split!r}, n_samples={self.n_samples}, "
            f"shape={tuple(self.images.shape[1:])}, n_classes={self.n_classes})"
        )

    @classmethod
    def from_arrays(
        cls,
        images: Any,
        labels: Any | None = None,
        classes: Sequence[str] | None = None,
        name: str = "array",
        split: str = "train",
    ) -> ImageData:
        """Build from an image array (N,H,W), (N,H,W,C) or (N,C,H,W), uint8 or float in [0, 1]."""
        imgs = as_uint8_images(images, source=name)
        lab, classes = _labels_tensor(labels, imgs.shape[0], classes, name)
        return cls(images=imgs, labels=lab, classes=classes, name=name, split=split)


class FeatureData(ImageData):
    """Precomputed feature vectors in place of images ("feature mode").

    ``images`` holds float32 (N, D) features (also reachable as ``features``); everything
    else is as in :class:`ImageData`, so the engine trains on either. Values must be finite.
    """

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or not torch.is_floating_point(x):
            raise DataError(
                f"dataset {self.name!r}: features must be a float tensor (N, D), got "
                f"{getattr(x, 'dtype', type(x))} with shape {tuple(getattr(x, 'shape', ()))}"
            )
        if x.shape[1] == 0:
            raise DataError(f"dataset {self.name!r}: feature vectors have no dimensions (shape {tuple(x.shape)})")
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"dataset {self.name!r}: features contain NaN or infinite values; remove or impute them")
        self.images = x.detach().to(device="cpu", dtype=torch.float32).contiguous()
        self.labels, self.classes = _labels_tensor(self.labels, x.shape[0], self.classes, self.name)
        if self.paths is not None:
            raise DataError(f"dataset {self.name!r}: feature data has no file paths")

    @property
    def features(self) -> torch.Tensor:
        """The float32 (N, D) feature vectors (the same tensor as ``images``)."""
        return self.images

    @property
    def n_features(self) -> int:
        """Dimension D of the feature vectors."""
        return int(self.images.shape[1])

    @property
    def n_channels(self) -> int:
        raise DataError(f"dataset {self.name!r} holds feature vectors, not images: it has no channels")

    @property
    def image_size(self) -> tuple[int, int]:
        raise DataError(f"dataset {self.name!r} holds feature vectors, not images: it has no image size")

    def __repr__(self) -> str:
        return (
            f"FeatureData(name={self.name!r}, split={self.split!r}, n_samples={self.n_samples}, "
            f"n_features={self.n_features}, n_classes={self.n_classes})"
        )

    @classmethod
    def from_arrays(
        cls,
        features: Any,
        labels: Any | None = None,
        classes: Sequence[str] | None = None,
        name: str = "features",
        split: str = "train",
    ) -> FeatureData:
        """Build from a 2-D array or tensor (N, D) of finite numbers."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        arr = np.asarray(features)
        if arr.ndim != 2:
            raise DataError(f"{name}: features have rank {arr.ndim} (shape {arr.shape}); expected a 2-D array (N, D)")
        if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"{name}: features have dtype {arr.dtype}; expected numbers (float or int)")
        if arr.shape[0] == 0:
            raise DataError(f"{name}: contains zero samples; expected at least one")
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        lab, cls_names = _labels_tensor(labels, x.shape[0], classes, name)
        return cls(images=x, labels=lab, classes=cls_names, name=name, split=split)


def _labels_tensor(labels: Any, n: int, classes: Sequence[str] | None, name: str) -> tuple[torch.Tensor, list[str]]:
    """int64 (n,) labels (-1 = unknown; all -1 when None) and class names (0..max when not given)."""
    if labels is None:
        lab = torch.full((n,), -1, dtype=torch.int64)
    else:
        lab_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if lab_np.ndim != 1 or lab_np.shape[0] != n:
            raise DataError(f"{name}: {n} samples but labels have shape {lab_np.shape}; expected one label per sample")
        if not np.issubdtype(lab_np.dtype, np.integer):
            raise DataError(f"{name}: labels must be integers (-1 for unknown), got dtype {lab_np.dtype}")
        lab = torch.from_numpy(lab_np.astype(np.int64))
    if classes is None and bool((lab >= 0).any()):
        classes = [str(i) for i in range(int(lab.max()) + 1)]
    return lab, [str(c) for c in (classes or [])]


class IndexedDataset(torch.utils.data.Dataset):
    """Wraps an :class:`ImageData`; item ``i`` is ``(image uint8 (C, H, W), label, i)``.

    ``i`` is the instance index that memory banks and per-sample state are keyed on.
    ``transform``, if given, is applied to the image tensor.
    """

    def __init__(self, data: ImageData, transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return self.data.n_samples

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        img = self.data.images[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.data.labels[i]), i


def image_layout(shape: tuple[int, ...], source: str) -> str:
    """ "NHW", "NHWC" or "NCHW" for an image array of ``shape`` (C in {1, 3}, channels-last
    first); DataError for any other shape. The one rule for arrays and npz headers alike."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4 and shape[3] in (1, 3):
        return "NHWC"
    if len(shape) == 4 and shape[1] in (1, 3):
        return "NCHW"
    if len(shape) == 4:
        raise DataError(f"{source}: images have shape {tuple(shape)}; expected (N, H, W) grayscale or (N, H, W, 3) RGB")
    raise DataError(
        f"{source}: images have rank {len(shape)} (shape {tuple(shape)}); "
        "expected (N, H, W) grayscale or (N, H, W, 3) RGB"
    )


def as_uint8_images(arr: Any, source: str) -> torch.Tensor:
    """Convert an image array to a contiguous uint8 tensor (N, C, H, W), C in {1, 3}.

    Accepts (N, H, W), (N, H, W, C) and (N, C, H, W) with C in {1, 3}; uint8, other integer
    arrays within 0..255, or float arrays within [0, 1] (scaled by 255 and rounded).
    """
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    layout = image_layout(arr.shape, source)
    if layout == "NHW":
        arr = arr[:, None, :, :]
    elif layout == "NHWC":
        arr = arr.transpose(0, 3, 1, 2)
    if arr.shape[0] == 0:
        raise DataError(f"{source}: contains zero images; expected at least one")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        raise DataError(f"{source}: images are boolean; expected uint8 0..255 or float in [0, 1]")
    elif np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if np.isnan(arr).any() or lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{source}: float images must lie in [0, 1] (found {lo:g}..{hi:g}); "
                "store uint8 0..255 or floats scaled to [0, 1]"
            )
        out = np.rint(arr * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{source}: integer images must lie in 0..255 (found {lo}..{hi}); store uint8")
        out = arr.astype(np.uint8)
    else:
        raise DataError(f"{source}: images have dtype {arr.dtype}; expected uint8 0..255 or float in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(out))


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) to (N, C, size, size): bilinear with antialiasing, rounded."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    if size < 1:
        raise DataError(f"image_size must be a positive integer, got {size}")
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for s in range(0, images.shape[0], chunk):
        x = images[s : s + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s : s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def check_split(dataset: str, split: str, valid: Sequence[str]) -> str:
    """Return ``split`` if it is one of ``valid``, else raise a DataError listing them."""
    if split not in valid:
        raise DataError(f"dataset {dataset!r} has no split {split!r}; valid splits: {', '.join(valid)}")
    return split


def concat(parts: Sequence[ImageData], split: str) -> ImageData:
    """Concatenate datasets in order (instance index = position in the result)."""
    first = parts[0]
    for p in parts[1:]:
        if p.images.shape[1:] != first.images.shape[1:]:
            raise DataError(
                f"cannot concatenate splits of {first.name!r}: image shapes {tuple(first.images.shape[1:])} "
                f"and {tuple(p.images.shape[1:])} differ; pass image_size to resize them"
            )
    classes = next((p.classes for p in parts if p.classes), [])
    paths = None
    if all(p.paths is not None for p in parts):
        paths = [q for p in parts for q in (p.paths or [])]
    return ImageData(
        images=torch.cat([p.images for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        classes=list(classes),
        name=first.name,
        split=split,
        paths=paths,
    )
