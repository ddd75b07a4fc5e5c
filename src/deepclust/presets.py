"""Defaults by data kind: what a run without a dataset config gets (``defaults: auto``).

A shipped or paper config says ``defaults: method`` (the digits and Fashion-MNIST configs:
``defaults: glyph``) and keeps exactly its own values over the method's defaults
(``METHOD.defaults()``, the CIFAR recipes of the papers). A run given only a dataset
(``deepclust train --method M --data npz:... --n-clusters K``, a user YAML without
``defaults``, the scikit-learn estimator) gets ``defaults: auto``: the data is peeked at
(:func:`deepclust.data.peek`, headers only) and classified, and that kind's preset is merged
between the method's defaults and the run's own values, so anything the run sets still wins.

The rule (README "Defaults by data kind"):

- **features**: (N, D) vectors. The MLP; noise + dropout views (augment/features.py); cosine
  schedule. Nothing image-specific applies.
- **glyph**: one channel and a native side <= 32 px (digits, USPS, MNIST, Fashion-MNIST,
  letters). Small CNN of width 32 at an input side of 16 px (larger glyphs are resized down);
  views without a horizontal flip or colour jitter beyond brightness/contrast, gentle crops
  (scale [0.5, 1], ratio [0.8, 1.25]) and small affine moves (p 0.5: up to 10 degrees, 5
  degrees of shear, 10 % shift); a cosine schedule; per method the optimiser and the few
  settings that fail on such data (below); SeCu and CDC also thicken the strokes of half their
  views, at half strength.
- **natural**: everything else (RGB, or grayscale above 32 px). The method's own SimCLR-style
  views and backbone choice (models.auto_backbone: ResNet-18 with the stem for the size), a
  cosine schedule.

``defaults`` may also name a kind (``glyph``, ``natural``, ``features``) to force it; the
resolved config stores the kind that was applied, so a run directory says which it was.
"""

from __future__ import annotations

import math
from typing import Any

from deepclust.data.peek import DataShape

__all__ = ["DEFAULTS_CHOICES", "KINDS", "data_kind", "describe", "kind_defaults"]

KINDS = ("glyph", "natural", "features")
DEFAULTS_CHOICES = ("auto", "method", *KINDS)

_GLYPH_AUGMENT: dict[str, Any] = {
    "crop_scale": [0.5, 1.0],
    "crop_ratio": [0.8, 1.25],
    "flip_p": 0.0,  # digits and letters are not mirror-symmetric
    "jitter": [0.4, 0.4, 0.0, 0.0],  # one channel: brightness and contrast only
    "jitter_p": 0.8,
    "grayscale_p": 0.0,
    "affine_p": 0.5,
    "affine_degrees": 10.0,
    "affine_translate": 0.1,
    "affine_shear": 5.0,
}

# SeCu and CDC on glyph data: with probability 0.5 a view's strokes get thicker (never thinner),
# by a blend of half-way towards a 3x3 dilation (ops.random_stroke; erosion where the strokes are
# dark). Without it both fell apart on font-drawn glyphs in one seed of three (glyphs16 seed 2:
# SeCu ACC 0.679, CDC 0.524; 0.948 / 0.828 with it). Full strength, or thinning as well, erased
# the strokes of 8 px digits upsampled to 16 px and cost digits and mnist-5k up to 25 points
# (benchmarks/results/exploration_16/README.md, "Half-strength thickening").
_THICKEN: dict[str, Any] = {"stroke_p": 0.5, "stroke_thin": 0.0, "stroke_strength": 0.5}

# Per method on glyph data (library choices, measured in benchmarks/quality_matrix.py):
_GLYPH_METHOD: dict[str, dict[str, Any]] = {
    "idfd": {  # batch 16 and its lr: kind_defaults
        "optim": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4},
    },
    "secu": {  # batch and lr by dataset size: kind_defaults
        "optim": {"name": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "warmup_epochs": 3},
        "augment": {"blur_sigma": [0.1, 1.0], **_THICKEN},
        "method_args": {"n_heads": 3},
    },
    "cdc": {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        "train": {"batch_size": 256},
        "augment": dict(_THICKEN),
        # tau_p 0.5: the categorical weight exp(p_a.p_b / tau_p) spans [1, e^2] instead of [1, e]
        # (Reading A, spec cdc.md 3.2); with 1.0 the head fell below k-means on Fashion-MNIST
        # for 2 of 3 seeds (benchmarks/results/cdc_fashion-mnist_test_cpu_taup1*.json)
        "method_args": {"tau_p": 0.5},
    },
    "anchorcl": {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        "train": {"batch_size": 128},
        # the first half of the epochs on the instance loss alone, then k-means centres from
        # the trained features: from the untrained network 2 of 3 digits seeds merged two classes;
        # 0.5 instead of 0.25 lifted the worst Fashion-MNIST seed from 0.620 to 0.660
        "method_args": {"instance_warmup": 0.5},
    },
}


# glyph presets: the learning rate at batch B (measured at 128 and 16 on digits): IDFD
# 0.05 sqrt(B / 128) (0.1 at 128 fell to ACC 0.64), SeCu linear, 0.1 B / 128
_LR_AT_BATCH = {"idfd": lambda b: 0.05 * math.sqrt(b / 128), "secu": lambda b: 0.1 * b / 128}


def _glyph_batch(method: str, n_samples: int) -> int:
    """The batch of IDFD and SeCu on glyph data of ``n_samples`` images.

    IDFD and SeCu take no negatives from the batch (a memory bank; cluster centres), and on
    small data they need many small steps: on digits (1,797 images, 40 epochs) batch 128 gave
    IDFD ACC 0.81 and SeCu 0.20 (collapsed: whole batches took one label), batch 16 with a
    lower rate 0.92 and 0.95. SeCu: B ~ N / 100, a power of two in [16, 128]. IDFD: 16 at every
    size, since its 40-epoch runs are short of steps (80 epochs lift Fashion-MNIST's 0.635 to
    0.700): on the 5,000-image Fashion-MNIST draw the worst of seeds 0-2 went ACC 0.635 / NMI
    0.609 (B 64), 0.660 / 0.622 (32), 0.690 / 0.636 (16), for about 35 % more time
    (benchmarks/results/exploration_16/, "Third round").
    """
    if method == "idfd":
        return 16
    return int(min(128, max(16, 2 ** round(math.log2(max(1, n_samples) / 100)))))


def data_kind(shape: DataShape) -> str:
    """``features`` for vectors, ``glyph`` for one channel at <= 32 px, else ``natural``."""
    if shape.n_features > 0:
        return "features"
    if shape.channels == 1 and shape.size <= 32:
        return "glyph"
    return "natural"


def kind_defaults(method: str, kind: str, shape: DataShape) -> dict[str, Any]:
    """The preset (a nested config dict) of ``kind`` for ``method`` on data of ``shape``."""
    if kind in ("features", "natural"):  # the method's own views and backbone rule
        return {"optim": {"schedule": "cosine"}}
    if kind != "glyph":
        raise ValueError(f"unknown data kind {kind!r}; one of {', '.join(KINDS)}")
    # Every glyph at 16 px, width 32: on the Fashion-MNIST draw (28 px) every method's worst
    # seed rose (ACC 0.56-0.70 at 28 px, width 16 -> 0.62-0.72) for about the same CPU time,
    # while IDFD at 28 px, width 32 stayed at 0.58 (benchmarks/results/exploration_16/).
    out: dict[str, Any] = {
        "data": {"image_size": 16},
        "model": {"backbone": "small_cnn", "feature_dim": 128, "width": 32},
        "optim": {"schedule": "cosine"},
        "augment": dict(_GLYPH_AUGMENT),
    }
    if method in _LR_AT_BATCH and shape.n_samples > 0:  # the batch by _glyph_batch, the rate by _LR_AT_BATCH
        b = _glyph_batch(method, shape.n_samples)
        out["train"] = {"batch_size": b}
        out["optim"] = {**out["optim"], "lr": round(_LR_AT_BATCH[method](b), 6)}
    for section, values in _GLYPH_METHOD.get(method, {}).items():  # sections are flat dicts here
        out[section] = {**out.get(section, {}), **values}
    return out


def describe(kind: str, shape: DataShape) -> str:
    """One log line: the kind and why."""
    what = (f"{shape.n_features}-d feature vectors" if shape.n_features else
            f"{'grayscale' if shape.channels == 1 else 'RGB'} images of {shape.size} px")
    return f"defaults for {kind} data ({what}, {shape.n_samples:,} samples; README 'Defaults by data kind')"
