"""Backbones: output sizes, stems, and the stem layout of spec/idfd.md section 4."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepclust.errors import ConfigError
from deepclust.models import create_backbone, list_backbones


@pytest.mark.parametrize(
    "name,stem,size,dim",
    [("resnet18", "cifar", 32, 512), ("resnet34", "cifar", 32, 512), ("resnet50", "cifar", 32, 2048),
     ("resnet18", "stl", 96, 512), ("resnet18", "imagenet", 64, 512)],
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
