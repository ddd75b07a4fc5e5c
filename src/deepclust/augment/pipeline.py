"""Augmentation pipelines: whole uint8 batches in, normalised float batches out, on x's device.

Presets (spec files beside design.md):

- IDFD CIFAR (the defaults): ``AugmentConfig()``.
- SeCu view 1 / view 2: ``crop_scale=(min_crop, 1), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8,
  grayscale_p=0.2, flip_p=0.5`` plus ``blur_p=1.0`` (view 1) or ``blur_p=0.1, solarize_p=0.2``
  (view 2).
- AnchorCL / CC / SimCLR: ``crop_scale=(0.08, 1), flip_p=0.5, jitter=(0.8s, 0.8s, 0.8s, 0.2s),
  jitter_p=0.8, grayscale_p=0.2``, optionally ``blur_p=0.5, blur_kernel=23``; AnchorCL does not
  normalise (``mean=None, std=None``), and its clean view is :class:`EvalTransform`.
- SCAN self-labelling strong view: :class:`StrongAugment`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepclust.augment import ops
from deepclust.augment.features import FEATURE_VIEWS
from deepclust.augment.views import ViewBatch
from deepclust.errors import ConfigError

__all__ = ["AugmentConfig", "Augment", "EvalTransform", "StrongAugment", "THICKEN_HALF"]

# The gentle stroke-width views a method may add to its glyph preset (SeCu and CDC do:
# ClusteringMethod.glyph_preset): with probability 0.5 a view's strokes get thicker, never thinner,
# by a blend half-way towards a 3x3 dilation (ops.random_stroke; erosion where the strokes are
# dark). They bridge bold and light font faces; full strength, or thinning as well, erased the
# strokes of 8 px digits upsampled to 16 px. The figures: docs/explorations.md, "Stroke-width
# views" (the records it cites are in git history).
THICKEN_HALF: dict[str, Any] = {"stroke_p": 0.5, "stroke_thin": 0.0, "stroke_strength": 0.5}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _floats(name: str, value: Any, n: int) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(map(_is_number, value)):
        raise ConfigError(f"augment.{name} must be a list of {n} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _range(name: str, value: Any, low: float, high: float | None, low_open: bool) -> tuple[float, float]:
    lo, hi = _floats(name, value, 2)
    ok = (lo > low if low_open else lo >= low) and lo <= hi and (high is None or hi <= high)
    if not ok:
        bound = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"augment.{name} must be an ordered pair [low, high] within {bound}, got {list(value)!r}")
    return lo, hi


def _probability(name: str, value: Any) -> float:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"augment.{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


@dataclass
class AugmentConfig:
    """One augmented view. Defaults are IDFD's CIFAR pipeline (idfd.md section 5).

    ``jitter`` is (brightness, contrast, saturation, hue) as in ``ColorJitter``; each
    probability applies per sample. ``blur_kernel`` None: ``2 * ceil(3 * sigma_max) + 1``.
    ``solarize_threshold`` is on [0, 1] images (0.5 = PIL's 128). The ``feature_*`` fields and
    ``neighbors`` are used in feature mode only (precomputed vectors, where the image
    operations have no meaning; :mod:`deepclust.augment.features`): ``feature_views``
    ``neighbors`` (a view of i is one of its ``neighbors`` nearest neighbours or i itself) or
    ``noise`` (i itself); ``feature_l2`` L2-normalises every vector first; ``feature_noise``,
    the noise standard deviation in units of each feature's training std, and
    ``feature_dropout``, the probability of masking each value (None: 0 with neighbour views,
    0.5 with noise views).
    ``affine_*``: with probability ``affine_p`` a rotation by up to ``affine_degrees``, a shear
    by up to ``affine_shear`` degrees and a shift by up to ``affine_translate`` of the side
    (:func:`deepclust.augment.ops.random_affine`), the "small affine moves" of glyph presets.
    ``stroke_*``: with probability ``stroke_p`` strokes get thicker or thinner by a blend of up
    to ``stroke_strength`` towards a 3x3 dilation or erosion; a share ``stroke_thin`` of them thins the
    strokes, the rest thicken them (:func:`deepclust.augment.ops.random_stroke`).
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.0)
    jitter_p: float = 1.0
    grayscale_p: float = 0.2
    flip_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    affine_p: float = 0.0
    affine_degrees: float = 10.0
    affine_translate: float = 0.1
    affine_shear: float = 5.0
    stroke_p: float = 0.0
    stroke_strength: float = 1.0
    stroke_thin: float = 0.5
    feature_views: str = "neighbors"
    feature_l2: bool = True
    neighbors: int = 20
    feature_noise: float | None = None
    feature_dropout: float | None = None

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so configs compare and hash the same either way.
        self.crop_scale = _range("crop_scale", self.crop_scale, 0.0, 1.0, low_open=True)
        self.crop_ratio = _range("crop_ratio", self.crop_ratio, 0.0, None, low_open=True)
        jitter = _floats("jitter", self.jitter, 4)
        if min(jitter) < 0 or jitter[3] > 0.5:
            raise ConfigError(
                "augment.jitter must be [brightness, contrast, saturation, hue] with "
                f"all values >= 0 and hue <= 0.5, got {list(self.jitter)!r}"
            )
        self.jitter = jitter  # type: ignore[assignment]  # _floats checked 4 values; mypy sees tuple[float, ...]
        for name in (
            "jitter_p",
            "grayscale_p",
            "flip_p",
            "blur_p",
            "solarize_p",
            "affine_p",
            "stroke_p",
            "stroke_strength",
            "stroke_thin",
        ):
            setattr(self, name, _probability(name, getattr(self, name)))
        self.blur_sigma = _range("blur_sigma", self.blur_sigma, 0.0, None, low_open=True)
        k = self.blur_kernel
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0):
            raise ConfigError(f"augment.blur_kernel must be an odd positive integer or null, got {k!r}")
        t = self.solarize_threshold
        if not _is_number(t) or not 0.0 <= t <= 1.0:
            raise ConfigError(f"augment.solarize_threshold must be in [0, 1], got {t!r}")
        self.solarize_threshold = float(t)
        for name, high in (("affine_degrees", 180.0), ("affine_translate", 0.5), ("affine_shear", 45.0)):
            v = getattr(self, name)
            if not _is_number(v) or not 0.0 <= v <= high:
                raise ConfigError(f"augment.{name} must be a number in [0, {high:g}], got {v!r}")
            setattr(self, name, float(v))
        self._check_feature_views()

    def _check_feature_views(self) -> None:
        if self.feature_views not in FEATURE_VIEWS:
            raise ConfigError(
                f"augment.feature_views must be one of {', '.join(FEATURE_VIEWS)}, got {self.feature_views!r}"
            )
        if not isinstance(self.feature_l2, bool):
            raise ConfigError(f"augment.feature_l2 must be true or false, got {self.feature_l2!r}")
        if not isinstance(self.neighbors, int) or isinstance(self.neighbors, bool) or self.neighbors < 1:
            raise ConfigError(f"augment.neighbors must be an integer >= 1, got {self.neighbors!r}")
        default = 0.0 if self.feature_views == "neighbors" else 0.5
        noise = default if self.feature_noise is None else self.feature_noise
        if not _is_number(noise) or noise < 0:
            raise ConfigError(f"augment.feature_noise must be a number >= 0, got {self.feature_noise!r}")
        self.feature_noise = float(noise)
        drop = default if self.feature_dropout is None else self.feature_dropout
        if not _is_number(drop) or not 0.0 <= drop < 1.0:
            raise ConfigError(f"augment.feature_dropout must be in [0, 1), got {self.feature_dropout!r}")
        self.feature_dropout = float(drop)


class _Normalizing(nn.Module):
    """Holds mean/std (None: no normalisation) and checks them against the input channels."""

    # buffers, registered in __init__
    mean: Tensor | None
    std: Tensor | None

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ConfigError("mean and std must both be given or both be null")
        m_t: Tensor | None = None
        s_t: Tensor | None = None
        if mean is not None and std is not None:
            m = [float(v) for v in mean]
            s = [float(v) for v in std]
            if len(m) != len(s) or len(m) not in (1, 3):
                raise ConfigError(f"mean and std must both have 1 or 3 values, got {len(m)} and {len(s)}")
            if min(s) <= 0:
                raise ConfigError(f"std values must be > 0, got {s}")
            m_t, s_t = torch.tensor(m), torch.tensor(s)
        # non-persistent buffers: they follow .to(device) but stay out of checkpoints
        self.register_buffer("mean", m_t, persistent=False)
        self.register_buffer("std", s_t, persistent=False)

    def _check_channels(self, x: Tensor) -> None:
        if self.mean is not None and x.shape[1] != self.mean.numel():
            raise ConfigError(
                f"mean/std have {self.mean.numel()} values but the images have "
                f"{x.shape[1]} channels; give per-channel statistics that match"
            )

    def _normalize(self, x: Tensor) -> Tensor:
        if self.mean is None or self.std is None:
            return x
        return ops.normalize(x, self.mean.to(x.device), self.std.to(x.device))


class Augment(_Normalizing):
    """One random view per image of a uint8 batch, all parameters drawn per sample.

    uint8 (B, C, H, W) -> float [0, 1] -> random resized crop -> colour jitter (p) ->
    grayscale (p) -> blur (p) -> solarize (p) -> horizontal flip (p) -> small affine move (p:
    rotation, shear, shift; glyph-like data) -> stroke width (p; glyph-like data) -> normalise, giving
    float32 (B, C, size, size) on the input's device. C = 1 keeps one channel (jitter acts on
    brightness and contrast only, grayscale is a no-op). ``mean``/``std`` None: no
    normalisation (AnchorCL).
    """

    def __init__(
        self, cfg: AugmentConfig, size: int, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> None:
        super().__init__(mean, std)
        if not isinstance(cfg, AugmentConfig):
            raise ConfigError(f"Augment needs an AugmentConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.size = int(size)

    def forward(self, x: Tensor | ViewBatch, generator: torch.Generator | None = None) -> Tensor:
        cfg = self.cfg
        cut = isinstance(x, ViewBatch)  # streamed: the loader cut this view from the file already
        x = ops.to_float(x.take(self) if isinstance(x, ViewBatch) else x)
        self._check_channels(x)
        if not cut:
            x = ops.random_resized_crop(x, self.size, cfg.crop_scale, cfg.crop_ratio, generator)
        x = ops.color_jitter(x, *cfg.jitter, p=cfg.jitter_p, generator=generator)
        # zero-probability steps are skipped outright: they would be identities anyway
        if cfg.grayscale_p > 0:
            x = ops.random_grayscale(x, cfg.grayscale_p, generator)
        if cfg.blur_p > 0:
            x = ops.gaussian_blur(x, cfg.blur_sigma, cfg.blur_p, generator, cfg.blur_kernel)
        if cfg.solarize_p > 0:
            x = ops.solarize(x, cfg.solarize_p, cfg.solarize_threshold, generator)
        if cfg.flip_p > 0:
            x = ops.random_hflip(x, cfg.flip_p, generator)
        if cfg.affine_p > 0:
            x = ops.random_affine(
                x, cfg.affine_degrees, cfg.affine_translate, cfg.affine_shear, cfg.affine_p, generator
            )
        if cfg.stroke_p > 0:
            x = ops.random_stroke(x, cfg.stroke_strength, cfg.stroke_p, generator, cfg.stroke_thin)
        return self._normalize(x)

    def extra_repr(self) -> str:
        return f"size={self.size}, cfg={self.cfg}"


def _resize_if_needed(x: Tensor, size: int) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class EvalTransform(_Normalizing):
    """Deterministic view: uint8 -> float [0, 1] -> bilinear antialiased resize to size x size
    (only when the spatial size differs) -> normalise (skipped when mean/std are None)."""

    def __init__(self, size: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__(mean, std)
        self.size = int(size)

    def forward(self, x: Tensor | ViewBatch) -> Tensor:
        x = ops.to_float(x.take(self) if isinstance(x, ViewBatch) else x)
        self._check_channels(x)
        return self._normalize(_resize_if_needed(x, self.size))

    def extra_repr(self) -> str:
        return f"size={self.size}"


class StrongAugment(_Normalizing):
    """SCAN's strong view for self-labelling (secu.md section 12).

    uint8 -> float -> (resize if the size differs) -> horizontal flip (0.5) -> random crop of
    ``size`` after zero padding by ``padding`` (0: SCAN crops to the training size without
    padding, so no shift) -> RandAugment (``n_ops`` ops) -> normalise -> Cutout with one hole of
    side 2 (L // 2), L in 1..``cutout_max``, filled with 0, i.e. the mean colour, after
    normalisation. ``cutout_max`` None: 16 for images up to 32 px, else 32 (STL-10).
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        n_ops: int = 4,
        padding: int = 0,
        cutout_max: int | None = None,
        flip_p: float = 0.5,
    ) -> None:
        super().__init__(mean, std)
        self.size = int(size)
        self.n_ops = int(n_ops)
        self.padding = int(padding)
        self.cutout_max = int(cutout_max) if cutout_max is not None else (16 if size <= 32 else 32)
        self.flip_p = _probability("flip_p", flip_p)
        if self.n_ops < 0 or self.padding < 0 or self.cutout_max < 0:
            raise ConfigError("StrongAugment: n_ops, padding and cutout_max must be >= 0")

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = ops.to_float(x)
        self._check_channels(x)
        x = _resize_if_needed(x, self.size)
        x = ops.random_hflip(x, self.flip_p, generator)
        x = ops.random_crop(x, self.size, self.padding, generator)
        x = ops.rand_augment(x, self.n_ops, generator)
        x = self._normalize(x)
        if self.cutout_max > 0:
            x = ops.cutout(x, self.cutout_max, generator)
        return x

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, n_ops={self.n_ops}, padding={self.padding}, "
            f"cutout_max={self.cutout_max}, flip_p={self.flip_p}"
        )
