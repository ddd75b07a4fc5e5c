"""Open a dataset for training: in memory (:class:`ImageData`) or streamed (:class:`StreamData`).

- ``imagenet`` is always streamed (data/imagenet.py).
- ``folder:PATH`` with ``stream="auto"`` is streamed when its decoded size, N x C x S x S bytes
  at the stored size S (estimated from the headers of a seeded sample of up to 512 files),
  exceeds the memory budget (``memory_budget_gb``; None: a quarter of the physical memory); the
  choice is logged. ``True`` / ``False`` force it.
- Every other dataset is read into memory. Datasets with one native size (digits, CIFAR,
  Fashion-MNIST, STL-10, Tiny-ImageNet) are stored at it, or at ``stored_size``; the crop or
  resize to the model's input size happens per batch. Variable-size sources (folders, the
  ImageNet subsets, npz files) are stored at ``stored_size``, else at the input size.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from deepclust.data import folder
from deepclust.data.base import ImageData
from deepclust.data.imagenet import list_folder, stream_folder, stream_imagenet
from deepclust.data.registry import load_dataset, resolve_data_dir
from deepclust.data.spec import DATASET_SPECS
from deepclust.data.stream import StreamData
from deepclust.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["NATIVE_SIZE", "open_dataset", "memory_budget_bytes"]

#: the datasets stored at their one native size (DatasetSpec.native_size)
NATIVE_SIZE = frozenset(name for name, spec in DATASET_SPECS.items() if spec.native_size)
_PROBE = 512


def memory_budget_bytes(gb: float | None) -> int:
    """``gb`` GiB, or a quarter of the physical memory."""
    if gb is not None:
        if gb <= 0:
            raise DataError(f"data.memory_budget_gb must be > 0, got {gb}")
        return int(gb * 2**30)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _stream_switch(value: Any) -> bool | None:
    if value in ("auto", None):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise DataError(f"data.stream must be auto, true or false, got {value!r}")


def open_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    *,
    stored_size: int | None = None,
    stream: Any = "auto",
    memory_budget_gb: float | None = None,
    eval_crop: float | None = None,
    decoder: str = "pil",
    workers: int | None = None,
) -> ImageData | StreamData:
    """The dataset as :func:`load_dataset` would give it, or streamed (see the module doc)."""
    force = _stream_switch(stream)
    key = name.strip().lower()
    if key == "imagenet":
        if force is False:
            raise DataError("dataset 'imagenet' (1.28M images) does not fit in memory; use data.stream=auto or true")
        crop = 0.875 if eval_crop is None else eval_crop
        return stream_imagenet(resolve_data_dir(data_dir), split, image_size or 224, crop, decoder, workers)
    if key.startswith("folder:") and force is not False:
        streamed = _maybe_stream_folder(
            name.split(":", 1)[1].strip(),
            split,
            image_size,
            stored_size,
            force,
            memory_budget_gb,
            eval_crop,
            decoder,
            workers,
        )
        if streamed is not None:
            return streamed
    elif force is True:
        raise DataError(f"data.stream=true: only folder:PATH and imagenet can be streamed, not {name!r}")
    size = stored_size if stored_size is not None else (None if key in NATIVE_SIZE else image_size)
    return load_dataset(name, split, data_dir, size)


def _maybe_stream_folder(
    path: str,
    split: str,
    image_size: int | None,
    stored_size: int | None,
    force: bool | None,
    budget_gb: float | None,
    eval_crop: float | None,
    decoder: str,
    workers: int | None,
) -> StreamData | None:
    folder.check_split(f"folder:{path}", split, folder.FOLDER_SPLITS)
    root, files = list_folder(path)
    probes, channels, native = folder.probe_folder(root, files, _PROBE)
    size = image_size or native
    stored = stored_size or size
    decoded = len(files) * channels * stored * stored
    budget = memory_budget_bytes(budget_gb)
    if force is None and decoded <= budget:
        logger.info(
            "folder:%s: %d images, about %.2f GB decoded at %d px, within the %.1f GB budget: held in memory "
            "(data.stream=true streams it)",
            root,
            len(files),
            decoded / 1e9,
            stored,
            budget / 1e9,
        )
        return None
    why = "data.stream=true" if force else f"over the {budget / 1e9:.1f} GB budget (data.memory_budget_gb)"
    logger.info(
        "folder:%s: %d images, about %.2f GB decoded at %d px, %s: streamed from disk",
        root,
        len(files),
        decoded / 1e9,
        stored,
        why,
    )
    bad = [files[i] for i, p in probes.items() if p is None]
    if bad:
        folder._warn_skipped(sorted(f.relative_to(root).as_posix() for f in bad), str(root))
        drop = set(bad)
        files = [f for f in files if f not in drop]
    return stream_folder(root, files, split, size, channels, eval_crop, decoder, workers)
