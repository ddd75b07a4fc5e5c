"""Backbones: ResNet-18/34/50 with cifar / stl / imagenet stems, a small CNN, an MLP.

Every backbone maps images (B, C, H, W) to features (B, out_dim) and exposes ``out_dim``.
The ResNets are torchvision's (Kaiming-normal fan-out convolutions, BN weight 1 / bias 0,
no zero-init of the last BN), with the stem swapped:

- ``cifar``: 3x3 stride-1 convolution, BN, ReLU, no max-pool (32-px images; IDFD, SeCu);
- ``stl``: as cifar, then MaxPool(2, 2, padding 1) (96-px images; SeCu's STL-10 variant);
- ``imagenet``: torchvision's 7x7 stride-2 convolution and 3x3 max-pool (224-px images).

The replaced stem convolution's initialisation is per method (``stem_init``): "default"
keeps PyTorch's Conv2d default (kaiming-uniform, a = sqrt(5)), as IDFD's reference code
(idfd.md section 4); "kaiming" gives it the same Kaiming-normal fan-out init as every other
convolution, as SCAN's and SeCu's ResNets (secu.md section 8) and torchvision's own stem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from deepclust.errors import ConfigError

_RESNETS: dict[str, Callable[..., tvm.ResNet]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
}
STEMS = ("cifar", "stl", "imagenet")
STEM_INITS = ("default", "kaiming")


class Backbone(nn.Module):
    """What every backbone is: ``forward`` maps inputs to (B, out_dim) features."""

    #: the width of the features ``forward`` returns
    out_dim: int


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier, with a configurable stem."""

    def __init__(
        self, arch: str = "resnet18", stem: str = "cifar", in_channels: int = 3, stem_init: str = "default"
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"unknown stem '{stem}'; choose one of {', '.join(STEMS)}")
        if stem_init not in STEM_INITS:
            raise ConfigError(f"unknown stem_init '{stem_init}'; choose one of {', '.join(STEM_INITS)}")
        net = _RESNETS[arch](weights=None)
        if stem in ("cifar", "stl"):
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.MaxPool2d(2, 2, padding=1) if stem == "stl" else nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if stem_init == "kaiming":  # torchvision's rule for every other convolution
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.out_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(Backbone):
    """A VGG-style CNN for small images (8x8 digits, 28x28 MNIST-like data).

    Three stages of two 3x3 conv-BN-ReLU layers (widths w, 2w, 4w); 2x2 max-pool after the
    first two stages while the map is at least 4 px wide; global average pooling.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stage1 = nn.Sequential(*_conv_bn_relu(in_channels, w), *_conv_bn_relu(w, w))
        self.stage2 = nn.Sequential(*_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w))
        self.stage3 = nn.Sequential(*_conv_bn_relu(2 * w, 4 * w), *_conv_bn_relu(4 * w, 4 * w))
        self.out_dim: int = 4 * w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(x, 2) if x.shape[-1] >= 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pool(self.stage1(x))
        x = self._pool(self.stage2(x))
        x = self.stage3(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class MLPBackbone(Backbone):
    """An MLP for precomputed feature vectors (B, D): Linear-BN-ReLU blocks."""

    def __init__(self, in_dim: int, hidden: int = 512, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            d = hidden
        self.net = nn.Sequential(*layers)
        self.out_dim: int = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def list_backbones() -> list[str]:
    return sorted([*_RESNETS, "small_cnn", "mlp"])


def auto_backbone(image_size: int, channels: int, n_features: int = 0) -> tuple[str, str]:
    """The default (backbone, stem) for an image size: small CNN for small grayscale images.

    ``n_features`` > 0 means feature vectors of that length instead of images: the MLP
    (stem "none": an MLP has no stem)."""
    if n_features > 0:
        return "mlp", "none"
    if channels == 1 and image_size <= 32:
        return "small_cnn", "cifar"
    if image_size <= 48:
        return "resnet18", "cifar"
    if image_size <= 128:
        return "resnet18", "stl"
    return "resnet18", "imagenet"


def resolve_model(model: Any, info: Any) -> tuple[str, str]:
    """The concrete (backbone, stem) of ``model`` (a ModelConfig: ``auto`` names replaced by
    :func:`auto_backbone`'s choice for ``info``, a DataInfo). The one place the rule is applied."""
    name, stem = auto_backbone(info.image_size, info.n_channels, info.n_features)
    return (name if model.backbone == "auto" else model.backbone, stem if model.stem == "auto" else model.stem)


def create_backbone(
    name: str,
    in_channels: int,
    stem: str = "cifar",
    in_dim: int | None = None,
    width: int = 32,
    stem_init: str = "default",
) -> Backbone:
    """Build a backbone by name (see :func:`list_backbones`). ``in_dim``: the input length of
    the MLP (feature dimension D, or C x H x W for flattened images). ``stem_init``: the ResNet
    stem's initialisation ("default" or "kaiming"; see the module docstring)."""
    if name in _RESNETS:
        return ResNetBackbone(name, stem, in_channels, stem_init)
    if name == "small_cnn":
        return SmallCNN(in_channels, width)
    if name == "mlp":
        if in_dim is None:
            raise ConfigError("the mlp backbone needs feature vectors as input")
        return MLPBackbone(in_dim)
    import difflib

    close = difflib.get_close_matches(name, list_backbones(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown backbone '{name}'{hint} (choose from {', '.join(list_backbones())})")
