"""Backbones: output sizes, stems, and the stem layout of spec/idfd.md section 4."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepclust.errors import ConfigError
from deepclust.models import create_backbone, list_backbones


@pytest.mark.parametrize(
    "name,stem,size,dim",
    [
        ("resnet18", "cifar", 32, 512),
        ("resnet34", "cifar", 32, 512),
        ("resnet50", "cifar", 32, 2048),
        ("resnet18", "stl", 96, 512),
        ("resnet18", "imagenet", 64, 512),
    ],
)
def test_resnet_shapes(name: str, stem: str, size: int, dim: int) -> None:
    net = create_backbone(name, 3, stem).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim) and net.out_dim == dim


def test_cifar_stem_is_3x3_stride1_without_maxpool() -> None:
    net = create_backbone("resnet18", 3, "cifar").net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.bias is None
    assert isinstance(net.maxpool, nn.Identity)
    stl = create_backbone("resnet18", 3, "stl").net
    assert isinstance(stl.maxpool, nn.MaxPool2d) and stl.maxpool.kernel_size == 2
    # 96 -> 49 after the stl max-pool (kernel 2, stride 2, padding 1), as in secu.md section 8.
    assert stl.maxpool(torch.zeros(1, 1, 96, 96)).shape[-1] == 49


@pytest.mark.parametrize("size", [8, 16, 28])
def test_small_cnn_grayscale(size: int) -> None:
    net = create_backbone("small_cnn", 1)
    assert net(torch.randn(3, 1, size, size)).shape == (3, net.out_dim)


def test_unknown_backbone_suggests() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        create_backbone("resnet81", 3)
    assert "small_cnn" in list_backbones()


@pytest.mark.parametrize(
    "method,rule", [("secu", "kaiming"), ("anchorcl", "kaiming"), ("idfd", "default"), ("cdc", "default")]
)
def test_stem_initialisation_is_per_method(method: str, rule: str) -> None:
    """SCAN's and SeCu's ResNets Kaiming-initialise the replaced 3x3 stem (normal, fan-out:
    std sqrt(2 / (64 * 9))); IDFD's code keeps PyTorch's Conv2d default (uniform with bound
    1 / sqrt(fan_in) = 1 / sqrt(27), std 1 / sqrt(81))."""
    from deepclust.config import resolve_config
    from deepclust.methods import DataInfo, create_method

    torch.manual_seed(0)
    cfg = resolve_config(
        {
            "method": method,
            "n_clusters": 10,
            "model": {"backbone": "resnet18", "stem": "cifar"},
            "method_args": {"n_heads": 1} if method == "secu" else {},
        }
    )
    info = DataInfo(n_samples=64, n_channels=3, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, n_clusters=10)
    w = create_method(cfg, info).backbone.net.conv1.weight.detach().flatten()
    assert w.numel() == 64 * 27
    if rule == "kaiming":
        assert float(w.std()) == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.08)
        assert float(w.abs().max()) > 27**-0.5  # a normal's tails pass the uniform bound
    else:
        assert float(w.abs().max()) <= 27**-0.5 and float(w.std()) == pytest.approx(81**-0.5, rel=0.08)
