"""Defaults by data kind: what a run without a dataset config gets (``defaults: auto``).

A shipped or paper config says ``defaults: method`` and keeps exactly its own values over the
method's defaults (``METHOD.defaults()``, the CIFAR recipes of the papers). A run given only a
dataset (``deepclust train --method M --data npz:... --n-clusters K``, a user YAML without
``defaults``, the scikit-learn estimator) gets ``defaults: auto``: the data is peeked at
(:func:`deepclust.data.peek`, headers only) and classified, and that kind's preset is merged
between the method's defaults and the run's own values, so anything the run sets still wins.

The rule (README "Defaults by data kind"):

- **features**: (N, D) vectors. The MLP; noise + dropout views (augment/features.py); cosine
  schedule. Nothing image-specific applies.
- **glyph**: one channel and a native side <= 32 px (digits, USPS, MNIST, Fashion-MNIST,
  letters). Small CNN; input side max(16, native); views without a horizontal flip or colour
  jitter beyond brightness/contrast, gentle crops (scale [0.5, 1], ratio [0.8, 1.25]) and
  small affine moves (p 0.5: up to 10 degrees, 5 degrees of shear, 10 % shift); a cosine
  schedule; per method the optimiser and the few settings that fail on such data (below).
- **natural**: everything else (RGB, or grayscale above 32 px). The method's own SimCLR-style
  views and backbone choice (models.auto_backbone: ResNet-18 with the stem for the size), a
  cosine schedule.

``defaults`` may also name a kind (``glyph``, ``natural``, ``features``) to force it; the
resolved config stores the kind that was applied, so a run directory says which it was.
"""

from __future__ import annotations

import logging
from typing import Any

from deepclust.data.peek import DataShape

__all__ = ["DEFAULTS_CHOICES", "KINDS", "data_kind", "kind_defaults"]

log = logging.getLogger(__name__)

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

# Per method on glyph data (library choices, measured in benchmarks/quality_matrix.py):
_GLYPH_METHOD: dict[str, dict[str, Any]] = {
    "idfd": {
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "train": {"batch_size": 128},
    },
    "secu": {
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "warmup_epochs": 3},
        "train": {"batch_size": 128},
        "augment": {"blur_sigma": [0.1, 1.0]},
        "method_args": {"n_heads": 3},
    },
    "cdc": {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        "train": {"batch_size": 256},
    },
    "anchorcl": {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        "train": {"batch_size": 128},
    },
}


def data_kind(shape: DataShape) -> str:
    """``features`` for vectors, ``glyph`` for one channel at <= 32 px, else ``natural``."""
    if shape.n_features > 0:
        return "features"
    if shape.channels == 1 and shape.size <= 32:
        return "glyph"
    return "natural"


def kind_defaults(method: str, kind: str, shape: DataShape) -> dict[str, Any]:
    """The preset (a nested config dict) of ``kind`` for ``method`` on data of ``shape``."""
    if kind == "features":
        return {"optim": {"schedule": "cosine"}}
    if kind == "natural":
        return {"optim": {"schedule": "cosine"}}
    if kind != "glyph":
        raise ValueError(f"unknown data kind {kind!r}; one of {', '.join(KINDS)}")
    out: dict[str, Any] = {
        "model": {"backbone": "small_cnn", "feature_dim": 128},
        "optim": {"schedule": "cosine"},
        "augment": dict(_GLYPH_AUGMENT),
    }
    if shape.size > 0:  # size 0: unknown (a saved config that states every value)
        size = max(16, shape.size)
        out["data"] = {"image_size": size}
        out["model"]["width"] = 32 if size <= 16 else 16  # the CPU cost of 28 px at width 32 is 3x
    for section, values in _GLYPH_METHOD.get(method, {}).items():  # sections are flat dicts here
        out[section] = {**out.get(section, {}), **values}
    return out


def describe(kind: str, shape: DataShape) -> str:
    """One log line: the kind and why."""
    what = (f"{shape.n_features}-d feature vectors" if shape.n_features else
            f"{'grayscale' if shape.channels == 1 else 'RGB'} images of {shape.size} px")
    return f"defaults for {kind} data ({what}, {shape.n_samples:,} samples; README 'Defaults by data kind')"
