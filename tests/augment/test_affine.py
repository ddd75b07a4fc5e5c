"""``ops.random_affine`` (the glyph preset's small affine moves) against scipy.ndimage, and
the config fields that drive it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from deepclust.augment import Augment, AugmentConfig, ops
from deepclust.errors import ConfigError


def _reference(img: np.ndarray, u: np.ndarray, degrees: float, translate: float, shear: float) -> np.ndarray:
    """One (H, W) image moved by the transform the five uniforms u describe, via scipy.

    Forward map in pixel coordinates about the centre c: q = R(a) S(s) (p - c) + c + t, with
    R the rotation, S = [[1, tan s], [0, 1]] the shear along x and t = (tx, ty) the shift in
    pixels; scipy wants the inverse, output -> input, in (row, col) order."""
    h, w = img.shape
    a = math.radians((2 * u[0] - 1) * degrees)
    s = math.tan(math.radians((2 * u[1] - 1) * shear))
    t = np.array([(2 * u[2] - 1) * translate * w, (2 * u[3] - 1) * translate * h])  # (x, y) pixels
    rs = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ np.array([[1, s], [0, 1]])
    inv_xy = np.linalg.inv(rs)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    swap = np.array([[0, 1], [1, 0]])
    inv_rc = swap @ inv_xy @ swap
    offset_rc = swap @ (c - inv_xy @ (c + t))
    return ndimage.affine_transform(img, inv_rc, offset=offset_rc, order=1, mode="grid-constant", cval=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_affine_matches_scipy(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 16, 16, generator=g)
    degrees, translate, shear = 15.0, 0.1, 8.0
    out = ops.random_affine(x, degrees, translate, shear, p=1.0, generator=torch.Generator().manual_seed(99))
    u = torch.rand((6, 5), generator=torch.Generator().manual_seed(99)).numpy()  # the draws it made
    for i in range(6):
        ref = _reference(x[i, 0].double().numpy(), u[i].astype(np.float64), degrees, translate, shear)
        np.testing.assert_allclose(out[i, 0].numpy(), ref, atol=1e-4)


def test_random_affine_probability_and_identity() -> None:
    x = torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ops.random_affine(x, 10, 0.1, 5, p=0.0, generator=torch.Generator().manual_seed(1)), x)
    same = ops.random_affine(x, 0.0, 0.0, 0.0, p=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    half = ops.random_affine(x, 10, 0.1, 5, p=0.5, generator=torch.Generator().manual_seed(1))
    moved = (half - x).flatten(1).abs().amax(1) > 1e-6
    assert 16 < int(moved.sum()) < 48  # about half of 64 moved


def test_augment_applies_affine_and_checks_fields() -> None:
    cfg = AugmentConfig(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        jitter=(0, 0, 0, 0),
        jitter_p=0.0,
        grayscale_p=0.0,
        affine_p=1.0,
        affine_degrees=20.0,
    )
    x = (torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    aug = Augment(cfg, 16, None, None)
    plain = Augment(
        AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter=(0, 0, 0, 0), jitter_p=0.0, grayscale_p=0.0),
        16,
        None,
        None,
    )
    assert not torch.allclose(aug(x, torch.Generator().manual_seed(3)), plain(x, torch.Generator().manual_seed(3)))
    for bad in ({"affine_p": 1.5}, {"affine_degrees": -1.0}, {"affine_translate": 0.9}, {"affine_shear": "x"}):
        with pytest.raises(ConfigError, match="affine"):
            AugmentConfig(**bad)
