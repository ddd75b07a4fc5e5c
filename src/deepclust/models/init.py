"""Initial backbone weights (``model.init`` / ``--init``) from deepclust runs and SSL checkpoints.

Accepted sources, told apart by their key layout:

- a deepclust run directory, checkpoint or saved estimator (``model["backbone.*"]``);
- a torchvision ResNet state dict (``conv1.*``, ``layer1..4.*``; the classifier ``fc.*`` is dropped);
- MoCo v2 (``state_dict["module.encoder_q.*"]``; the projection ``fc.0`` / ``fc.2`` is dropped);
- MoCo v3 (``state_dict["module.base_encoder.*"]``; its ``fc.*`` MLP, the momentum encoder and
  ``module.predictor.*`` are dropped);
- DINO (``teacher`` / ``student`` / ``state_dict`` of a training checkpoint, or a bare dict, with
  ``module.`` and ``backbone.`` prefixes; ``head.*`` is dropped);
- SwAV (``module.`` prefix; ``projection_head.*`` and ``prototypes.*`` are dropped);
- any of these as a ``.safetensors`` file (read with the ``safetensors`` library);
- ``torchvision:NAME.WEIGHTS`` (e.g. ``torchvision:resnet50.IMAGENET1K_V2``): torchvision's
  published weights, read from (or downloaded into) torchvision's own cache under
  ``$TORCH_HOME/hub/checkpoints``.

torchvision's ResNet names (conv1, bn1, layer1..4) are those of deepclust's ResNets under
``net.``; ImageNet-trained weights need ``model.stem=imagenet`` (the 7x7 stem). Every key must
fit: the first one that does not is named in a one-line :class:`CheckpointError`. The returned
record (source, file, format, sha256) goes into the run's results and checkpoints.

A file from elsewhere is data, never code: ``.pth``/``.pt`` files are read with
``torch.load(weights_only=True)``, admitting by name only ``argparse.Namespace`` (DINO's ``args``)
and the NumPy types of older deepclust checkpoints; a file that needs any other type is refused
with one line naming the type. ``.safetensors`` files hold tensors only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io as _io
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from deepclust.engine.io import LEGACY_GLOBALS, read_torch_file, verify_checksum
from deepclust.errors import CheckpointError
from deepclust.models.backbones import ResNetBackbone

log = logging.getLogger(__name__)

__all__ = ["KINDS", "check_source", "init_backbone", "map_resnet_keys", "read_source"]

KINDS = (
    "a deepclust run, a torchvision ResNet state dict, a MoCo v2/v3, DINO or SwAV ResNet checkpoint "
    "(.pth or .safetensors), or torchvision:NAME.WEIGHTS"
)
TORCHVISION = "torchvision:"
CHECKPOINT = "checkpoint.pt"  # the run-directory file name (engine/io.py)
# The only non-tensor types an --init file may hold: DINO's argparse Namespace (a plain attribute
# bag) and the NumPy RNG state of older deepclust checkpoints.
INIT_GLOBALS = [*LEGACY_GLOBALS, argparse.Namespace]
# Prefixes of the encoder inside SSL checkpoints, most specific first.
_PREFIXES = (
    ("module.encoder_q.", "moco_v2"),
    ("encoder_q.", "moco_v2"),
    ("module.base_encoder.", "moco_v3"),
    ("base_encoder.", "moco_v3"),
    ("module.backbone.", "dino"),
    ("backbone.", "dino"),
)
# First name components of projection / prediction heads and classifiers: never backbone weights.
_HEADS = ("fc", "projection_head", "prototypes", "head", "predictor")
_DEPTHS: dict[tuple[tuple[int, ...], bool], str] = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torchvision_weights(spec: str) -> tuple[dict[str, torch.Tensor], Path]:
    """``resnet50.IMAGENET1K_V2`` -> (state dict, cached file), through torchvision's cache."""
    from torchvision import models as tvm

    arch, _, name = spec.partition(".")
    if arch not in ("resnet18", "resnet34", "resnet50"):
        raise CheckpointError(
            f"--init {TORCHVISION}{spec}: deepclust's backbones are resnet18, resnet34 and resnet50; "
            f"use e.g. {TORCHVISION}resnet50.IMAGENET1K_V2"
        )
    enum = tvm.get_model_weights(arch)
    try:
        weights = enum[name or "DEFAULT"]
    except KeyError:
        names = ", ".join(w.name for w in enum)
        raise CheckpointError(
            f"--init {TORCHVISION}{spec}: {arch} has no weights '{name}'; choose one of {names} or DEFAULT"
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    was_cached = cached.is_file()
    if not was_cached:
        log.info("downloading %s to torchvision's cache %s", weights.url, cached)
    try:
        # torch.hub prints 'Downloading: ...' itself; keep the CLI's output to its one error line.
        with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
            state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)  # hash: in the name
    except Exception as exc:  # noqa: BLE001 - no network, a proxy, a bad hash: all mean "not available"
        if was_cached:
            raise CheckpointError(
                f"torchvision's cached file {cached} cannot be read ({type(exc).__name__}); delete it so that it is "
                f"downloaded again, or pass a file: --init PATH"
            ) from None
        raise CheckpointError(
            f"torchvision weights '{arch}.{weights.name}' are not in torchvision's cache ({cached}) and could not "
            f"be downloaded ({type(exc).__name__}); fetch {weights.url} into that folder, or pass the file: --init PATH"
        ) from None
    return state, cached


def _read_file(path: Path) -> Any:
    """The content of an --init file as tensors and plain data; never a full unpickling."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return read_torch_file(path, "model.init", INIT_GLOBALS)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, a bad header: not readable
        raise CheckpointError(
            f"model.init '{path}' cannot be read ({type(exc).__name__}); it may be truncated or not a safetensors file"
        ) from None


def check_source(source: str) -> None:
    """Fail early (before a long data stage) when a file or run-directory source does not exist."""
    if not source.startswith(TORCHVISION):
        _source_path(source)


def _source_path(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(
            f"model.init: no file or run directory at '{path}'; pass the checkpoint to start from "
            f"(--init PATH or model.init=PATH): {KINDS}"
        )
    return path


def read_source(source: str) -> tuple[Any, Path]:
    """The loaded object and the file it came from (a run directory means its checkpoint)."""
    if source.startswith(TORCHVISION):
        return _torchvision_weights(source[len(TORCHVISION) :])
    path = _source_path(source)
    obj = _read_file(path)
    if isinstance(obj, dict):
        verify_checksum(obj, path)  # a deepclust checkpoint carries one: a damaged file is "corrupt"
    return obj, path


def _tensors(obj: Any) -> dict[str, torch.Tensor]:
    return (
        {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if isinstance(obj, dict)
        else {}
    )


def map_resnet_keys(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """(weights under torchvision's ResNet names without any head, format) of an SSL or
    torchvision checkpoint; a :class:`CheckpointError` when it holds no ResNet."""
    sd = _tensors(obj)
    if isinstance(obj, dict) and not any(k.startswith(("conv1.", "module.")) for k in sd):
        # Training checkpoints wrap the weights: MoCo / SwAV 'state_dict', DINO 'teacher' (what
        # DINO's own evaluation reads) or 'student'.
        for key in ("state_dict", "teacher", "student", "model"):
            if _tensors(obj.get(key)):
                sd = _tensors(obj[key])
                break
    fmt = ""
    for prefix, name in _PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            sd, fmt = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}, name
            break
    if not fmt:
        if any(k.startswith("module.") for k in sd):  # DataParallel / DDP (SwAV's release)
            sd = {k[len("module.") :]: v for k, v in sd.items() if k.startswith("module.")}
        fmt = "swav" if any(k.startswith(("projection_head.", "prototypes.")) for k in sd) else "torchvision"
    weights = {k: v for k, v in sd.items() if k.split(".", 1)[0] not in _HEADS}
    if "conv1.weight" not in weights or not any(k.startswith("layer1.") for k in weights):
        if not isinstance(obj, dict):
            held = f"it holds a {type(obj).__name__}"
        else:
            held = f"first key {next(iter(sd or obj), None)!r}"
        raise CheckpointError(
            f"'{source}' is not a ResNet checkpoint (no conv1.weight / layer1.* keys; {held}); pass {KINDS}"
        )
    log.info(
        "%s: %s layout, %d backbone tensors, %d head tensors dropped", source, fmt, len(weights), len(sd) - len(weights)
    )
    return weights, fmt


def _depth(weights: dict[str, torch.Tensor]) -> str:
    """The torchvision ResNet a set of weights comes from (blocks per stage, bottleneck or not)."""
    blocks = tuple(len({k.split(".")[1] for k in weights if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    return _DEPTHS.get((blocks, any(".conv3." in k for k in weights)), f"a ResNet with {blocks} blocks")


def _fit(
    backbone: nn.Module,
    weights: dict[str, torch.Tensor],
    source: str,
    ckpt: str,
    model: str,
    hint: str,
    prefix: str = "",
) -> None:
    """Load ``weights`` (deepclust backbone names) when every key fits, else name the first misfit
    (without ``prefix``: as the checkpoint spells it)."""
    own = backbone.state_dict()

    def fail(key: str, what: str) -> CheckpointError:
        name = key[len(prefix) :] if key.startswith(prefix) else key
        return CheckpointError(f"the backbone in '{source}' ({ckpt}) does not fit {model}: key '{name}' {what}; {hint}")

    for k, v in weights.items():
        if k not in own:
            raise fail(k, "has no place in the model")
        if own[k].shape != v.shape:
            raise fail(k, f"has shape {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in the model")
    # BatchNorm's num_batches_tracked is absent from some releases; it never affects training here.
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    if missing:
        raise fail(missing[0], "is missing from the checkpoint")
    backbone.load_state_dict({**own, **weights})


def init_backbone(backbone: nn.Module, source: str, arch: str, stem: str) -> dict[str, str]:
    """Initialise ``backbone`` (``model.backbone`` = ``arch``, ``model.stem`` = ``stem``) from
    ``source``; returns {source, file, format, sha256}: where the initial weights came from."""
    obj, path = read_source(source)
    model = f"model.backbone={arch} with stem={stem}"
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "config" in obj:
        fmt = "deepclust"
        weights = {k[len("backbone.") :]: v for k, v in obj["model"].items() if k.startswith("backbone.")}
        if not weights:
            raise CheckpointError(f"'{source}' holds no backbone weights")
        theirs = obj["config"].get("model", {})
        ckpt = f"deepclust {theirs.get('backbone')} with stem={theirs.get('stem')}"
        _fit(backbone, weights, source, ckpt, model, "use the same model.backbone and stem")
    else:
        tv, fmt = map_resnet_keys(obj, source)
        depth = _depth(tv)
        ckpt = f"{fmt} {depth}"
        if not isinstance(backbone, ResNetBackbone):
            raise CheckpointError(
                f"'{source}' holds {ckpt} weights but model.backbone is {arch}; set model.backbone={depth}"
            )
        hint = f"set model.backbone={depth}"
        k = "conv1.weight"
        if tv[k].shape[-1] == 7 and stem != "imagenet":
            hint = "ImageNet-trained ResNets have the 7x7 stem: set model.stem=imagenet"
        elif tv[k].shape[1] != backbone.state_dict()[f"net.{k}"].shape[1]:
            hint = f"the checkpoint takes {tv[k].shape[1]}-channel images"
        _fit(backbone, {f"net.{k}": v for k, v in tv.items()}, source, ckpt, model, hint, prefix="net.")
    record = {"source": source, "file": str(path), "format": fmt, "sha256": _sha256(path)}
    log.info("backbone initialised from %s (%s, sha256 %s)", source, fmt, record["sha256"][:16])
    return record
