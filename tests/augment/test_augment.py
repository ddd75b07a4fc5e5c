"""Batched augmentation against torchvision's (and PIL's) per-image transforms.

The references are torchvision/PIL applied image by image, never this package's own output,
so a wrong formula, a wrong op order or a shared-per-batch parameter makes a test fail.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats
from torchvision.transforms import InterpolationMode

from deepclust.augment import (
    RAND_AUGMENT_OPS,
    Augment,
    AugmentConfig,
    EvalTransform,
    JitterParams,
    StrongAugment,
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
)
from deepclust.errors import ConfigError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def rand_images(b: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] with some smooth structure (not just noise)."""
    g = gen(seed)
    low = torch.rand(b, c, max(h // 4, 1), max(w // 4, 1), generator=g)
    smooth = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (0.7 * smooth + 0.3 * torch.rand(b, c, h, w, generator=g)).clamp(0, 1)


def uint8_images(b: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return (rand_images(b, c, h, w, seed) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------------------ crop boxes


def _torchvision_boxes(n: int, h: int, w: int, scale, ratio, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    img = torch.zeros(1, h, w)
    return np.array([T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


@pytest.mark.parametrize(
    "h, w, scale",
    [(32, 32, (0.2, 1.0)), (8, 8, (0.08, 1.0)), (12, 40, (0.5, 1.0))],  # last: many fallbacks
)
def test_crop_box_distribution_matches_torchvision(h, w, scale):
    n, ratio = 3000, (3 / 4, 4 / 3)
    top, left, bh, bw = (t.numpy() for t in sample_crop_boxes(n, h, w, scale, ratio, gen(1)))
    ref = _torchvision_boxes(n, h, w, scale, ratio, seed=2)
    ours = {"area": bh * bw / (h * w), "logratio": np.log(bw / bh), "top": top, "left": left, "h": bh, "w": bw}
    theirs = {
        "area": ref[:, 2] * ref[:, 3] / (h * w),
        "logratio": np.log(ref[:, 3] / ref[:, 2]),
        "top": ref[:, 0],
        "left": ref[:, 1],
        "h": ref[:, 2],
        "w": ref[:, 3],
    }
    for key in ours:
        res = stats.ks_2samp(ours[key], theirs[key])
        assert res.pvalue > 1e-3, (key, res)
        assert abs(ours[key].mean() - theirs[key].mean()) < 0.1 * (theirs[key].std() + 1e-9) + 1e-9, key
    for q in (0.1, 0.5, 0.9):
        assert abs(np.quantile(ours["area"], q) - np.quantile(theirs["area"], q)) < 0.05
    # every box lies inside the image
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    assert (bh > 0).all() and (bw > 0).all()


def test_crop_box_fallback_is_torchvision_centre_crop():
    # An 8x64 image with scale near 1 can never fit the ratio: every box is the fallback.
    h, w, scale, ratio = 8, 64, (0.95, 1.0), (3 / 4, 4 / 3)
    ref = _torchvision_boxes(50, h, w, scale, ratio, seed=0)
    assert (ref == ref[0]).all()
    top, left, bh, bw = sample_crop_boxes(50, h, w, scale, ratio, gen(0))
    assert torch.equal(torch.stack([top, left, bh, bw], 1), torch.as_tensor(ref).expand(50, 4).long())


def test_crop_boxes_differ_within_batch():
    top, left, bh, bw = sample_crop_boxes(64, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), gen(0))
    boxes = {tuple(b) for b in torch.stack([top, left, bh, bw], 1).tolist()}
    assert len(boxes) > 50


@pytest.mark.parametrize("size", [24, 32, 48])
def test_crop_resize_equals_torchvision_resized_crop(size):
    x = rand_images(6, 3, 32, 32)
    boxes = torch.tensor(
        [[0, 0, 32, 32], [3, 5, 10, 20], [20, 1, 12, 9], [0, 31, 32, 1], [7, 7, 25, 25], [31, 0, 1, 32]]
    )
    out = crop_resize(x, boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], size)
    assert out.shape == (6, 3, size, size)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(x[i], t, l, h, w, [size, size], InterpolationMode.BILINEAR, antialias=False)
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=0)


def test_random_resized_crop_boxes_and_pixels_agree():
    # same generator state -> the resampled output is exactly the crop of the sampled boxes
    x = rand_images(5)
    boxes = sample_crop_boxes(5, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), gen(3))
    out = random_resized_crop(x, 16, (0.2, 1.0), (3 / 4, 4 / 3), gen(3))
    for i in range(5):
        t, l, h, w = (int(b[i]) for b in boxes)
        ref = TF.resized_crop(x[i], t, l, h, w, [16, 16], InterpolationMode.BILINEAR, antialias=False)
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ colour ops


@pytest.mark.parametrize(
    "ours, theirs, factors, atol",
    [
        (adjust_brightness, TF.adjust_brightness, [0.0, 0.6, 1.0, 1.4, 2.5], 1e-6),
        (adjust_contrast, TF.adjust_contrast, [0.0, 0.6, 1.0, 1.4, 2.5], 1e-3),
        (adjust_saturation, TF.adjust_saturation, [0.0, 0.6, 1.0, 1.4, 2.5], 1e-3),
        (adjust_hue, TF.adjust_hue, [-0.5, -0.1, 0.0, 0.23, 0.5], 1e-4),
    ],
    ids=["brightness", "contrast", "saturation", "hue"],
)
def test_colour_ops_equal_torchvision(ours, theirs, factors, atol):
    x = rand_images(len(factors), seed=4)
    out = ours(x, torch.tensor(factors))  # one factor per sample, one call
    for i, f in enumerate(factors):
        torch.testing.assert_close(out[i], theirs(x[i], f), atol=atol, rtol=0)


def test_colour_ops_on_grayscale_images():
    x = rand_images(3, c=1, seed=5)
    for i, f in enumerate([0.5, 1.3, 2.0]):
        torch.testing.assert_close(adjust_contrast(x, f)[i], TF.adjust_contrast(x[i], f), atol=1e-5, rtol=0)
        torch.testing.assert_close(adjust_brightness(x, f)[i], TF.adjust_brightness(x[i], f), atol=1e-6, rtol=0)
    assert torch.equal(adjust_saturation(x, 0.3), x) and torch.equal(adjust_hue(x, 0.2), x)


def test_grayscale_solarize_flip_equal_torchvision():
    x = rand_images(4, seed=6)
    torch.testing.assert_close(rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-3, rtol=0)
    gray = random_grayscale(x, p=1.0, generator=gen())
    torch.testing.assert_close(gray, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-3, rtol=0)
    assert torch.equal(solarize(x, p=1.0, threshold=0.5, generator=gen()), TF.solarize(x, 0.5))
    assert torch.equal(random_hflip(x, p=1.0, generator=gen()), TF.hflip(x))
    m, s = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    torch.testing.assert_close(normalize(x, m, s), TF.normalize(x, m, s))
    # uint8 PIL semantics: solarize(128) on k/255 images
    xu = uint8_images(4, seed=7)
    ref = TF.solarize(xu, 128).float() / 255
    torch.testing.assert_close(
        solarize(xu.float() / 255, p=1.0, threshold=0.5, generator=gen()), ref, atol=1e-6, rtol=0
    )


def _torchvision_jitter(img: torch.Tensor, order, f) -> torch.Tensor:
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for j in order:
        img = fns[j](img, float(f[j]))
    return img


def test_color_jitter_per_sample_order_and_factors_equal_torchvision():
    x = rand_images(24, seed=8)
    params = sample_jitter_params(24, 0.8, 0.8, 0.8, 0.2, p=0.7, generator=gen(9))
    out = apply_color_jitter(x, params)
    for i in range(24):
        ref = _torchvision_jitter(x[i], params.order[i].tolist(), params.factors[i].tolist())
        torch.testing.assert_close(out[i], ref, atol=2e-3, rtol=0)
    # a sample that was not applied is left exactly as it was
    off = ~params.applied
    assert off.any() and torch.equal(out[off], x[off])


def test_jitter_order_changes_the_result():
    x = rand_images(1, seed=10).expand(2, -1, -1, -1)
    f = torch.tensor([[1.7, 0.3, 1.0, 0.0]]).expand(2, 4)
    order = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]])
    out = apply_color_jitter(x, JitterParams(order, f, torch.ones(2, dtype=torch.bool)))
    assert (out[0] - out[1]).abs().max() > 0.05  # clamping makes brightness/contrast not commute
    for i in range(2):
        ref = _torchvision_jitter(x[i], order[i].tolist(), f[i])
        torch.testing.assert_close(out[i], ref, atol=2e-3, rtol=0)


def test_jitter_orders_are_uniform_random_permutations():
    n = 4800
    params = sample_jitter_params(n, 0.4, 0.4, 0.4, 0.1, p=1.0, generator=gen(11))
    counts = {p: 0 for p in itertools.permutations(range(4))}
    for row in params.order.tolist():
        counts[tuple(row)] += 1
    assert all(c > 0 for c in counts.values())  # all 24 orders occur
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3
    # factor distributions: U[0.6, 1.4] for b, c, s and U[-0.1, 0.1] for hue
    for j, (lo, hi) in enumerate([(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
        f = params.factors[:, j].numpy()
        assert stats.kstest(f, "uniform", args=(lo, hi - lo)).pvalue > 1e-3
    # brightness 0.0 means 'off': factor exactly 1; and max(0, 1 - v) clips the low end
    p2 = sample_jitter_params(500, 0.0, 1.5, 0.4, 0.0, generator=gen(12))
    assert (p2.factors[:, 0] == 1).all() and (p2.factors[:, 3] == 0).all()
    assert p2.factors[:, 1].min() >= 0 and p2.factors[:, 1].min() < 0.1


def test_identical_images_get_different_jitter():
    x = rand_images(1, seed=13).expand(32, -1, -1, -1).contiguous()
    out = color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=1.0, generator=gen(14))
    flat = out.flatten(1)
    dist = torch.cdist(flat, flat) + torch.eye(32) * 1e9
    assert dist.min() > 1e-3


# ------------------------------------------------------------------------------ blur


def test_gaussian_blur_equals_torchvision_per_sample_sigma():
    x = rand_images(4, seed=15)
    sigmas = torch.tensor([0.1, 0.7, 1.3, 2.0])
    out = blur(x, sigmas, kernel_size=13)
    for i, s in enumerate(sigmas.tolist()):
        ref = TF.gaussian_blur(x[i], kernel_size=[13, 13], sigma=[s, s])
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
    # the random version with a degenerate range is the same blur, and p = 0 is the identity
    same = gaussian_blur(x, (1.3, 1.3), p=1.0, generator=gen(), kernel_size=13)
    torch.testing.assert_close(same[2], out[2], atol=1e-6, rtol=0)
    assert torch.equal(gaussian_blur(x, (0.1, 2.0), p=0.0, generator=gen()), x)
    # SimCLR's kernel 23 on a bigger image
    y = rand_images(2, h=48, w=48, seed=16)
    out = blur(y, torch.tensor([0.5, 2.0]), kernel_size=23)
    ref = TF.gaussian_blur(y[1], kernel_size=[23, 23], sigma=[2.0, 2.0])
    torch.testing.assert_close(out[1], ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ probabilities


def test_probabilities_are_respected():
    n = 4000
    x = rand_images(n, h=4, w=4, seed=17)
    tol = 4 * math.sqrt(0.25 / n)  # four standard deviations at worst
    g = gen(18)
    gray = random_grayscale(x, 0.2, g)
    frac = ((gray[:, 0] == gray[:, 1]) & (gray[:, 1] == gray[:, 2])).flatten(1).all(1).float().mean()
    assert abs(frac.item() - 0.2) < tol
    flipped = random_hflip(x, 0.5, g)
    frac = (flipped != x).flatten(1).any(1).float().mean()
    assert abs(frac.item() - 0.5) < tol
    sol = solarize(x, 0.3, 0.5, g)
    frac = (sol != x).flatten(1).any(1).float().mean()
    assert abs(frac.item() - 0.3) < tol
    blurred = gaussian_blur(x, (0.5, 1.0), 0.1, g)
    frac = (blurred != x).flatten(1).any(1).float().mean()
    assert abs(frac.item() - 0.1) < tol
    jit = color_jitter(x, 0.4, 0.4, 0.4, 0.0, p=0.8, generator=g)
    frac = (jit != x).flatten(1).any(1).float().mean()
    assert abs(frac.item() - 0.8) < tol


# ------------------------------------------------------------------------------ pipelines


def test_augment_shapes_dtypes_and_per_sample_randomness():
    x = uint8_images(1, seed=19).expand(16, -1, -1, -1).contiguous()
    aug = Augment(AugmentConfig(), 24, CIFAR_MEAN, CIFAR_STD)
    out = aug(x, gen(20))
    assert out.shape == (16, 3, 24, 24) and out.dtype == torch.float32
    flat = out.flatten(1)
    assert (torch.cdist(flat, flat) + torch.eye(16) * 1e9).min() > 1e-3
    assert list(aug.state_dict()) == []  # mean/std are not checkpoint state


def test_augment_same_seed_same_output_and_cpu_device():
    x = uint8_images(8, seed=21).to("cpu")
    cfg = AugmentConfig(
        crop_scale=[0.3, 1.0], jitter=[0.4, 0.4, 0.2, 0.1], jitter_p=0.8, flip_p=0.5, blur_p=0.5, solarize_p=0.2
    )
    aug = Augment(cfg, 32, CIFAR_MEAN, CIFAR_STD).to("cpu")
    a = aug(x, torch.Generator(device="cpu").manual_seed(5))
    b = aug(x, torch.Generator(device="cpu").manual_seed(5))
    c = aug(x, torch.Generator(device="cpu").manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.device.type == "cpu"
    torch.manual_seed(3)
    d = aug(x)  # no generator: the global RNG
    torch.manual_seed(3)
    assert torch.equal(d, aug(x))


def test_augment_identity_config_is_normalize_only():
    # crop of the whole image at the same size, everything else off: exactly ToTensor + Normalize
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter=(0, 0, 0, 0), grayscale_p=0)
    x = uint8_images(3, seed=22)
    out = Augment(cfg, 32, CIFAR_MEAN, CIFAR_STD)(x, gen())
    ref = TF.normalize(x.float() / 255, CIFAR_MEAN, CIFAR_STD)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_grayscale_input_pipeline_keeps_one_channel():
    x = uint8_images(6, c=1, h=28, w=28, seed=23)
    cfg = AugmentConfig(jitter=(0.4, 0.4, 0.4, 0.1), flip_p=0.5, blur_p=0.5, solarize_p=0.5)
    aug = Augment(cfg, 28, [0.5], [0.25])
    out = aug(x, gen(1))
    assert out.shape == (6, 1, 28, 28) and torch.isfinite(out).all()
    assert torch.equal(out, aug(x, gen(1)))
    with pytest.raises(ConfigError):
        Augment(cfg, 28, CIFAR_MEAN, CIFAR_STD)(x, gen())
    with pytest.raises(ConfigError):
        Augment(cfg, 32, [0.5], [0.25])(uint8_images(2), gen())


def test_augment_without_normalisation():
    cfg = AugmentConfig(
        crop_scale=(0.08, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, blur_p=0.5, blur_kernel=23
    )
    out = Augment(cfg, 32, None, None)(uint8_images(4), gen())
    assert out.min() >= 0 and out.max() <= 1


def test_eval_transform_matches_torchvision():
    x = uint8_images(3, h=40, w=40, seed=24)
    ev = EvalTransform(32, CIFAR_MEAN, CIFAR_STD)
    ref = TF.normalize(
        TF.resize(x.float() / 255, [32, 32], InterpolationMode.BILINEAR, antialias=True), CIFAR_MEAN, CIFAR_STD
    )
    torch.testing.assert_close(ev(x), ref, atol=1e-5, rtol=0)
    same = EvalTransform(40, CIFAR_MEAN, CIFAR_STD)(x)
    assert torch.equal(same, TF.normalize(x.float() / 255, CIFAR_MEAN, CIFAR_STD))
    assert torch.equal(ev(x), ev(x))


def test_config_validation_and_yaml_lists():
    cfg = AugmentConfig(crop_scale=[0.3, 1], jitter=[0.4, 0.4, 0.2, 0.1], blur_sigma=[0.1, 2])
    assert cfg.crop_scale == (0.3, 1.0) and isinstance(cfg.jitter, tuple) and cfg.blur_sigma == (0.1, 2.0)
    bad = [
        dict(grayscale_p=1.5),
        dict(flip_p=-0.1),
        dict(crop_scale=(0.9, 0.2)),
        dict(crop_scale=(0.0, 1.0)),
        dict(jitter=(0.4, 0.4, 0.4)),
        dict(jitter=(0.4, -0.1, 0.4, 0.0)),
        dict(jitter=(0, 0, 0, 0.7)),
        dict(blur_sigma=(2.0, 0.1)),
        dict(blur_kernel=4),
        dict(crop_ratio=(1.5, 0.5)),
        dict(jitter_p="a"),
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError) as err:
            AugmentConfig(**kwargs)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ strong view


def test_rand_augment_pixel_ops_equal_torchvision():
    xu = uint8_images(4, seed=25)
    xf = xu.float() / 255
    for i in range(4):
        torch.testing.assert_close(rand_augment_op(xf, "equalize", 0)[i], TF.equalize(xu[i]).float() / 255)
        torch.testing.assert_close(rand_augment_op(xf, "autocontrast", 0)[i], TF.autocontrast(xf[i]), atol=1e-6, rtol=0)
    bits = torch.tensor([4.0, 5.0, 6.0, 8.0])
    post = rand_augment_op(xf, "posterize", bits)
    for i, b in enumerate(bits.long().tolist()):
        assert torch.equal(post[i], TF.posterize(xu[i], b).float() / 255)
    factors = torch.tensor([0.05, 0.4, 0.95, 1.8])
    sharp = rand_augment_op(xf, "sharpness", factors)
    for i, f in enumerate(factors.tolist()):
        torch.testing.assert_close(sharp[i], TF.adjust_sharpness(xf[i], f), atol=1e-5, rtol=0)


def _pil(img_u8: torch.Tensor) -> Image.Image:
    return Image.fromarray(img_u8.permute(1, 2, 0).numpy())


def _from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def test_rand_augment_geometric_ops_equal_pil():
    xu = uint8_images(2, h=16, w=16, seed=26)
    xf = xu.float() / 255
    for v in (-0.1, 0.07):
        out = rand_augment_op(xf, "shear_x", v)
        ref = _from_pil(_pil(xu[0]).transform((16, 16), Image.AFFINE, (1, v, 0, 0, 1, 0), Image.NEAREST))
        assert torch.equal(out[0], ref)
        out = rand_augment_op(xf, "shear_y", v)
        ref = _from_pil(_pil(xu[1]).transform((16, 16), Image.AFFINE, (1, 0, 0, v, 1, 0), Image.NEAREST))
        assert torch.equal(out[1], ref)
    out = rand_augment_op(xf, "translate_x", 0.125)  # 2 px
    ref = _from_pil(_pil(xu[0]).transform((16, 16), Image.AFFINE, (1, 0, 2, 0, 1, 0), Image.NEAREST))
    assert torch.equal(out[0], ref)
    out = rand_augment_op(xf, "translate_y", -0.125)
    ref = _from_pil(_pil(xu[1]).transform((16, 16), Image.AFFINE, (1, 0, 0, 0, 1, -2), Image.NEAREST))
    assert torch.equal(out[1], ref)
    assert torch.equal(rand_augment_op(xf, "rotate", 90.0)[0], _from_pil(_pil(xu[0]).rotate(90)))
    out = rand_augment_op(xf, "rotate", torch.tensor([25.0, -30.0]))
    for i, a in enumerate([25.0, -30.0]):
        ref = _from_pil(_pil(xu[i]).rotate(a))
        assert (out[i] != ref).any(0).float().mean() < 0.02  # float rounding at a few pixel edges


def test_rand_augment_dispatches_each_sample_to_its_own_ops():
    # Re-draw the documented parameter stream (op ids, then magnitudes) and apply the ops one
    # sample at a time: the batched dispatch must give the same result.
    from deepclust.augment.ops import _RA_RANGES

    x = rand_images(40, h=12, w=12, seed=27)
    out = rand_augment(x, n_ops=2, generator=gen(28))
    g = gen(28)
    n = len(RAND_AUGMENT_OPS)
    ops_ids = torch.floor(torch.rand(40, 2, generator=g) * n).long()
    u = torch.rand(40, 2, generator=g)
    assert len(set(ops_ids.flatten().tolist())) > 8
    for i in range(40):
        y = x[i : i + 1]
        for k in range(2):
            name = RAND_AUGMENT_OPS[ops_ids[i, k]]
            lo, hi = _RA_RANGES[name]
            y = rand_augment_op(y, name, lo + (hi - lo) * u[i, k : k + 1])
        torch.testing.assert_close(out[i : i + 1], y, atol=1e-6, rtol=0)


def test_cutout_and_random_crop():
    x = torch.ones(500, 3, 32, 32)
    out = cutout(x, 16, gen(29))
    holes = (out == 0).all(1)  # (B, H, W)
    areas = holes.flatten(1).sum(1)
    assert (areas <= 256).all() and (out[out != 0] == 1).all()
    rows, cols = holes.any(2).sum(1), holes.any(1).sum(1)
    assert (areas == rows * cols).all()  # a (clipped) rectangle
    # SCAN's side 2 * (L // 2), L uniform in 1..16: unclipped holes have even sides 2..16, and
    # L = 1 (1 in 16) leaves no hole at all
    edge = holes[:, 0].any(1) | holes[:, -1].any(1) | holes[:, :, 0].any(1) | holes[:, :, -1].any(1)
    whole = ~edge & (areas > 0)  # holes the border did not clip
    assert set(rows[whole].tolist()) <= set(range(2, 17, 2)) and {2, 16} <= set(rows[whole].tolist())
    assert 10 <= int((areas == 0).sum()) <= 55  # about 500 / 16 = 31
    # random crop with padding: every output is a window of the zero-padded image
    xu = rand_images(20, h=8, w=8, seed=30)
    crops = random_crop(xu, 8, padding=2, generator=gen(31))
    padded = torch.nn.functional.pad(xu, (2, 2, 2, 2))
    offsets = set()
    for i in range(20):
        match = [
            (t, l) for t in range(5) for l in range(5) if torch.equal(padded[i, :, t : t + 8, l : l + 8], crops[i])
        ]
        assert match
        offsets.add(match[0])
    assert len(offsets) > 5


def test_strong_augment_runs_and_is_seeded():
    x = uint8_images(8, seed=32)
    strong = StrongAugment(32, CIFAR_MEAN, CIFAR_STD)
    a, b = strong(x, gen(33)), strong(x, gen(33))
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    assert strong.cutout_max == 16 and StrongAugment(96, CIFAR_MEAN, CIFAR_STD).cutout_max == 32
    g1 = StrongAugment(16, [0.5], [0.25])(uint8_images(4, c=1, h=16, w=16), gen(34))
    assert g1.shape == (4, 1, 16, 16) and torch.isfinite(g1).all()
    # SCAN crops to the training size without padding: with no flip, ops or cutout the view is
    # exactly the normalised image (a zero-padded crop would shift it by up to 4 px)
    plain = StrongAugment(32, CIFAR_MEAN, CIFAR_STD, n_ops=0, cutout_max=0, flip_p=0.0)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(plain(x, gen(35)), (x.float() / 255 - mean) / std)


def test_posterize_bits_are_scans_4_to_7():
    from deepclust.augment.ops import _RA_RANGES

    lo, hi = _RA_RANGES["posterize"]
    u = torch.linspace(0, 1 - 1e-6, 1001)
    assert set(torch.floor(lo + (hi - lo) * u).long().tolist()) == {4, 5, 6, 7}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_with_cpu_generator():
    x = uint8_images(8).cuda()
    cfg = AugmentConfig(flip_p=0.5, blur_p=0.5, solarize_p=0.2)
    aug = Augment(cfg, 32, CIFAR_MEAN, CIFAR_STD)
    a = aug(x, gen(1))
    assert a.device == x.device
    b = aug(x.cpu(), gen(1))
    torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=0)
    s = StrongAugment(32, CIFAR_MEAN, CIFAR_STD)(x, gen(2))
    assert s.device == x.device
