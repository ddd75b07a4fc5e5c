"""Batched, per-sample image augmentation ops on the training device.

Every function takes a float batch ``x`` of shape (B, C, H, W) with values in [0, 1] and
C = 1 (grayscale) or 3 (RGB), draws one set of random parameters *per sample*, and treats the
whole batch with tensor ops (no per-image Python loop). Outputs live on ``x.device``.

Randomness: every draw comes from the ``generator`` argument, or from the global torch RNG of
``x.device`` when it is None, so one seed drives a whole pipeline. A generator may live on a
different device than ``x`` (e.g. a CPU generator for a CUDA batch): parameters are drawn on
the generator's device and moved to ``x.device``; they are tiny (a few numbers per sample).

Semantics follow torchvision's per-image transforms (``RandomResizedCrop``, ``ColorJitter``,
``RandomGrayscale``, ...) so the pipelines of the papers, written with torchvision/PIL, can be
reproduced on whole batches; the tests compare against torchvision image by image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from deepclust.errors import DataError

__all__ = [
    "to_float",
    "sample_crop_boxes",
    "crop_resize",
    "random_resized_crop",
    "random_crop",
    "rgb_to_grayscale",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "JitterParams",
    "sample_jitter_params",
    "apply_color_jitter",
    "color_jitter",
    "random_grayscale",
    "random_hflip",
    "gaussian_kernel_size",
    "blur",
    "gaussian_blur",
    "solarize",
    "random_affine",
    "random_stroke",
    "normalize",
    "RAND_AUGMENT_OPS",
    "rand_augment_op",
    "rand_augment",
    "cutout",
]

# ITU-R 601-2 luma, the weights of PIL's convert("L") used by the papers' PIL pipelines
# (torchvision's tensor backend uses 0.2989 for red; the difference is < 1e-4).
_LUMA = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------- randomness


def _rand(shape: Sequence[int] | int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) float32 draws from ``generator`` (on its own device), returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device)
    return u.to(device, non_blocking=True)


def _uniform(
    shape: Sequence[int] | int, low: float, high: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """U[low, high) float32 draws."""
    return low + (high - low) * _rand(shape, generator, device)


def _bernoulli(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(n,) bool mask, True with probability p (always draws, so the stream does not depend on p)."""
    return _rand(n, generator, device) < p


def _randint_below(n: Tensor, u: Tensor) -> Tensor:
    """Uniform integers in [0, n) from uniforms u in [0, 1) (float64 keeps floor(u*n) < n)."""
    k = torch.floor(u.double() * n.double()).long()
    return torch.minimum(k, n.long() - 1).clamp_min(0)


def _per_sample(value: float | Tensor, x: Tensor) -> Tensor:
    """A scalar or (B,) parameter as a (B, 1, 1, 1) tensor on x's device/dtype."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t.reshape(-1, 1, 1, 1)


def _check_batch(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"expected an image batch (B, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")


def to_float(x: Tensor) -> Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1] (like ``ToTensor``); float input is returned as is."""
    _check_batch(x)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if x.is_floating_point():
        return x
    raise DataError(f"expected uint8 or float images, got dtype {x.dtype}")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


# ----------------------------------------------------------------------------- geometry


def central_crop_size(width: int, height: int, ratio: Sequence[float]) -> tuple[int, int]:
    """torchvision's RandomResizedCrop fallback: the largest central (w, h) whose aspect ratio
    w / h is clamped into ``ratio`` (the whole image when its own ratio is inside)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    attempts: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample ``RandomResizedCrop.get_params`` boxes, vectorised over the batch.

    For each sample, ``attempts`` candidates are drawn at once: area fraction ~ U(scale),
    log aspect ratio ~ U(log ratio), w = round(sqrt(area * r)), h = round(sqrt(area / r));
    the first candidate with 0 < w <= width and 0 < h <= height wins and its top-left corner is
    uniform over the valid positions. Samples with no valid candidate get torchvision's
    central-crop fallback (whole image, aspect ratio clamped to ``ratio``).

    Returns int64 tensors ``(top, left, h, w)``, each of shape (batch,).
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    # float32 draws like torchvision's ``torch.empty(1).uniform_``, the rest in float64 like its
    # Python-float arithmetic; torch.round rounds half to even, as Python's round does.
    u = _rand((batch, attempts, 2), generator, device).double()
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect)).long()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.float32).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    found = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # Central-crop fallback: depends only on the image shape, so plain Python.
    fw, fh = central_crop_size(width, height, ratio)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))

    corner = _rand((batch, 2), generator, device)
    top = _randint_below(height - h + 1, corner[:, 0])
    left = _randint_below(width - w + 1, corner[:, 1])
    top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
    return top, left, h, w


def crop_resize(
    x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor, size: int | Sequence[int]
) -> Tensor:
    """Crop box ``(top, left, height, width)`` of each sample and resize it bilinearly to ``size``.

    Equals torchvision's ``resized_crop(..., BILINEAR, antialias=False)`` (crop, then
    ``interpolate(align_corners=False)``): the sampling position of output pixel o is
    ``(o + 0.5) * h / size - 0.5`` inside the crop, clamped to the crop (not to the image, so no
    pixel outside the box leaks in), and read with ``grid_sample`` from one per-sample
    axis-aligned affine grid. No antialiasing when downscaling.
    """
    b, _, big_h, big_w = x.shape
    out_h, out_w = _pair(size)
    dt, dev = x.dtype if x.is_floating_point() else torch.float32, x.device
    top, left = top.to(dev, dt).view(b, 1), left.to(dev, dt).view(b, 1)
    height, width = height.to(dev, dt).view(b, 1), width.to(dev, dt).view(b, 1)
    oy = torch.arange(out_h, device=dev, dtype=dt).view(1, -1) + 0.5
    ox = torch.arange(out_w, device=dev, dtype=dt).view(1, -1) + 0.5
    ys = torch.minimum((oy * (height / out_h) - 0.5).clamp_min(0), height - 1) + top
    xs = torch.minimum((ox * (width / out_w) - 0.5).clamp_min(0), width - 1) + left
    # pixel index p -> normalised coordinate for align_corners=False
    gy = (2 * ys + 1) / big_h - 1
    gx = (2 * xs + 1) / big_w - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    x: Tensor,
    size: int | Sequence[int],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """``RandomResizedCrop(size, scale, ratio)`` with one box per sample (bilinear, no antialias)."""
    b, _, h, w = x.shape
    boxes = sample_crop_boxes(b, h, w, scale, ratio, generator, device=x.device)
    return crop_resize(x, *boxes, size=size)


def random_crop(
    x: Tensor, size: int | Sequence[int], padding: int = 0, generator: torch.Generator | None = None
) -> Tensor:
    """``RandomCrop(size, padding)``: zero-pad each side by ``padding``, then crop a uniformly
    placed ``size`` window per sample (CIFAR-style ``padding=4``)."""
    out_h, out_w = _pair(size)
    if padding:
        x = F.pad(x, (padding,) * 4)
    b, c, h, w = x.shape
    if out_h > h or out_w > w:
        raise DataError(f"random_crop: crop {out_h}x{out_w} is larger than the padded image {h}x{w}")
    u = _rand((b, 2), generator, x.device)
    top = _randint_below(torch.full((b,), h - out_h + 1, device=x.device), u[:, 0])
    left = _randint_below(torch.full((b,), w - out_w + 1, device=x.device), u[:, 1])
    rows = (top[:, None] + torch.arange(out_h, device=x.device)).view(b, 1, out_h, 1)
    cols = (left[:, None] + torch.arange(out_w, device=x.device)).view(b, 1, 1, out_w)
    x = x.gather(2, rows.expand(b, c, out_h, w))
    return x.gather(3, cols.expand(b, c, out_h, out_w))


# ----------------------------------------------------------------------------- colour


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma (ITU-R 601-2); a 1-channel batch is returned as is."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _blend(x: Tensor, other: Tensor | float, factor: Tensor) -> Tensor:
    # factor == 1 gives exactly x (1*x + 0*other), so neutral factors need no masking.
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend with black: ``clamp(f * x)``; ``factor`` is a scalar or one value per sample."""
    return _blend(x, 0.0, _per_sample(factor, x))


def adjust_contrast(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend with the per-image mean of the grayscale image."""
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, _per_sample(factor, x))


def adjust_saturation(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend with the grayscale image (no-op for C == 1)."""
    if x.shape[1] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), _per_sample(factor, x))


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc = x.amax(dim=1, keepdim=True)
    delta = maxc - x.amin(dim=1, keepdim=True)
    # 1/delta as 0 for gray pixels: then every branch below gives h = 0 there (r == g == b)
    inv_delta = torch.where(delta > 0, 1.0 / delta.clamp_min(1e-12), torch.zeros_like(delta))
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    # hue sector by which channel is the maximum (red wins ties, then green)
    h = torch.where(
        maxc == r, (g - b) * inv_delta, torch.where(maxc == g, (b - r) * inv_delta + 2.0, (r - g) * inv_delta + 4.0)
    )
    h = (h * (1.0 / 6.0)) % 1.0
    return torch.cat((h, s, maxc), dim=1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    # Closed form without a per-sector table: channel n in (5, 3, 1) for (r, g, b) is
    # v - v * s * clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6.
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = (n + 6.0 * h) % 6.0
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def adjust_hue(x: Tensor, factor: float | Tensor) -> Tensor:
    """Shift the hue by ``factor`` (in turns, [-0.5, 0.5]) in HSV space (no-op for C == 1)."""
    if x.shape[1] == 1:
        return x
    hsv = _rgb_to_hsv(x)
    h = (hsv[:, 0:1] + _per_sample(factor, x)) % 1.0
    return _hsv_to_rgb(torch.cat((h, hsv[:, 1:]), dim=1)).clamp(0.0, 1.0)


@dataclass
class JitterParams:
    """Per-sample colour-jitter draws.

    ``order`` (B, 4): a random permutation of op ids 0=brightness, 1=contrast, 2=saturation,
    3=hue, applied left to right. ``factors`` (B, 4): brightness, contrast, saturation factors
    and hue shift, neutral (1, 1, 1, 0) for samples the jitter was not applied to.
    ``applied`` (B,): whether the jitter was applied (probability p).
    """

    order: Tensor
    factors: Tensor
    applied: Tensor


def _jitter_range(value: float, center: float, lower: float | None) -> tuple[float, float]:
    lo = center - value
    return (max(lower, lo) if lower is not None else lo), center + value


def sample_jitter_params(
    batch: int,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> JitterParams:
    """Draw ``ColorJitter(brightness, contrast, saturation, hue)`` parameters per sample.

    As torchvision: b, c, s ~ U[max(0, 1 - v), 1 + v], hue shift ~ U[-hue, hue], and a fresh
    random op order (a uniform permutation) for every sample.
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    order = torch.argsort(_rand((batch, 4), generator, device), dim=1)
    u = _rand((batch, 4), generator, device)
    ranges = [
        _jitter_range(brightness, 1.0, 0.0),
        _jitter_range(contrast, 1.0, 0.0),
        _jitter_range(saturation, 1.0, 0.0),
        _jitter_range(hue, 0.0, None),
    ]
    lo = torch.tensor([r[0] for r in ranges], device=device)
    hi = torch.tensor([r[1] for r in ranges], device=device)
    factors = lo + (hi - lo) * u
    applied = _bernoulli(batch, p, generator, device)
    neutral = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device)
    factors = torch.where(applied[:, None], factors, neutral)
    return JitterParams(order=order, factors=factors, applied=applied)


def apply_color_jitter(x: Tensor, params: JitterParams, active: Sequence[bool] = (True, True, True, True)) -> Tensor:
    """Apply jitter ``params`` to ``x``, each sample in its own op order.

    Brightness, contrast and saturation are all ``clamp(f * x + (1 - f) * target)`` with
    target black, the mean gray level or the gray image. So at step k each sample blends with
    the target of *its* k-th op in one whole-batch blend; samples whose k-th op is hue (or an
    inactive op) use f = 1, which is bit-exact identity. Hue runs on the sub-batch that drew
    it at this step. ``active[j] = False`` disables op j (0 brightness, 1 contrast,
    2 saturation, 3 hue), e.g. when its range is empty.
    """
    order = params.order.to(x.device)
    factors = params.factors.to(x.device, x.dtype)
    rgb = x.shape[1] == 3
    # saturation and hue are identities on one channel
    flags = [bool(active[0]), bool(active[1]), bool(active[2]) and rgb, bool(active[3]) and rgb]
    act = torch.tensor(flags, device=x.device)
    blend_active, hue_active = any(flags[:3]), flags[3]  # Python bools: no device sync
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    for k in range(4):
        op = order[:, k]
        f = factors.gather(1, op[:, None]).squeeze(1)
        if blend_active:
            use = (op < 3) & act[op]
            f_blend = torch.where(use, f, torch.ones_like(f)).view(-1, 1, 1, 1)
            gray = rgb_to_grayscale(x)
            mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
            op4 = op.view(-1, 1, 1, 1)
            target = torch.where(op4 == 0, zero, torch.where(op4 == 1, mean, gray))
            x = _blend(x, target, f_blend)
        if hue_active:
            # HSV is the costly op, so only the sub-batch whose k-th op is hue goes through it
            # (the round trip is not bit-exact, so the others must not)
            idx = torch.nonzero((op == 3) & (f != 0)).squeeze(1)
            if idx.numel():
                x = x.index_copy(0, idx, adjust_hue(x[idx], f[idx]))
    return x


def color_jitter(
    x: Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` per sample.

    Clamps to [0, 1] after every op, like torchvision. For C == 1 only brightness and contrast
    act (saturation and hue of a gray image are identities).
    """
    params = sample_jitter_params(x.shape[0], brightness, contrast, saturation, hue, p, generator, device=x.device)
    active = (brightness > 0, contrast > 0, saturation > 0 and x.shape[1] == 3, hue > 0 and x.shape[1] == 3)
    if not any(active):
        return x
    return apply_color_jitter(x, params, active)


def random_grayscale(x: Tensor, p: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """``RandomGrayscale(p)``: luma repeated over the 3 channels; no-op for C == 1."""
    if x.shape[1] == 1:
        return x
    mask = _bernoulli(x.shape[0], p, generator, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, rgb_to_grayscale(x).expand_as(x), x)


def random_hflip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """``RandomHorizontalFlip(p)`` per sample."""
    mask = _bernoulli(x.shape[0], p, generator, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def solarize(x: Tensor, p: float = 1.0, threshold: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """``RandomSolarize(threshold, p)``: pixels >= threshold become 1 - pixel.

    threshold 0.5 on [0, 1] matches PIL's ``solarize(img, 128)`` on 8-bit images
    (k / 255 >= 0.5 exactly when k >= 128).
    """
    mask = _bernoulli(x.shape[0], p, generator, x.device).view(-1, 1, 1, 1)
    return torch.where(mask & (x >= threshold), 1.0 - x, x)


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """``(x - mean) / std`` per channel."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


# ----------------------------------------------------------------------------- blur


def gaussian_kernel_size(sigma_max: float) -> int:
    """Odd kernel width covering +-3 sigma: ``2 * ceil(3 * sigma_max) + 1``."""
    return 2 * math.ceil(3.0 * sigma_max) + 1


def blur(x: Tensor, sigma: Tensor | float, kernel_size: int | None = None, mask: Tensor | None = None) -> Tensor:
    """Gaussian blur with one sigma per sample (separable, reflect padding, grouped conv).

    The kernel is torchvision's (``exp(-t^2 / (2 sigma^2))`` on integer offsets, normalised).
    ``kernel_size`` defaults to :func:`gaussian_kernel_size` of the largest sigma and is
    capped so the reflect padding fits in the image. Samples with ``mask`` False get a delta
    kernel and come out unchanged.
    """
    b, c, h, w = x.shape
    sigma = _per_sample(sigma, x).reshape(b)
    if kernel_size is None:
        kernel_size = gaussian_kernel_size(float(sigma.max()))
    half = min(kernel_size // 2, h - 1, w - 1)
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    if mask is not None:
        delta = (t == 0).to(x.dtype).expand_as(kernel)
        kernel = torch.where(mask.to(x.device).view(b, 1), kernel, delta)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, K): one kernel per (sample, channel)
    y = F.pad(x.reshape(1, b * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def gaussian_blur(
    x: Tensor,
    sigma_range: Sequence[float] = (0.1, 2.0),
    p: float = 1.0,
    generator: torch.Generator | None = None,
    kernel_size: int | None = None,
) -> Tensor:
    """Random Gaussian blur, sigma ~ U[sigma_range] per sample, applied with probability p.

    Approximates PIL's ``GaussianBlur(radius=sigma)`` (used by the papers' pipelines), which
    blurs with repeated box filters of standard deviation ``sigma``; here an exact truncated
    Gaussian of that sigma is used (kernel ``2 * ceil(3 * sigma_max) + 1`` unless
    ``kernel_size`` is given, e.g. 23 for the SimCLR recipe at 224 px).
    """
    b = x.shape[0]
    sigma = _uniform(b, float(sigma_range[0]), float(sigma_range[1]), generator, x.device)
    mask = _bernoulli(b, p, generator, x.device)
    if kernel_size is None:
        kernel_size = gaussian_kernel_size(float(sigma_range[1]))
    return blur(x, sigma.to(x.dtype), kernel_size, mask)


# ----------------------------------------------------------------------------- RandAugment

# Ops of SCAN's strong augmentation (secu.md section 12). Magnitude ranges: rotate in degrees,
# shear as the affine shear factor, translate as a fraction of the image side, posterize in
# bits (integers 4..7: SCAN draws a magnitude uniform in [4, 8) and truncates it, so 8 bits,
# the identity, never occurs; the spec's "4-8" is that range's end points). The spec gives no
# range for color/contrast/brightness/sharpness and solarize: the library uses enhancement
# factors in [0.05, 0.95] (the FixMatch/SCAN-style RandAugment convention) and a solarize
# threshold in [0, 1] (0..256 on 8-bit images).
RAND_AUGMENT_OPS: tuple[str, ...] = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "posterize",
)
_RA_RANGES: dict[str, tuple[float, float]] = {
    "identity": (0.0, 1.0),
    "autocontrast": (0.0, 1.0),
    "equalize": (0.0, 1.0),
    "rotate": (-30.0, 30.0),
    "solarize": (0.0, 1.0),
    "color": (0.05, 0.95),
    "contrast": (0.05, 0.95),
    "brightness": (0.05, 0.95),
    "sharpness": (0.05, 0.95),
    "shear_x": (-0.1, 0.1),
    "shear_y": (-0.1, 0.1),
    "translate_x": (-0.1, 0.1),
    "translate_y": (-0.1, 0.1),
    "posterize": (4.0, 8.0),  # floor -> uniform over 4..7, as SCAN
}


def _to_uint8_levels(x: Tensor) -> Tensor:
    return torch.round(x.clamp(0.0, 1.0) * 255.0).long()


def _autocontrast(x: Tensor) -> Tensor:
    # per (sample, channel): stretch [min, max] to [0, 1]; constant channels stay as they are
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi <= lo
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    scale = 1.0 / torch.where(flat, torch.ones_like(hi), hi - lo)
    return ((x - lo) * scale).clamp(0.0, 1.0)


def _equalize(x: Tensor) -> Tensor:
    # PIL's ImageOps.equalize per (sample, channel) on the 8-bit levels, all rows at once.
    b, c, h, w = x.shape
    q = _to_uint8_levels(x).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device, dtype=torch.long)
    hist.scatter_add_(1, q, torch.ones_like(q))
    last = 255 - (hist > 0).flip(1).long().argmax(dim=1, keepdim=True)  # last non-empty bin
    step = (h * w - hist.gather(1, last)) // 255  # (total minus the last bin's count) // 255
    safe_step = step.clamp_min(1)
    lut = ((torch.cumsum(hist, 1) - hist) + safe_step // 2) // safe_step
    lut = torch.where(step > 0, lut.clamp(0, 255), torch.arange(256, device=x.device))
    return lut.gather(1, q).view(b, c, h, w).to(x.dtype) / 255.0


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    keep = (255 - (2 ** (8 - bits.long()) - 1)).view(-1, 1, 1, 1)  # mask of the top `bits` bits
    return (_to_uint8_levels(x) & keep).to(x.dtype) / 255.0


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    # torchvision/PIL: blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]] / 13, whose
    # one-pixel border is left as the original.
    b, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5.0
    k = (k / 13.0).expand(c, 1, 3, 3)
    smooth = F.conv2d(x, k, groups=c)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(x, degenerate, _per_sample(factor, x))


def _affine_nearest(x: Tensor, theta: Tensor) -> Tensor:
    """Sample ``x`` at ``theta @ (u, v, 1)`` for every output point (u, v), nearest, zero fill.

    ``theta`` (B, 2, 3) works in PIL's continuous pixel coordinates (pixel i covers [i, i+1),
    origin at the top-left corner); nearest resampling and a black fill are PIL's defaults for
    ``rotate``/``transform``, which SCAN's RandAugment uses.
    """
    b, _, h, w = x.shape
    v, u = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=x.dtype) + 0.5,
        torch.arange(w, device=x.device, dtype=x.dtype) + 0.5,
        indexing="ij",
    )
    pts = torch.stack((u, v, torch.ones_like(u)), dim=-1).view(1, h * w, 3)
    src = pts @ theta.to(x.dtype).transpose(1, 2)  # (B, HW, 2) source (x, y)
    grid = torch.stack((2 * src[..., 0] / w - 1, 2 * src[..., 1] / h - 1), dim=-1)
    return F.grid_sample(x, grid.view(b, h, w, 2), mode="nearest", padding_mode="zeros", align_corners=False)


def random_affine(
    x: Tensor, degrees: float, translate: float, shear: float, p: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """Small per-sample affine moves (as torchvision's ``RandomAffine``), applied with probability p.

    Rotation by U(-degrees, degrees) and shear along x by U(-shear, shear) degrees about the
    centre, then a shift by U(-translate, translate) of the side in x and y; bilinear sampling,
    zero fill. Draws 5 uniforms per sample whatever ``p`` is, so the stream is fixed.
    """
    _check_batch(x)
    b, _, h, w = x.shape
    u = _rand((b, 5), generator, x.device)
    a = torch.deg2rad((2 * u[:, 0] - 1) * degrees)
    sh = torch.tan(torch.deg2rad((2 * u[:, 1] - 1) * shear))
    tx, ty = (2 * u[:, 2] - 1) * translate * 2, (2 * u[:, 3] - 1) * translate * 2  # grid units: side = 2
    cos, sin = torch.cos(a), torch.sin(a)
    # the inverse map from output to source in normalised coordinates: (R S)^-1 (q - t)
    m = torch.stack((torch.stack((cos, -sin + cos * sh), -1), torch.stack((sin, cos + sin * sh), -1)), 1)
    inv = torch.linalg.inv(m)
    t = torch.stack((tx, ty), -1).unsqueeze(-1)
    theta = torch.cat((inv, -(inv @ t)), dim=2)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    keep = (u[:, 4] >= p).view(-1, 1, 1, 1)
    return torch.where(keep, x, moved)


def random_stroke(
    x: Tensor, strength: float, p: float = 1.0, generator: torch.Generator | None = None, thin: float = 0.5
) -> Tensor:
    """Thicker or thinner strokes per sample (glyph-like data), applied with probability p.

    ``x + t (M(x) - x)`` with ``t ~ U(0, strength)`` and ``M`` a 3x3 grey-level filter that
    thins the strokes with probability ``thin`` and thickens them otherwise: a continuous change
    of the stroke width by up to one pixel on each side, the bold / light variation of fonts and
    pens. Which filter thickens follows each image's polarity: where the mean of its border
    pixels is above its mean (dark strokes on a bright page) erosion (min filter) thickens,
    otherwise dilation (max filter). ``thin = 0`` only thickens, which keeps thin strokes (small
    MNIST-like digits) from being erased. Borders: the filters ignore the outside (max-pool
    padding is -inf). Draws 3 uniforms per sample whatever ``p`` is, so the stream is fixed.
    The glyph preset uses it for SeCu and CDC (p 0.5, thin 0, strength 0.5; presets.py); why
    that form: docs/explorations.md, "Stroke-width views".
    """
    _check_batch(x)
    u = _rand((x.shape[0], 3), generator, x.device)
    dilated = F.max_pool2d(x, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    border = torch.cat((x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]), dim=2).mean(dim=(1, 2))
    dark_strokes = border > x.mean(dim=(1, 2, 3))
    use_dilation = (u[:, 1] >= thin) != dark_strokes  # thicken bright strokes / thin dark ones
    target = torch.where(use_dilation.view(-1, 1, 1, 1), dilated, eroded)
    t = torch.where(u[:, 0] < p, u[:, 2] * strength, torch.zeros_like(u[:, 2]))
    return x + _per_sample(t, x) * (target - x)  # between x and M(x): stays in [0, 1]


def _geometric_theta(name: str, mag: Tensor, h: int, w: int) -> Tensor:
    n = mag.shape[0]
    theta = torch.zeros(n, 2, 3, device=mag.device, dtype=torch.float32)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    mag = mag.float()
    if name == "rotate":
        # counter-clockwise by `mag` degrees about the centre (PIL's Image.rotate); the inverse
        # map from output to source is a rotation by -mag in y-down coordinates.
        a = torch.deg2rad(mag)
        cos, sin = torch.cos(a), torch.sin(a)
        cx, cy = w / 2.0, h / 2.0
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
        theta[:, 0, 2] = cx - cos * cx + sin * cy
        theta[:, 1, 2] = cy - sin * cx - cos * cy
    elif name == "shear_x":  # PIL affine (1, v, 0, 0, 1, 0)
        theta[:, 0, 1] = mag
    elif name == "shear_y":  # PIL affine (1, 0, 0, v, 1, 0)
        theta[:, 1, 0] = mag
    elif name == "translate_x":  # shift by a fraction of the width
        theta[:, 0, 2] = mag * w
    elif name == "translate_y":
        theta[:, 1, 2] = mag * h
    return theta


def rand_augment_op(x: Tensor, name: str, magnitude: Tensor | float) -> Tensor:
    """Apply one RandAugment op to every sample of ``x`` with per-sample ``magnitude``.

    Magnitudes are in the op's own units (see ``RAND_AUGMENT_OPS``); pixel ops that are
    defined on 8-bit images (equalize, posterize) quantise to 256 levels.
    """
    mag = torch.as_tensor(magnitude, device=x.device, dtype=torch.float32)
    if mag.ndim == 0:
        mag = mag.expand(x.shape[0])
    if name == "identity":
        return x
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return _equalize(x)
    if name == "solarize":
        return torch.where(x >= _per_sample(mag, x), 1.0 - x, x)
    if name == "color":
        return adjust_saturation(x, mag)
    if name == "contrast":
        return adjust_contrast(x, mag)
    if name == "brightness":
        return adjust_brightness(x, mag)
    if name == "sharpness":
        return _sharpness(x, mag)
    if name == "posterize":
        return _posterize(x, torch.floor(mag).clamp(1, 8))
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        return _affine_nearest(x, _geometric_theta(name, mag, x.shape[-2], x.shape[-1]))
    raise ValueError(f"unknown RandAugment op {name!r}; expected one of {RAND_AUGMENT_OPS}")


def rand_augment(x: Tensor, n_ops: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """SCAN-style RandAugment: ``n_ops`` ops per sample, drawn uniformly with replacement from
    ``RAND_AUGMENT_OPS``, each with a magnitude uniform in its range.

    Batched by op: at each of the ``n_ops`` steps, every op runs once on the sub-batch of
    samples that drew it (14 small launches per step rather than B).
    """
    b = x.shape[0]
    n = len(RAND_AUGMENT_OPS)
    ops = torch.floor(_rand((b, n_ops), generator, x.device) * n).long().clamp_max(n - 1)
    u = _rand((b, n_ops), generator, x.device)
    for k in range(n_ops):
        for j, name in enumerate(RAND_AUGMENT_OPS):
            if name == "identity":
                continue
            idx = torch.nonzero(ops[:, k] == j).squeeze(1)
            if idx.numel() == 0:
                continue
            lo, hi = _RA_RANGES[name]
            mag = lo + (hi - lo) * u[idx, k]
            x = x.index_copy(0, idx, rand_augment_op(x[idx], name, mag))
    return x


def cutout(x: Tensor, max_size: int, generator: torch.Generator | None = None, fill: float = 0.0) -> Tensor:
    """Cutout with one square hole per sample, as SCAN's: a length L uniform in 1..max_size,
    the hole rows [cy - L//2, cy + L//2) and the same for columns, so its side is 2 (L // 2)
    (0 for L = 1: no hole; an odd L loses a pixel).

    The hole centre is a uniform pixel and the hole is clipped at the image border (so it can
    be partly outside, as in the original Cutout). Meant to run *after* normalisation, where
    the default ``fill=0`` is the dataset mean colour (SCAN's choice).
    """
    b, _, h, w = x.shape
    u = _rand((b, 3), generator, x.device)
    length = 1 + _randint_below(torch.full((b,), max_size, device=x.device), u[:, 0])
    side = 2 * (length // 2)
    cy = _randint_below(torch.full((b,), h, device=x.device), u[:, 1])
    cx = _randint_below(torch.full((b,), w, device=x.device), u[:, 2])
    y0, x0 = cy - side // 2, cx - side // 2
    rows = torch.arange(h, device=x.device).view(1, h)
    cols = torch.arange(w, device=x.device).view(1, w)
    in_y = (rows >= y0[:, None]) & (rows < (y0 + side)[:, None])  # (B, H)
    in_x = (cols >= x0[:, None]) & (cols < (x0 + side)[:, None])  # (B, W)
    hole = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)
    return x.masked_fill(hole, fill)
