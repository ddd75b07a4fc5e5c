"""Pretrained image encoders by name: ``timm:NAME[@PATH]`` and ``torchvision:ARCH.WEIGHTS[@PATH]``.

Issue #27: deepclust clusters pretrained embeddings. An :class:`Encoder` turns uint8 images
(any size, 1 or 3 channels) into the network's pooled pre-classifier features, with the
preprocessing its weights were trained with (resize of the shorter side, centre crop,
normalisation), so that callers never build transforms themselves.

Spec grammar:

- ``timm:NAME`` (``NAME`` may carry a pretrained tag, ``convnext_tiny.fb_in22k``): weights from
  the local Hugging Face hub cache only (see :mod:`deepclust.pretrained.weights`);
- ``torchvision:ARCH.WEIGHTS`` (``torchvision:resnet50.IMAGENET1K_V2``): from torchvision's cache;
- either with ``@PATH``: a local weights file instead.

Nothing is downloaded. timm is an optional extra (``pip install 'deepclust[pretrained]'``) and
is imported only when a ``timm:`` spec is used.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepclust.engine.io import file_hash
from deepclust.errors import CheckpointError, ConfigError, DataError
from deepclust.pretrained.weights import (
    find_hf_cached,
    fit_state_dict,
    hf_hub_cache_dir,
    read_weights,
    torch_hub_checkpoints,
    url_file,
)

logger = logging.getLogger(__name__)

__all__ = ["Encoder", "Preprocess", "create_encoder", "list_encoders", "parse_spec"]

KINDS = ("timm", "torchvision")
_FORMS = "timm:NAME, timm:NAME@PATH, torchvision:ARCH.WEIGHTS or torchvision:ARCH.WEIGHTS@PATH"


@dataclass(frozen=True)
class Preprocess:
    """What the weights expect: shorter side resized to ``resize_size`` (antialiased,
    ``interpolation`` bicubic | bilinear), centre crop ``input_size``, then ``(x/255 - mean) / std``."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, ...]  # one per RGB channel
    std: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = [float(m) for m in self.mean], [float(s) for s in self.std]
        return d


def _resize_for(input_size: int, crop_pct: float) -> int:
    """Resize size of a centre crop of ``crop_pct``: floor(input / crop_pct), as timm computes it."""
    return max(input_size, int(math.floor(input_size / crop_pct + 1e-6)))


class Encoder(nn.Module):
    """A pretrained network without its classifier, behind its own preprocessing.

    ``forward(images)``: uint8 (B, C, H, W), C in {1, 3} -> float32 (B, dim). The network runs
    under whatever autocast the caller has entered; the preprocessing always runs in float32.
    """

    # buffers, registered in __init__ (1, 3, 1, 1)
    _mean: torch.Tensor
    _std: torch.Tensor

    def __init__(
        self, net: nn.Module, spec: str, dim: int, preprocess: Preprocess, weights_hash: str, weights_file: Path
    ) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.dim = int(dim)
        self.preprocess = preprocess
        self.weights_hash = weights_hash
        self.weights_file = Path(weights_file)
        self.register_buffer(
            "_mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "_std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    @property
    def model_spec(self) -> str:
        """The spec without its ``@PATH`` (the file is identified by :attr:`weights_hash`)."""
        return self.spec.split("@", 1)[0]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> the normalised float32 (B, 3, S, S) network input."""
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or images.ndim != 4
            or images.shape[1] not in (1, 3)
        ):
            raise DataError(
                f"{self.spec}: expected uint8 images (B, C, H, W) with C = 1 or 3, got "
                f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}"
            )
        p = self.preprocess
        x = images.to(self._mean.device).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[2:]
        if min(h, w) != p.resize_size:
            nh, nw = (
                (p.resize_size, int(p.resize_size * w / h)) if h <= w else (int(p.resize_size * h / w), p.resize_size)
            )
            x = F.interpolate(x, size=(nh, nw), mode=p.interpolation, antialias=True, align_corners=False)
            if p.interpolation == "bicubic":
                x = x.clamp_(0.0, 255.0)  # bicubic overshoots; PIL clamps to the uint8 range
            h, w = nh, nw
        s = p.input_size
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        x = x[:, :, top : top + s, left : left + s]
        return ((x / 255.0 - self._mean) / self._std).contiguous()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        kind = self._mean.device.type
        if kind in ("cuda", "cpu"):
            with torch.autocast(device_type=kind, enabled=False):
                x = self.prepare(images)
        else:
            x = self.prepare(images)
        out = self.net(x)
        if isinstance(out, (tuple, list)):  # torchvision's inception / googlenet in train mode
            out = out[0]
        return out.flatten(1).float()

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, dim={self.dim}, weights_hash={self.weights_hash}"


def parse_spec(spec: str) -> tuple[str, str, Path | None]:
    """``(kind, name, path)`` of a spec; ConfigError for any other form."""
    text = str(spec).strip()
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS or not rest.strip():
        raise ConfigError(f"encoder {text!r}: expected {_FORMS}")
    name, at, path = rest.partition("@")
    name = name.strip()
    if at and not path.strip():
        raise ConfigError(
            f"encoder {text!r}: nothing after '@'; pass a weights file, e.g. {kind}:{name}@weights.safetensors"
        )
    return kind, name, Path(path.strip()).expanduser() if at else None


def create_encoder(spec: str, image_size: int | None = None) -> Encoder:
    """The encoder of ``spec`` on the CPU in eval mode, gradients off (see the module doc).

    Parameters
    ----------
    spec : ``timm:NAME[@PATH]`` or ``torchvision:ARCH.WEIGHTS[@PATH]``.
    image_size : replaces the weights' input size (>= 8); the resize keeps their crop fraction.

    Returns
    -------
    Encoder
        The network behind its own preprocessing: ``forward`` maps uint8 (B, C, H, W) images to
        float32 (B, dim) features.
    """
    if image_size is not None and int(image_size) < 8:
        raise ConfigError(f"encoder image size must be at least 8 pixels, got {image_size}")
    kind, name, path = parse_spec(spec)
    build = _timm_encoder if kind == "timm" else _torchvision_encoder
    enc = build(str(spec).strip(), name, path, image_size)
    enc.eval().requires_grad_(False)
    logger.info(
        "encoder %s: %d features, input %d px (resize %d, %s), weights %s (sha256 %s)",
        enc.spec,
        enc.dim,
        enc.preprocess.input_size,
        enc.preprocess.resize_size,
        enc.preprocess.interpolation,
        enc.weights_file,
        enc.weights_hash,
    )
    return enc


def list_encoders(pattern: str = "") -> list[str]:
    """Specs with published weights (timm's pretrained tags when timm is installed, torchvision's
    enums), filtered by ``pattern`` (a glob such as ``*convnext*``, else a substring)."""
    from torchvision import models as tvm

    specs = [
        f"torchvision:{arch}.{w.name}" for arch in tvm.list_models(module=tvm) for w in tvm.get_model_weights(arch)
    ]
    try:
        import timm
    except ImportError:
        logger.info("timm is not installed: only torchvision encoders listed (pip install 'deepclust[pretrained]')")
    else:
        specs = [f"timm:{n}" for n in timm.list_models(pretrained=True)] + specs
    if not pattern:
        return specs
    if any(c in pattern for c in "*?["):
        return [s for s in specs if fnmatch.fnmatch(s, pattern) or fnmatch.fnmatch(s.split(":", 1)[1], pattern)]
    return [s for s in specs if pattern in s]


def _unknown(kind: str, name: str, known: list[str]) -> ConfigError:
    arch, dot, tag = name.partition(".")
    close = difflib.get_close_matches(arch, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(f'{kind}:{c}{dot}{tag}' for c in close)}?" if close else ""
    return ConfigError(f"unknown {kind} model {name!r}{hint} (deepclust.pretrained.list_encoders() lists them)")


def _import_timm(spec: str) -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"{spec} needs timm: pip install 'deepclust[pretrained]'") from None
    return timm


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"weights file {source} does not load into the network ({first})") from None


# ----- timm --------------------------------------------------------------------------------------------
def _timm_encoder(spec: str, name: str, path: Path | None, image_size: int | None) -> Encoder:
    timm = _import_timm(spec)
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise _unknown("timm", name, timm.list_models())
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        tags = timm.list_pretrained(f"{arch}.*")
        raise ConfigError(
            f"timm model {arch!r} has no pretrained weights {name!r}; choose one of "
            f"{', '.join(tags[:8]) or '(none published)'}"
        ) from None
    if path is None:
        path = _timm_cached(spec, name, cfg)
    net = timm.create_model(name, pretrained=False)
    full = net.state_dict()
    net.reset_classifier(0)
    trunk = net.state_dict()
    state = fit_state_dict(read_weights(path), full, [k for k in full if k not in trunk], f"'{path}'")
    _load_into(net, state, f"'{path}'")
    data_cfg = timm.data.resolve_data_config({}, model=net)
    if data_cfg.get("crop_mode", "center") != "center":
        logger.warning("%s: the weights' crop mode is %r; deepclust uses a centre crop", spec, data_cfg["crop_mode"])
    size = int(image_size or data_cfg["input_size"][-1])
    interp = data_cfg.get("interpolation", "bicubic")
    prep = Preprocess(
        input_size=size,
        resize_size=_resize_for(size, float(data_cfg.get("crop_pct") or 1.0)),
        interpolation=interp if interp in ("bicubic", "bilinear") else "bilinear",
        mean=tuple(float(m) for m in data_cfg["mean"]),
        std=tuple(float(s) for s in data_cfg["std"]),
    )
    dim = getattr(net, "head_hidden_size", None) or net.num_features
    return Encoder(net, spec, int(dim), prep, file_hash(path), path)


def _timm_cached(spec: str, name: str, cfg: Any) -> Path:
    """The cached weights of a timm model (hub cache, then torch's URL cache); never downloads."""
    looked: list[str] = []
    repo = getattr(cfg, "hf_hub_id", None)
    if repo:
        found = find_hf_cached(repo, getattr(cfg, "hf_hub_filename", None))
        if found is not None:
            return found
        looked.append(f"the Hugging Face repo {repo} in {hf_hub_cache_dir()} (moved by HF_HOME or HF_HUB_CACHE)")
    url = getattr(cfg, "url", None)
    if url:
        file = url_file(url)
        if file.is_file():
            return file
        looked.append(f"{file} (moved by TORCH_HOME)")
    where = " and ".join(looked) or "no published weights"
    raise CheckpointError(
        f"{spec}: no local weights; looked for {where}; nothing is downloaded: put the weights "
        f"there, or pass a local file with timm:{name}@PATH"
    )


# ----- torchvision -------------------------------------------------------------------------------------
def _torchvision_encoder(spec: str, name: str, path: Path | None, image_size: int | None) -> Encoder:
    from torchvision import models as tvm

    arch, _, wname = name.partition(".")
    known = tvm.list_models(module=tvm)
    if arch not in known:
        raise _unknown("torchvision", name, known)
    enum = tvm.get_model_weights(arch)
    try:
        weights = enum[wname or "DEFAULT"]
    except KeyError:
        raise ConfigError(
            f"torchvision model {arch!r} has no weights {wname!r}; choose one of "
            f"{', '.join(w.name for w in enum)} or DEFAULT"
        ) from None
    if path is None:
        path = url_file(weights.url)
        if not path.is_file():
            raise CheckpointError(
                f"{spec}: weights not in torchvision's cache: no {path.name} in {torch_hub_checkpoints()} "
                f"(moved by TORCH_HOME); nothing is downloaded: fetch {weights.url} there, or pass a "
                f"local file with torchvision:{arch}.{weights.name}@PATH"
            )
    net = tvm.get_model(arch, weights=None, num_classes=len(weights.meta["categories"]))
    full = net.state_dict()
    last = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError(f"{spec}: no linear classifier found to remove")
    lname, linear = last[-1]
    parent = net.get_submodule(lname.rsplit(".", 1)[0]) if "." in lname else net
    setattr(parent, lname.rsplit(".", 1)[-1], nn.Identity())
    trunk = net.state_dict()
    state = fit_state_dict(read_weights(path), full, [k for k in full if k not in trunk], f"'{path}'")
    _load_into(net, state, f"'{path}'")
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    size = int(image_size or crop)
    interp = getattr(t.interpolation, "value", str(t.interpolation))
    prep = Preprocess(
        input_size=size,
        resize_size=resize if image_size is None else _resize_for(size, crop / resize),
        interpolation=interp if interp in ("bicubic", "bilinear") else "bilinear",
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
    )
    return Encoder(net, spec, int(linear.in_features), prep, file_hash(path), path)
