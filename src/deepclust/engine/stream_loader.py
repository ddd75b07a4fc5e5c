"""Training batches of a streamed dataset, decoded by DataLoader workers in the plan's order.

:class:`StreamLoader` mirrors :class:`~deepclust.engine.loader.BatchStream`: for the trainer's
index batches of an epoch it yields ``(ViewBatch on the device, indices on the device)``. The
views are those of ``method.stream_views()``: an :class:`~deepclust.augment.Augment` gets a
random resized crop with its own ``crop_scale`` / ``crop_ratio``, an
:class:`~deepclust.augment.EvalTransform` the plain resized image. Workers persist across
epochs and prefetch; only the indices of this process's rows are ever read.

``gpu_decode`` (CUDA only): workers only read the file bytes and the training process decodes
the whole batch with ``torchvision.io.decode_jpeg(..., device="cuda")``, cropping on the GPU.
Off by default; its speed has not been measured against the CPU workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from deepclust.augment import Augment, EvalTransform
from deepclust.augment.views import ViewBatch
from deepclust.data.crops import ViewSpec, decode_views_tensor, sample_rng
from deepclust.data.stream import (
    DecodeBatches,
    KeySampler,
    StreamData,
    check_failed,
    default_stream_workers,
    make_loader,
)
from deepclust.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["StreamLoader", "view_specs"]


def view_specs(pipelines: Sequence[nn.Module]) -> list[ViewSpec]:
    """The crop each pipeline needs cut from the original image."""
    specs = []
    for p in pipelines:
        if isinstance(p, Augment):
            specs.append(ViewSpec("random", p.cfg.crop_scale, p.cfg.crop_ratio))  # tuples (AugmentConfig)
        elif isinstance(p, EvalTransform):
            specs.append(ViewSpec("plain"))
        else:
            raise ConfigError(f"{type(p).__name__} cannot be fed from a streamed dataset (no view defined for it)")
    return specs


class _RawBatches(DecodeBatches):
    """Item: the file bytes of each index (for decoding on the GPU)."""

    def __getitem__(self, key: tuple[int, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
        epoch, idx = key
        return [torch.from_numpy(np.fromfile(self.files.full(int(i)), dtype=np.uint8)) for i in idx.tolist()], idx, []


class StreamLoader:
    """Batches of views of a :class:`StreamData` for explicit index batches (see module doc)."""

    def __init__(
        self,
        data: StreamData,
        pipelines: Sequence[nn.Module],
        device: torch.device,
        seed: int,
        workers: int | None = None,
        prefetch: int = 2,
        gpu_decode: bool = False,
    ) -> None:
        self.data, self.owners, self.device = data, list(pipelines), torch.device(device)
        self.specs = view_specs(self.owners)
        self.seed = int(seed)
        self.gpu_decode = bool(gpu_decode) and self.device.type == "cuda"
        if gpu_decode and not self.gpu_decode:
            log.info("data.gpu_decode needs a CUDA device; decoding on the CPU workers")
        self.workers = default_stream_workers() if workers is None else int(workers)
        self.pin = self.device.type == "cuda"
        self.epoch = 0
        self._sampler = KeySampler()
        source = _RawBatches if self.gpu_decode else DecodeBatches
        self._loader = make_loader(
            source(data, self.specs, self.seed), self._sampler, self.workers, self.pin and not self.gpu_decode, prefetch
        )
        log.info(
            "streaming %s: %d files, %d view(s) per image at %d px, %d worker(s), decoder %s%s",
            data.name,
            data.n_samples,
            len(self.specs),
            data.size,
            self.workers,
            data.decoder,
            ", GPU decoding" if self.gpu_decode else "",
        )

    def __len__(self) -> int:
        return self.data.n_samples

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose crops the next :meth:`batches_of` draws (per-sample generators)."""
        self.epoch = int(epoch)

    def batches_of(self, index_batches: list[torch.Tensor]) -> Iterator[tuple[ViewBatch, torch.Tensor]]:
        self._sampler.keys = [(self.epoch, i.detach().to("cpu", torch.long)) for i in index_batches]
        nb = self.pin
        for views, idx, failed in self._loader:
            check_failed(self.data, failed, "replaced by the next readable file")
            if self.gpu_decode:
                views = self._decode_on_device(views, idx)
            else:
                views = [v.to(self.device, non_blocking=nb) for v in views]
            yield ViewBatch(views, self.owners), idx.to(self.device, non_blocking=nb)

    def _decode_on_device(self, raw: list[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        mode = ImageReadMode.RGB if self.data.n_channels == 3 else ImageReadMode.GRAY
        try:
            images: list[torch.Tensor | None] = list(decode_jpeg(raw, mode=mode, device=self.device))
        except RuntimeError:  # one bad file fails the batched call: decode one by one
            images = []
            for r in raw:
                try:
                    images.append(decode_jpeg(r, mode=mode, device=self.device))
                except RuntimeError:
                    images.append(None)
        s, c = self.data.size, self.data.n_channels
        failed = [self.data.files[int(i)] for img, i in zip(images, idx.tolist(), strict=True) if img is None]
        if failed:
            self.data.report_failed(failed, "not decodable on the GPU, shown as black images")
        per = [
            decode_views_tensor(
                None, self.specs, s, self.data.mode, sample_rng(self.seed, self.epoch, int(i)), image=img
            )
            if img is not None
            else [torch.zeros(c, s, s, dtype=torch.uint8, device=self.device)] * len(self.specs)
            for img, i in zip(images, idx.tolist(), strict=True)
        ]
        return [torch.stack([p[k] for p in per]) for k in range(len(self.specs))]
