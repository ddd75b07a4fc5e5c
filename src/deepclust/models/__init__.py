"""Backbones and heads."""

from deepclust.models.backbones import (
    Backbone,
    MLPBackbone,
    ResNetBackbone,
    SmallCNN,
    auto_backbone,
    create_backbone,
    list_backbones,
    resolve_model,
)
from deepclust.models.heads import NormalizedLinear, mlp_projector

__all__ = [
    "Backbone",
    "MLPBackbone",
    "NormalizedLinear",
    "ResNetBackbone",
    "SmallCNN",
    "auto_backbone",
    "create_backbone",
    "list_backbones",
    "mlp_projector",
    "resolve_model",
]
