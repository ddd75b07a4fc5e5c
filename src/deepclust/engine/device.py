"""Device and precision choice, and seeding."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from deepclust.engine.amp import resolve_amp
from deepclust.errors import ConfigError
from deepclust.precision import fp32, full  # noqa: F401  (re-exported: the engine's precision helpers)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else MPS, else CPU. An unavailable device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but it is not available; use --device cpu")
    return dev


def amp_dtype(setting: str, device: torch.device, keep_fp16: bool = False) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: float32); the rule, per device and
    processor, is :func:`deepclust.engine.amp.resolve_amp`'s (``auto``: bf16 on CUDA and on CPUs
    with bf16 units, float32 elsewhere)."""
    return resolve_amp(setting, device, keep_fp16).dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from the one run seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global state is what third-party code draws from
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's global RNGs as tensors, numbers and tuples,
    so a checkpoint holding them loads with ``torch.load(weights_only=True)``."""
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict:
    """NumPy's legacy global MT19937 state with its 624-word key as an int64 tensor (lossless:
    the words are uint32); a NumPy array would need pickle's NumPy classes to load."""
    st = np.random.get_state(legacy=False)  # noqa: NPY002 - checkpointing the global state
    return {
        "bit_generator": st["bit_generator"],
        "key": torch.from_numpy(st["state"]["key"].astype(np.int64)),
        "pos": int(st["state"]["pos"]),
        "has_gauss": int(st["has_gauss"]),
        "gauss": float(st["gauss"]),
    }


def _set_numpy_state(state: dict | tuple) -> None:
    """Restore :func:`_numpy_state`, or the tuple of ``np.random.get_state()`` that checkpoints
    of deepclust <= dd4f959 hold."""
    if isinstance(state, dict):
        key = state["key"].cpu().numpy().astype(np.uint32)
        state = {
            "bit_generator": state["bit_generator"],
            "state": {"key": key, "pos": int(state["pos"])},
            "has_gauss": int(state["has_gauss"]),
            "gauss": float(state["gauss"]),
        }
    np.random.set_state(state)  # noqa: NPY002 - restoring the global state


def set_rng_state(state: dict) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded onto a GPU moves these too
    if "cuda" in state and torch.cuda.is_available():
        # a run resumed on another machine may see fewer GPUs: restore those it has
        for i, s in enumerate(list(state["cuda"])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)
