"""``embed(data, spec)``: a dataset's pretrained embedding, computed once into the cache.

The rows are written in place into ``features.npy`` (a memmap) chunk by chunk; after each chunk
the memmap is flushed and ``progress.json`` is replaced atomically, so a killed run starts
again from its last finished chunk. A complete cache of the same model, weights,
preprocessing and images is reused (see :mod:`deepclust.pretrained.cache`).

In-memory data (:class:`ImageData`) is sliced batch by batch; streamed data (:class:`StreamData`,
folders and ImageNet) is decoded by its DataLoader workers straight at the encoder's resize
size (centre square of the shorter side), so the encoder only crops. Under torchrun each
process embeds a contiguous share of the missing rows into the same memmap; rank 0 creates
and finalises the folder.

Precision: ``amp="auto"`` is :func:`deepclust.engine.amp.resolve_amp`'s rule (bf16 autocast on
CUDA and on CPUs with AMX-BF16 units; float32 on other CPUs); rows are
always stored as float32.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np
import torch
from tqdm.auto import tqdm

from deepclust._version import __version__
from deepclust.data.base import FeatureData, ImageData
from deepclust.data.stream import StreamData
from deepclust.engine.device import amp_dtype, autocast, resolve_device
from deepclust.engine.io import write_json
from deepclust.errors import ConfigError, DataError
from deepclust.pretrained import cache
from deepclust.pretrained.cache import default_cache_root
from deepclust.pretrained.encoders import Encoder, create_encoder

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=FeatureData)  # what as_feature_data builds

__all__ = ["Embedding", "default_cache_root", "embed"]

CHUNK_ROWS = 2048
_AMP = ("auto", "off", "bf16", "fp16")


@dataclass
class Embedding:
    """A dataset's embedding: ``features`` float32 (N, D), a read-only memmap of the cache's
    ``features.npy``; ``manifest`` its record; ``path`` the cache folder; ``paths`` the image
    files (folders), else None. ``rows_computed`` and ``seconds``: the work this call did
    (0 when the cache was reused)."""

    features: np.ndarray
    manifest: dict[str, Any]
    path: Path
    labels: torch.Tensor
    classes: list[str]
    name: str
    split: str
    paths: list[str] | None = None
    rows_computed: int = 0
    seconds: float = 0.0
    reused: bool = field(default=False)

    @property
    def n_samples(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @overload
    def as_feature_data(self) -> FeatureData: ...

    @overload
    def as_feature_data(self, cls: type[_F], **extra: Any) -> _F: ...

    def as_feature_data(self, cls: type[FeatureData] = FeatureData, **extra: Any) -> FeatureData:
        """The features in memory as :class:`FeatureData` (or its subclass ``cls``, given the
        ``extra`` fields), with the dataset's labels, classes and name."""
        return cls(
            images=torch.from_numpy(np.array(self.features, dtype=np.float32)),
            labels=self.labels.clone(),
            classes=list(self.classes),
            name=self.name,
            split=self.split,
            **extra,
        )


def _dist() -> tuple[int, int]:
    d = torch.distributed
    if d.is_available() and d.is_initialized() and d.get_world_size() > 1:
        return d.get_rank(), d.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _batches(
    data: ImageData | StreamData, enc: Encoder, start: int, end: int, batch_size: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """uint8 batches of rows ``start..end`` in order, on ``device``."""
    if isinstance(data, StreamData):
        # decode the centre square of the shorter side at the resize size: the encoder then only crops
        view = dataclasses.replace(data, size=enc.preprocess.resize_size, eval_crop=1.0)
        yield from view.images[start:end].batches(batch_size, device)
        return
    for s in range(start, end, batch_size):
        yield data.images[s : min(s + batch_size, end)].to(device, non_blocking=True)


def _source(data: ImageData | StreamData) -> dict[str, Any]:
    if isinstance(data, StreamData):
        return {"kind": "stream", "decoder": data.decoder, "channels": data.n_channels}
    if not isinstance(data, ImageData) or isinstance(data, FeatureData):
        raise DataError(f"embed: expected images (ImageData or StreamData), got {type(data).__name__}")
    return {"kind": "memory"}


def embed(
    data: ImageData | StreamData,
    spec: str | Encoder,
    cache_root: str | Path | None = None,
    *,
    device: torch.device | str = "auto",
    batch_size: int = 256,
    image_size: int | None = None,
    amp: str = "auto",
    progress: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> Embedding:
    """The embedding of every image of ``data`` under the encoder ``spec``, from the cache when
    it is there, else computed into it (see the module doc).

    Parameters
    ----------
    data : the images (in memory or streamed from disk).
    spec : an encoder spec string (``timm:NAME[@PATH]``, ``torchvision:ARCH.WEIGHTS[@PATH]``) or
        an :class:`Encoder`, which is moved to ``device``.
    cache_root : the cache's root folder (None: :func:`default_cache_root`).
    device : "auto", "cpu", "cuda", "cuda:N", "mps" or a torch.device.
    batch_size : images per forward pass.
    image_size : the encoder's input size (None: the weights'); only with a spec string.
    amp : "auto", "off", "bf16" or "fp16" (see the module doc).
    progress : show a progress bar.
    chunk_rows : rows computed and written to the cache per chunk (what a stopped run keeps).

    Returns
    -------
    Embedding
        ``features`` float32 (N, D) (a read-only memmap of the cache), the labels, class names
        and the cache's manifest.

    Raises
    ------
    ConfigError
        On a bad option or an unknown encoder.
    """
    if batch_size < 1 or chunk_rows < 1:
        raise ConfigError(f"embed: batch_size and chunk_rows must be >= 1, got {batch_size} and {chunk_rows}")
    if amp not in _AMP:
        raise ConfigError(f"embed: amp must be one of {', '.join(_AMP)}, got {amp!r}")
    source = _source(data)
    if isinstance(spec, Encoder):
        enc = spec
        if image_size is not None and int(image_size) != enc.preprocess.input_size:
            raise ConfigError(
                f"embed: image_size {image_size} differs from the encoder's {enc.preprocess.input_size}; "
                "pass image_size to create_encoder"
            )
    else:
        enc = create_encoder(spec, image_size)
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    dtype = amp_dtype(amp, dev)
    rank, world = _dist()
    n = data.n_samples
    t0 = time.perf_counter()
    ihash = cache.images_hash(data)
    logger.debug("embed: image-list hash of %d images in %.1f s", n, time.perf_counter() - t0)
    inputs = {
        "format": cache.FORMAT,
        "model": enc.model_spec,
        "weights_hash": enc.weights_hash,
        "preprocess": enc.preprocess.as_dict(),
        "images_hash": ihash,
        "n_images": n,
        "source": source,
    }
    key = cache.cache_key(inputs)
    folder = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    folder = folder / key
    precision = "fp32" if dtype is None else str(dtype).replace("torch.", "")
    manifest = {
        **inputs,
        "key": key,
        "spec": enc.spec,
        "weights_file": str(enc.weights_file),
        "dim": enc.dim,
        "dtype": "float32",
        "dataset": data.name,
        "split": data.split,
        "device": str(dev),
        "precision": precision,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "deepclust_version": __version__,
    }

    if rank == 0:
        state, why = cache.inspect(folder, inputs, enc.dim)
        if state == "damaged":
            logger.warning("embedding cache %s is damaged (%s): rebuilt", folder, why)
        if state in ("missing", "damaged"):
            cache.create(folder, n, enc.dim, manifest)
        elif state == "complete":
            logger.info("embedding of %s (%s) reused from the cache %s", data.name, enc.spec, folder)
    _barrier(world)
    state, why = cache.inspect(folder, inputs, enc.dim)
    computed, seconds = 0, 0.0
    if state != "complete":
        if state != "partial":  # another process changed the folder under us
            raise DataError(f"embedding cache {folder} changed while opening it ({why}); run again")
        done = cache.read_progress(folder)
        todo = cache.remaining(done, n)
        if rank == 0 and done:
            logger.info(
                "embedding cache %s: resuming, %d of %d rows already done", folder, n - sum(b - a for a, b in todo), n
            )
        mine = cache.split_rows(todo, rank, world)
        t1 = time.perf_counter()
        computed = _compute(
            data, enc, folder, mine, done, rank, dev, dtype, batch_size, chunk_rows, progress and rank == 0
        )
        seconds = time.perf_counter() - t1
        _barrier(world)
        if rank == 0:
            left = cache.remaining(cache.read_progress(folder), n)
            if left:
                raise DataError(
                    f"embedding cache {folder}: rows {left[0][0]}..{left[0][1]} were not written; run again"
                )
            cache.finish_progress(folder, n)
            done_manifest = {
                **manifest,
                "complete": True,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "world_size": world,
            }
            write_json(done_manifest, folder / cache.MANIFEST)
            logger.info(
                "embedded %d images (%s, %d features) in %.1f s (%.1f images/s) into %s",
                computed,
                enc.spec,
                enc.dim,
                seconds,
                computed / max(seconds, 1e-9),
                folder,
            )
        _barrier(world)
    feats = np.load(folder / cache.FEATURES, mmap_mode="r", allow_pickle=False)
    final = json.loads((folder / cache.MANIFEST).read_text())
    paths = list(data.paths) if data.paths is not None else None
    return Embedding(
        features=feats,
        manifest=final,
        path=folder,
        labels=data.labels.clone(),
        classes=list(data.classes),
        name=data.name,
        split=data.split,
        paths=paths,
        rows_computed=computed,
        seconds=seconds,
        reused=state == "complete",
    )


def _compute(
    data: ImageData | StreamData,
    enc: Encoder,
    folder: Path,
    mine: list[list[int]],
    done: list[list[int]],
    rank: int,
    dev: torch.device,
    dtype: torch.dtype | None,
    batch_size: int,
    chunk_rows: int,
    bar: bool,
) -> int:
    """Embed the intervals ``mine`` into the memmap, flushing and recording progress every chunk."""
    total = sum(b - a for a, b in mine)
    if not total:
        return 0
    enc.to(dev).eval()
    feats = np.load(folder / cache.FEATURES, mmap_mode="r+", allow_pickle=False)
    per_flush = max(1, math.ceil(chunk_rows / batch_size))
    recorded = [list(r) for r in done] if rank == 0 else []
    computed = 0
    with tqdm(total=total, unit="img", desc=f"embed {enc.spec}", disable=not bar, leave=False) as pbar:
        for start, end in mine:
            pos = flushed = start
            for k, batch in enumerate(_batches(data, enc, start, end, batch_size, dev), 1):
                with torch.inference_mode(), autocast(dev, dtype):
                    out = enc(batch)
                b = int(out.shape[0])
                if not bool(torch.isfinite(out).all()):
                    raise DataError(
                        f"{enc.spec}: the embedding of images {pos}..{pos + b - 1} of {data.name} holds NaN or "
                        "infinite values; check those images and the weights (or use amp=off)"
                    )
                feats[pos : pos + b] = out.to("cpu", torch.float32).numpy()
                pos += b
                computed += b
                pbar.update(b)
                if k % per_flush == 0 or pos == end:
                    feats.flush()
                    recorded = cache.merge([*recorded, [flushed, pos]])
                    cache.write_progress(folder, recorded, rank)
                    flushed = pos
            if pos != end:
                raise DataError(f"{data.name}: expected rows {start}..{end}, the loader gave {pos - start}")
    feats.flush()
    del feats
    return computed
