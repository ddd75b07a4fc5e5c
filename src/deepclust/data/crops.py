"""Per-image work of a streamed batch: decode one file and cut the views a method asks for.

A :class:`ViewSpec` is ``random`` (torchvision's ``RandomResizedCrop`` box, drawn at the
original image's own size and aspect ratio, then resized to the input size), ``plain`` (the
whole image resized to size x size, as the in-memory folders store it) or ``center`` (a centred
square of side ``crop`` x the shorter side, resized: ``Resize(S / crop) + CenterCrop(S)``).

Randomness: the boxes of sample ``i`` in epoch ``e`` come from ``numpy.random.default_rng([seed,
e, i])`` only, so they do not depend on the worker, the batch split or the number of processes,
and a resumed run draws the same ones.

Decoders: ``pil`` (Pillow; JPEGs are first reduced by libjpeg's DCT scaling, ``draft``, by the
largest power of two that keeps every box at least ``size`` pixels, then one ``resize`` with a
box per view) and ``torchvision`` (``torchvision.io.decode_jpeg``; crops resized with
antialiased bilinear interpolation). ``benchmarks/stream.py`` measures both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deepclust.augment.ops import central_crop_size

__all__ = ["DECODERS", "ViewSpec", "crop_boxes", "decode_views", "decode_views_tensor", "sample_rng"]

DECODERS = ("pil", "torchvision")
Box = tuple[float, float, float, float]  # left, top, width, height in original pixels


@dataclass(frozen=True)
class ViewSpec:
    """One view of an image: ``kind`` random | plain | center; ``scale``/``ratio`` for random,
    ``crop`` (fraction of the shorter side) for center."""

    kind: str
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop: float = 1.0


def sample_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The generator of sample ``index``'s boxes in ``epoch`` (``attempt`` > 0: a replacement)."""
    key = [int(seed) & 0xFFFFFFFF, int(epoch), int(index)] + ([int(attempt)] if attempt else [])
    return np.random.default_rng(key)


def _random_box(w: int, h: int, scale: Sequence[float], ratio: Sequence[float], rng: np.random.Generator) -> Box:
    # torchvision.transforms.RandomResizedCrop.get_params, with numpy draws
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return float(left), float(top), float(cw), float(ch)
    cw, ch = central_crop_size(w, h, ratio)
    return float((w - cw) // 2), float((h - ch) // 2), float(cw), float(ch)


def crop_boxes(w: int, h: int, specs: Sequence[ViewSpec], rng: np.random.Generator) -> list[Box]:
    """One box per view for an image of w x h (random views draw from ``rng`` in order)."""
    boxes: list[Box] = []
    for s in specs:
        if s.kind == "random":
            boxes.append(_random_box(w, h, s.scale, s.ratio, rng))
        elif s.kind == "plain":
            boxes.append((0.0, 0.0, float(w), float(h)))
        elif s.kind == "center":
            side = max(1.0, min(w, h) * s.crop)
            boxes.append(((w - side) / 2, (h - side) / 2, side, side))
        else:
            raise ValueError(f"unknown view kind {s.kind!r}")
    return boxes


def decode_views(
    path: Path, specs: Sequence[ViewSpec], size: int, mode: str, rng: np.random.Generator, decoder: str = "pil"
) -> list[np.ndarray]:
    """The views of one file as uint8 (size, size[, 3]) arrays; raises on an unreadable file."""
    if decoder == "torchvision":
        return [
            v.permute(1, 2, 0).squeeze(-1).numpy() for v in decode_views_tensor(_read(path), specs, size, mode, rng)
        ]
    with Image.open(path) as im:
        w, h = im.size
        boxes = crop_boxes(w, h, specs, rng)
        if im.format == "JPEG":
            # DCT scaling: libjpeg decodes at 1/2, 1/4 or 1/8 when every box stays >= size px
            shrink = min(min(bw, bh) for _, _, bw, bh in boxes) / size
            if shrink >= 2:
                im.draft(mode, (math.ceil(w / shrink), math.ceil(h / shrink)))
        im = im.convert(mode)
        fx, fy = im.size[0] / w, im.size[1] / h
        out = []
        for left, top, bw, bh in boxes:
            box = (left * fx, top * fy, (left + bw) * fx, (top + bh) * fy)
            out.append(np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8))
        return out


def _read(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8))


def decode_views_tensor(
    data: torch.Tensor | None,
    specs: Sequence[ViewSpec],
    size: int,
    mode: str,
    rng: np.random.Generator,
    image: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The views as uint8 (C, size, size) tensors, from file bytes (torchvision decoding) or from an
    already decoded uint8 (C, H, W) ``image`` (e.g. decoded on the GPU); crops on its device."""
    from torchvision.io import ImageReadMode, decode_image

    if image is None:
        assert data is not None
        image = decode_image(data, mode=ImageReadMode.RGB if mode == "RGB" else ImageReadMode.GRAY)
    _, h, w = image.shape
    out = []
    for left, top, bw, bh in crop_boxes(w, h, specs, rng):
        l0, t0 = int(round(left)), int(round(top))
        patch = image[:, t0 : t0 + max(1, int(round(bh))), l0 : l0 + max(1, int(round(bw)))]
        y = F.interpolate(patch[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y[0].round_().clamp_(0, 255).to(torch.uint8))
    return out
