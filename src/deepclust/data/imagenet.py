"""ImageNet-1k, streamed from the usual prepared layout, and ``folder:PATH`` when streamed.

Layout under the data directory::

    imagenet/train/<wnid>/*.JPEG     1,281,167 images in 1,000 wnid folders
    imagenet/val/<wnid>/*.JPEG       50,000 images sorted into the same wnid folders

Labels are the positions of the wnids in the sorted list of ``train/``'s folders (``val/``'s
when there is no ``train/``), so both splits share them. Only file names are listed (no image
is opened), so opening the 1.28 M training files takes seconds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepclust.data.filelist import FileList
from deepclust.data.folder import IMAGE_EXTENSIONS, list_image_files
from deepclust.data.stream import StreamData
from deepclust.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["IMAGENET_COUNTS", "IMAGENET_SPLITS", "stream_folder", "stream_imagenet"]

IMAGENET_SPLITS = ("train", "val")
IMAGENET_COUNTS = {"train": 1_281_167, "val": 50_000}
_LAYOUT = "imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG"


def _images_in(d: Path) -> list[str]:
    with os.scandir(d) as it:
        return sorted(
            e.name
            for e in it
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )


def _wnids(d: Path) -> list[str]:
    with os.scandir(d) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def stream_imagenet(
    data_dir: Path, split: str, size: int, eval_crop: float = 0.875, decoder: str = "pil", workers: int | None = None
) -> StreamData:
    """The ``train`` or ``val`` split of ImageNet-1k as a :class:`StreamData` (see module doc)."""
    if split not in IMAGENET_SPLITS:
        raise DataError(f"dataset 'imagenet' has no split {split!r}; valid splits: {', '.join(IMAGENET_SPLITS)}")
    root = data_dir / "imagenet"
    if not root.is_dir():
        raise DataError(
            f"dataset 'imagenet' not found under {data_dir}: expected {_LAYOUT}; pass --data-dir or set DEEPCLUST_DATA"
        )
    part = root / split
    if not part.is_dir():
        raise DataError(
            f"dataset 'imagenet': missing {part}/; expected {_LAYOUT}"
            + (" (the validation images sorted into wnid folders)" if split == "val" else "")
        )
    wnids = _wnids(root / "train") if (root / "train").is_dir() else _wnids(part)
    if not wnids:
        raise DataError(f"dataset 'imagenet': no wnid folders in {root / 'train'}; expected {_LAYOUT}")
    present = _wnids(part)
    if not present:
        loose = len(_images_in(part))
        raise DataError(
            f"dataset 'imagenet': {part} has {loose} image(s) but no wnid folders; "
            f"sort them into {split}/<wnid>/ (labels come from the folder names)"
        )
    unknown = sorted(set(present) - set(wnids))
    if unknown:
        raise DataError(
            f"dataset 'imagenet': {split}/ has folders that train/ lacks ({', '.join(unknown[:5])}); "
            "both splits need the same wnid folders"
        )
    index = {w: k for k, w in enumerate(wnids)}
    paths: list[str] = []
    labels: list[np.ndarray] = []
    empty = []
    for w in tqdm(present, desc=f"listing imagenet/{split}", disable=len(present) < 50, leave=False):
        names = _images_in(part / w)
        if not names:
            empty.append(w)
        paths += [f"{w}/{n}" for n in names]
        labels.append(np.full(len(names), index[w], dtype=np.int64))
    if empty:
        raise DataError(
            f"dataset 'imagenet': {len(empty)} wnid folder(s) under {part} hold no images "
            f"({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}); add the images or remove the folders"
        )
    n, expected = len(paths), IMAGENET_COUNTS[split]
    logger.info("imagenet %s: %d images in %d classes under %s", split, n, len(present), part)
    if n != expected or len(wnids) != 1000:
        logger.warning(
            "imagenet %s: %d images in %d classes, not the %d in 1,000 of ImageNet-1k; results are not "
            "comparable with the papers'",
            split,
            n,
            len(wnids),
            expected,
        )
    return StreamData(
        FileList.from_paths(part, paths),
        torch.from_numpy(np.concatenate(labels)),
        list(wnids),
        "imagenet",
        split,
        size,
        3,
        eval_crop,
        decoder,
        workers,
    )


def stream_folder(
    root: Path,
    files: list[Path],
    split: str,
    size: int,
    n_channels: int,
    eval_crop: float | None = None,
    decoder: str = "pil",
    workers: int | None = None,
) -> StreamData:
    """``folder:PATH`` streamed: labels from the sub-folders when every image sits in one."""
    rel = [f.relative_to(root).as_posix() for f in files]
    labelled = all("/" in r for r in rel)
    if labelled:
        classes = sorted({r.split("/", 1)[0] for r in rel})
        index = {c: k for k, c in enumerate(classes)}
        labels = torch.tensor([index[r.split("/", 1)[0]] for r in rel], dtype=torch.int64)
    else:
        classes, labels = [], torch.full((len(rel),), -1, dtype=torch.int64)
    return StreamData(
        FileList.from_paths(root, rel),
        labels,
        classes,
        f"folder:{root}",
        split,
        size,
        n_channels,
        eval_crop,
        decoder,
        workers,
    )


def list_folder(path: str | Path) -> tuple[Path, list[Path]]:
    """The folder's absolute root and its image files (DataError when missing or empty)."""
    root = Path(path).expanduser().absolute()
    return root, list_image_files(root)
