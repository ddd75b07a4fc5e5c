"""``ops.random_stroke`` (an opt-in stroke-width view for glyph-like data) against scipy.ndimage's grey-level
dilation and erosion, and its config keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from deepclust.augment import ops
from deepclust.augment.pipeline import Augment, AugmentConfig
from deepclust.errors import ConfigError


def _reference(x: np.ndarray, u: np.ndarray, strength: float, p: float, thin: float) -> np.ndarray:
    """x + t (M(x) - x) per sample, M from scipy (mode 'nearest' equals ignoring the outside
    for a 3x3 max / min filter), t = u2 * strength where u0 < p. M thins where u1 < thin and
    thickens otherwise; thickening is dilation unless the border is brighter than the image
    (dark strokes on a bright page), where it is erosion."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        img = x[i, 0]
        ring = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bright_page = ring.mean() > img.mean()
        thicken = u[i, 1] >= thin
        if thicken != bright_page:
            m = ndimage.grey_dilation(img, size=(3, 3), mode="nearest")
        else:
            m = ndimage.grey_erosion(img, size=(3, 3), mode="nearest")
        t = u[i, 2] * strength if u[i, 0] < p else 0.0
        out[i, 0] = img + t * (m - img)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strength,p,thin", [(1.0, 1.0, 0.5), (0.6, 0.5, 0.5), (1.0, 1.0, 0.0), (0.8, 0.7, 0.3)])
def test_random_stroke_matches_scipy(seed: int, strength: float, p: float, thin: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 1, 12, 10, generator=g)
    x[:4] = x[:4] * 0.3  # dark pages with a bright blot
    x[:4, :, 3:9, 3:7] = 1.0
    x[4:, :, 3:9, 3:7] = 0.0  # bright pages with a dark blot
    x[4:, :, :3] = x[4:, :, :3] * 0.2 + 0.8
    x[4:, :, -3:] = x[4:, :, -3:] * 0.2 + 0.8
    ring = torch.cat((x[:, 0, 0], x[:, 0, -1], x[:, 0, :, 0], x[:, 0, :, -1]), dim=1).mean(dim=1)
    assert (ring > x.mean(dim=(1, 2, 3))).tolist() == [False] * 4 + [True] * 4  # both polarities
    out = ops.random_stroke(x, strength, p, generator=torch.Generator().manual_seed(7), thin=thin)
    u = torch.rand((8, 3), generator=torch.Generator().manual_seed(7)).numpy()  # the op's own draws
    ref = _reference(x.numpy(), u, strength, p, thin)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("dark_on_bright", [False, True])
def test_random_stroke_thickens_and_thins_a_bar(dark_on_bright: bool) -> None:
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, :, 4] = 1.0  # a one-pixel vertical stroke
    if dark_on_bright:
        x = 1.0 - x

    def ink(img: torch.Tensor) -> torch.Tensor:
        return ((1.0 - img) if dark_on_bright else img).sum(dim=(1, 2, 3))

    out = ops.random_stroke(x, 1.0, 1.0, generator=torch.Generator().manual_seed(3))
    assert (ink(out) > 9.0 + 1e-6).any() and (ink(out) < 9.0 - 1e-6).any()  # both directions happen
    assert out.min() >= 0.0 and out.max() <= 1.0
    # nothing changes two columns away from the stroke
    assert torch.equal(out[:, :, :, :3], x[:, :, :, :3]) and torch.equal(out[:, :, :, 6:], x[:, :, :, 6:])
    # thin=0 only thickens, thin=1 only thins, whichever the polarity
    thick = ops.random_stroke(x, 1.0, 1.0, generator=torch.Generator().manual_seed(3), thin=0.0)
    thinned = ops.random_stroke(x, 1.0, 1.0, generator=torch.Generator().manual_seed(3), thin=1.0)
    assert (ink(thick) >= 9.0 - 1e-5).all() and (ink(thick) > 9.0 + 1e-3).any()
    assert (ink(thinned) <= 9.0 + 1e-5).all() and (ink(thinned) < 9.0 - 1e-3).any()


def test_random_stroke_off_is_identity_and_in_the_pipeline() -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ops.random_stroke(x, 1.0, 0.0, generator=torch.Generator().manual_seed(1)), x)
    imgs = (torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    base = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0)
    plain = Augment(AugmentConfig(**base), 16, None, None)(imgs, torch.Generator().manual_seed(5))
    stroked = Augment(AugmentConfig(**base, stroke_p=1.0), 16, None, None)(imgs, torch.Generator().manual_seed(5))
    assert not torch.allclose(plain, stroked)


@pytest.mark.parametrize(
    "bad",
    [
        {"stroke_p": 1.5},
        {"stroke_p": -0.1},
        {"stroke_strength": 2.0},
        {"stroke_strength": "x"},
        {"stroke_thin": -0.5},
        {"stroke_thin": 1.1},
    ],
)
def test_stroke_config_is_checked(bad: dict) -> None:
    with pytest.raises(ConfigError, match="stroke_"):
        AugmentConfig(**bad)
