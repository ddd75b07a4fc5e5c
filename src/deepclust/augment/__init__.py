"""Batched, per-sample, on-device image augmentation (see :mod:`deepclust.augment.ops`)."""

from __future__ import annotations

from deepclust.augment import ops
from deepclust.augment.ops import (
    RAND_AUGMENT_OPS,
    JitterParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_color_jitter,
    blur,
    color_jitter,
    crop_resize,
    cutout,
    gaussian_blur,
    gaussian_kernel_size,
    normalize,
    rand_augment,
    rand_augment_op,
    random_crop,
    random_grayscale,
    random_hflip,
    random_resized_crop,
    rgb_to_grayscale,
    sample_crop_boxes,
    sample_jitter_params,
    solarize,
    to_float,
)
from deepclust.augment.pipeline import THICKEN_HALF, Augment, AugmentConfig, EvalTransform, StrongAugment
from deepclust.augment.features import FeatureAugment, FeatureEvalTransform

__all__ = [
    "ops",
    "Augment",
    "AugmentConfig",
    "EvalTransform",
    "FeatureAugment",
    "FeatureEvalTransform",
    "StrongAugment",
    "THICKEN_HALF",
    *ops.__all__,
]
