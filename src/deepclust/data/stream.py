"""Streamed image datasets: only the file list is held; DataLoader workers decode batches.

:class:`StreamData` stands where an :class:`~deepclust.data.base.ImageData` would (labels,
classes, name, split, size) but holds a :class:`~deepclust.data.filelist.FileList` instead of
pixels. Training batches are decoded by :class:`DecodeBatches` in worker processes, one batch
per item, keyed by ``(epoch, indices)``: the trainer's epoch plan stays the only source of
sample order, so resume and torchrun row splits work as for in-memory data. Each item holds one
uint8 (B, C, S, S) tensor per view (:mod:`deepclust.data.crops`); the batched on-device
augmentation does the rest.

A file that cannot be decoded mid-epoch is replaced by the next readable file in file order
(its index replaces the bad one in the batch), and named once in a warning; in evaluation it
becomes a black image, so every row keeps its place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from deepclust.data.crops import DECODERS, ViewSpec, decode_views, sample_rng
from deepclust.data.filelist import FileList
from deepclust.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["DecodeBatches", "LazyImages", "StreamData", "default_stream_workers", "make_loader"]

_REPLACE_TRIES = 16


def default_stream_workers() -> int:
    """Decoding processes: one core is left to the training process, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class StreamData:
    """A dataset read from disk batch by batch.

    ``files`` the images, ``labels`` int64 (N,) (-1 unknown), ``size`` the input size S every
    view is cut to, ``n_channels`` 1 or 3, ``eval_crop`` the centred fraction of the shorter side
    that evaluation sees (None: the whole image resized, as the in-memory folders store it),
    ``decoder`` pil | torchvision, ``workers`` None: see :func:`default_stream_workers`.
    """

    files: FileList
    labels: torch.Tensor
    classes: list[str]
    name: str
    split: str
    size: int
    n_channels: int = 3
    eval_crop: float | None = None
    decoder: str = "pil"
    workers: int | None = None
    reported: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).cpu()
        if self.labels.shape != (len(self.files),):
            raise DataError(f"dataset {self.name!r}: {len(self.files)} files but {tuple(self.labels.shape)} labels")
        if len(self.files) == 0:
            raise DataError(f"dataset {self.name!r} split {self.split!r} holds no images")
        if self.decoder not in DECODERS:
            raise DataError(f"data.decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.eval_crop is not None and not 0.0 < self.eval_crop <= 1.0:
            raise DataError(f"data.eval_crop must be in (0, 1], got {self.eval_crop!r}")

    # ----- the ImageData surface the engine uses ---------------------------------------------
    @property
    def n_samples(self) -> int:
        return len(self.files)

    def __len__(self) -> int:
        return self.n_samples

    @property
    def image_size(self) -> tuple[int, int]:
        return self.size, self.size

    @property
    def mode(self) -> str:
        return "RGB" if self.n_channels == 3 else "L"

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def n_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        return int(self.labels[self.labels >= 0].unique().numel())

    @property
    def paths(self) -> list[str]:
        return list(self.files)

    @property
    def images(self) -> LazyImages:
        """The evaluation view of every image (decoded on use)."""
        return self.view(ViewSpec("plain") if self.eval_crop is None else ViewSpec("center", crop=self.eval_crop))

    def view(self, spec: ViewSpec) -> LazyImages:
        return LazyImages(self, spec, np.arange(self.n_samples, dtype=np.int64))

    def channel_stats(self, n: int = 256, seed: int = 0) -> tuple[list[float], list[float]]:
        """Per-channel mean and std (of [0, 1] pixels) of the plain views of a seeded sample."""
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(self.n_samples, size=min(n, self.n_samples), replace=False))
        x = self.view(ViewSpec("plain"))[torch.from_numpy(pick)].float().div_(255).transpose(0, 1)
        x = x.reshape(self.n_channels, -1)
        return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()

    def __repr__(self) -> str:
        return (
            f"StreamData(name={self.name!r}, split={self.split!r}, n_samples={self.n_samples}, "
            f"size={self.size}, n_classes={self.n_classes})"
        )

    def report_failed(self, paths: Sequence[str], what: str) -> None:
        """Warn once per file that could not be decoded."""
        new = [p for p in paths if p not in self.reported]
        if new:
            self.reported.update(new)
            shown = ", ".join(new[:10]) + (f", ... and {len(new) - 10} more" if len(new) > 10 else "")
            logger.warning(
                "%s: %d unreadable image file(s) under %s, %s: %s", self.name, len(new), self.files.root, what, shown
            )


class DecodeBatches(Dataset):
    """Item ``(epoch, indices)`` is ``(views, indices, failed)``: one uint8 (B, C, S, S) tensor per
    view spec, the indices actually decoded (replacements in place of unreadable files; with
    ``blank`` the indices are kept and the row is black) and the unreadable paths."""

    def __init__(self, data: StreamData, specs: Sequence[ViewSpec], seed: int, blank: bool = False) -> None:
        self.files, self.size, self.mode, self.decoder = data.files, data.size, data.mode, data.decoder
        self.channels = data.n_channels
        self.specs, self.seed, self.blank = list(specs), int(seed), blank

    def __len__(self) -> int:
        return len(self.files)

    def _one(self, epoch: int, i: int, attempt: int) -> list[np.ndarray]:
        return decode_views(
            self.files.full(i), self.specs, self.size, self.mode, sample_rng(self.seed, epoch, i, attempt), self.decoder
        )

    def decode_rows(self, epoch: int, idx: np.ndarray) -> tuple[list[torch.Tensor], np.ndarray, list[str]]:
        b, s, c = len(idx), self.size, self.channels
        out = [np.zeros((b, s, s, c), dtype=np.uint8) for _ in self.specs]
        used = np.array(idx, dtype=np.int64, copy=True)
        failed: list[str] = []
        n = len(self.files)
        for row, i in enumerate(idx.tolist()):
            views = None
            for attempt in range(1 if self.blank else _REPLACE_TRIES):
                j = (i + attempt) % n
                try:
                    views = self._one(epoch, j, attempt)
                except Exception:  # noqa: BLE001 - any decoder failure: skip this file
                    failed.append(self.files[j])
                    continue
                used[row] = j
                break
            if views is None and not self.blank:
                failed.append("")  # marker: no readable replacement found
            for k, v in enumerate(views or []):
                out[k][row] = v.reshape(s, s, c)
        tensors = [torch.from_numpy(o).permute(0, 3, 1, 2).contiguous() for o in out]
        return tensors, used, failed

    def __getitem__(self, key: tuple[int, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
        epoch, idx = key
        views, used, failed = self.decode_rows(int(epoch), np.asarray(idx, dtype=np.int64))
        return views, torch.from_numpy(used), failed


class KeySampler(Sampler):
    """Yields the ``(epoch, indices)`` keys set before each pass."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        return iter(list(self.keys))


def _identity(x: Any) -> Any:
    return x  # items are whole batches already (module level: picklable)


def make_loader(dataset: Dataset, sampler: KeySampler, workers: int, pin_memory: bool, prefetch: int = 2) -> DataLoader:
    """A DataLoader of whole batches; its own generator keeps the global RNG untouched."""
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        collate_fn=_identity,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )


def check_failed(data: StreamData, failed: list[str], what: str) -> None:
    """Warn once about unreadable files; a DataError when no readable replacement was found."""
    if "" in failed:
        raise DataError(
            f"{data.name}: {len([f for f in failed if f])} files in a row under {data.files.root} "
            "could not be decoded; "
            "check the files (unreadable or truncated images)"
        )
    if failed:
        data.report_failed(failed, what)


class LazyImages:
    """One deterministic view (plain or center) of some of a :class:`StreamData`'s images,
    shaped like a uint8 (N, C, S, S) tensor: slicing gives another LazyImages, indexing with an
    index tensor decodes those rows (threads), :meth:`batches` streams them (worker processes)."""

    def __init__(self, data: StreamData, spec: ViewSpec, index: np.ndarray) -> None:
        self.data, self.spec, self.index = data, spec, index
        self.device = torch.device("cpu")
        self.dtype = torch.uint8

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), self.data.n_channels, self.data.size, self.data.size))

    @property
    def nbytes(self) -> int:
        """What the view would take decoded (it is never held)."""
        return int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return LazyImages(self.data, self.spec, self.index[key])
        idx = np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key, dtype=np.int64).reshape(-1)
        rows = self.index[idx]
        src = DecodeBatches(self.data, [self.spec], seed=0, blank=True)
        chunks = np.array_split(rows, max(1, min(len(rows), default_stream_workers())))
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:  # Pillow decodes without the GIL
            parts = list(pool.map(lambda c: src.decode_rows(0, c), chunks))
        check_failed(self.data, [f for p in parts for f in p[2]], "shown as black images")
        return torch.cat([p[0][0] for p in parts])

    def batches(self, batch_size: int, device: torch.device, workers: int | None = None) -> Iterator[torch.Tensor]:
        """uint8 (b, C, S, S) batches of consecutive rows on ``device``, decoded by workers."""
        sampler = KeySampler()
        sampler.keys = [
            (0, torch.from_numpy(self.index[s : s + batch_size])) for s in range(0, len(self.index), batch_size)
        ]
        n_workers = self.data.workers if self.data.workers is not None else default_stream_workers()
        n_workers = min(n_workers, len(sampler.keys))
        pin = device.type == "cuda"
        loader = make_loader(DecodeBatches(self.data, [self.spec], seed=0, blank=True), sampler, n_workers, pin)
        for views, _, failed in loader:
            check_failed(self.data, failed, "shown as black images")
            yield views[0].to(device, non_blocking=pin)
