"""Streaming batches from host memory, for training sets that do not stay on the device.

:class:`BatchStream` holds the uint8 images (N, C, H, W) on the CPU (page-locked when the
device is CUDA, so copies are asynchronous DMA) and, for an index order, yields
``(uint8 batch on the device, indices on the device)`` for consecutive slices of
``batch_size`` indices of that order: exactly ``(images[idx].to(device), idx.to(device))``.

A ``DataLoader`` prefetches: worker processes gather whole batches by index (one
``index_select`` per batch, no per-image Python work), its pin-memory thread page-locks them
and the copy to the device is ``non_blocking``, so gathering batch t+1 overlaps step t.
Augmentation stays batched on the device, as for resident data. The workers persist across
epochs; each epoch only sends its new order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from deepclust.errors import ConfigError

__all__ = ["BatchStream", "default_workers"]


def default_workers(device: torch.device) -> int:
    """Gathering threads for a stream: up to 8 workers feeding a GPU; none on the CPU, where a
    gather is one memory copy the training process does as fast as a worker would."""
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class _BatchGather(Dataset):
    """Item ``idx`` (an int64 index tensor) is the batch ``(images[idx], idx)``."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images.index_select(0, idx), idx


class _OrderSampler(Sampler):
    """Yields consecutive ``batch_size`` slices of the current order (set before each epoch)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.order = torch.empty(0, dtype=torch.long)
        self.index_batches: list[torch.Tensor] | None = None  # explicit batches, if set

    def __len__(self) -> int:
        if self.index_batches is not None:
            return len(self.index_batches)
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.index_batches is not None:
            yield from self.index_batches
            return
        order, bs = self.order, self.batch_size
        for s in range(0, len(order), bs):
            yield order[s : s + bs]


def _identity(batch: Any) -> Any:  # Any: DataLoader types collate_fn for lists of samples
    return batch  # the dataset already returns whole batches (module level: picklable)


class BatchStream:
    """Batches of a uint8 CPU tensor by index order, prefetched by a ``DataLoader``.

    ``images``: uint8 (N, C, H, W); ``device``: where batches go; ``num_workers`` None: see
    :func:`default_workers`; ``pin_memory`` None: on when the device is CUDA.
    """

    def __init__(
        self,
        images: torch.Tensor,
        device: torch.device | str,
        batch_size: int,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        prefetch_factor: int = 4,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigError(f"BatchStream needs uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.num_workers = default_workers(self.device) if num_workers is None else int(num_workers)
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else bool(pin_memory)
        # the source stays on the CPU; workers share it (fork), so it is never copied per batch
        self.images = images.cpu().contiguous()
        self._sampler = _OrderSampler(self.batch_size)
        workers = self.num_workers > 0
        self._loader = DataLoader(
            _BatchGather(self.images),
            sampler=self._sampler,
            batch_size=None,  # items are whole batches already
            collate_fn=_identity,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers,
            prefetch_factor=prefetch_factor if workers else None,
            # its own generator: a DataLoader draws a seed per epoch, which must not advance the
            # global RNG that drives augmentation (streamed and resident runs stay identical)
            generator=torch.Generator().manual_seed(0),
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images[idx] on the device, idx on the device)`` for consecutive ``batch_size``
        slices ``idx`` of ``order`` (the last one may be shorter)."""
        self._sampler.order = order.detach().to("cpu", torch.long)
        self._sampler.index_batches = None
        yield from self._stream()

    def batches_of(self, index_batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same for explicit index batches of any sizes (the trainer's per-process rows)."""
        self._sampler.index_batches = [i.detach().to("cpu", torch.long) for i in index_batches]
        yield from self._stream()

    def _stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.pin_memory and self.device.type == "cuda"
        for batch, idx in self._loader:
            yield batch.to(self.device, non_blocking=non_blocking), idx.to(self.device, non_blocking=non_blocking)
