"""Defaults by data kind: what a run without a dataset config gets (``defaults: auto``).

A shipped or paper config says ``defaults: method`` (the digits and Fashion-MNIST configs:
``defaults: glyph``) and keeps exactly its own values over the method's defaults
(``METHOD.defaults()``, the CIFAR recipes of the papers). A run given only a dataset
(``deepclust train --method M --data npz:... --n-clusters K``, a user YAML without
``defaults``, the scikit-learn estimator) gets ``defaults: auto``: the data is peeked at
(:func:`deepclust.data.peek`, headers only) and classified, and that kind's preset is merged
between the method's defaults and the run's own values, so anything the run sets still wins.

The rule (docs/configs.md, "Defaults by data kind"):

- **features**: (N, D) vectors. The MLP; noise + dropout views (augment/features.py); cosine
  schedule. Nothing image-specific applies.
- **glyph**: one channel and a native side <= 32 px (digits, USPS, MNIST, Fashion-MNIST,
  letters). Small CNN of width 32 at an input side of 16 px (larger glyphs are resized down);
  views without a horizontal flip or colour jitter beyond brightness/contrast, gentle crops
  (scale [0.5, 1], ratio [0.8, 1.25]) and small affine moves (p 0.5: up to 10 degrees, 5
  degrees of shear, 10 % shift); a cosine schedule; per method the optimiser and the few
  settings that fail on such data, declared by the method itself (``glyph_preset``,
  ``glyph_batch`` on :class:`deepclust.methods.ClusteringMethod`), such as gentle stroke-width
  views (``augment.THICKEN_HALF``).
- **natural**: everything else (RGB, or grayscale above 32 px). The method's own SimCLR-style
  views and backbone choice (models.auto_backbone: ResNet-18 with the stem for the size), a
  cosine schedule.

``defaults`` may also name a kind (``glyph``, ``natural``, ``features``) to force it; the
resolved config stores the kind that was applied, so a run directory says which it was.
"""

from __future__ import annotations

from typing import Any

from deepclust.data.peek import DataShape
from deepclust.methods import get_method_class

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


def data_kind(shape: DataShape) -> str:
    """``features`` for vectors, ``glyph`` for one channel at <= 32 px, else ``natural``."""
    if shape.n_features > 0:
        return "features"
    if shape.channels == 1 and shape.size <= 32:
        return "glyph"
    return "natural"


def kind_defaults(method: str, kind: str, shape: DataShape) -> dict[str, Any]:
    """The preset (a nested config dict) of ``kind`` for ``method`` on data of ``shape``.

    On glyph data the method's own declarations complete the shared preset:
    ``ClusteringMethod.glyph_batch`` (the batch and rate by the data's size) and
    ``ClusteringMethod.glyph_preset`` (its settings, merged section by section last).
    """
    if kind in ("features", "natural"):  # the method's own views and backbone rule
        return {"optim": {"schedule": "cosine"}}
    if kind != "glyph":
        raise ValueError(f"unknown data kind {kind!r}; one of {', '.join(KINDS)}")
    cls = get_method_class(method)
    # Every glyph at 16 px, width 32: on the Fashion-MNIST draw (28 px) every method's worst seed
    # rose over 28 px at width 16 for about the same CPU time, and over 28 px at width 32 where
    # that was tried too (docs/explorations.md, "The glyph preset").
    out: dict[str, Any] = {
        "data": {"image_size": 16},
        "model": {"backbone": "small_cnn", "feature_dim": 128, "width": 32},
        "optim": {"schedule": "cosine"},
        "augment": dict(_GLYPH_AUGMENT),
    }
    batch = cls.glyph_batch(shape.n_samples) if shape.n_samples > 0 else None
    if batch is not None:
        b, lr = batch
        out["train"] = {"batch_size": b}
        out["optim"] = {**out["optim"], "lr": round(lr, 6)}
    for section, values in cls.glyph_preset.items():  # sections are flat dicts here
        out[section] = {**out.get(section, {}), **values}
    return out


def describe(kind: str, shape: DataShape) -> str:
    """One log line: the kind and why."""
    what = (
        f"{shape.n_features}-d feature vectors"
        if shape.n_features
        else f"{'grayscale' if shape.channels == 1 else 'RGB'} images of {shape.size} px"
    )
    return f"defaults for {kind} data ({what}, {shape.n_samples:,} samples; docs/configs.md)"
