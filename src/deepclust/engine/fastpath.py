"""Fast-path switches: channels-last, ``torch.compile``, fused optimisers, device-resident data.

Each switch is ``"auto"``, ``true`` or ``false`` in the config; ``auto`` resolves per device:

- ``train.channels_last``: on for backbones that hold a ``Conv2d``, on CUDA (cuDNN's NHWC
  kernels, above all under bf16 autocast) and on the CPU (oneDNN's NHWC kernels: on a 2-core
  AMD EPYC with AVX-512, fp32 forward + backward + SGD at batch 128 went from 3.14 to 2.51 s
  for ResNet-18 at 32 px and from 66 to 48 ms for the small CNN at 28 px, medians of 12 and
  30 interleaved steps); off on MPS, whose NHWC support is partial.
- ``train.compile``: ``torch.compile`` of the backbone, on only for CUDA runs with Triton
  installed and at least ``COMPILE_MIN_STEPS`` optimiser steps, where the one-off compile time
  (about a minute) is a few per cent of the run; off on the CPU and for short runs (tests,
  demos). On the CPU, measured on a 2-core Xeon with AMX (torch 2.14.1, one thread, process CPU
  time per forward + backward + SGD step, channels-last, loaded machine), inductor gained
  nothing over eager oneDNN: small CNN 28 px batch 128 528 vs 536 images/s in float32 and 1173
  vs 1194 under bf16; ResNet-18 32 px batch 64 36.6 vs 36.1 and 88.0 vs 87.9; its first two
  steps took 66-79 s (small CNN) and 132-148 s (ResNet-18) to compile.
- ``optim.fused``: the fused (single-kernel) update of SGD / Adam / AdamW where torch has it
  for the device (CUDA, and the CPU in recent torch); otherwise the ``foreach`` update on
  CUDA and the default elsewhere. ``true`` insists and fails clearly when it is unsupported.
- ``train.data_on_device``: the training images stay one uint8 tensor on the device when they
  fit (``auto``: at most ``RESIDENT_FRACTION`` of the free device memory; always on the CPU,
  where they already are); otherwise :mod:`deepclust.engine.loader` streams batches from
  pinned host memory.

:func:`apply_fast_paths` changes the method in place and keeps its ``state_dict`` keys, so
checkpoints move freely between runs with and without the fast paths.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepclust.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "COMPILE_MIN_STEPS",
    "RESIDENT_FRACTION",
    "FastPaths",
    "apply_fast_paths",
    "fused_supported",
    "make_optimizer",
    "resolve_channels_last",
    "resolve_compile",
    "resolve_data_on_device",
    "resolve_fused",
    "resolve_switch",
]

COMPILE_MIN_STEPS = 5000
RESIDENT_FRACTION = 0.5


@dataclass
class FastPaths:
    """The resolved switches of a run (what ``auto`` became on this device)."""

    channels_last: bool
    compile: bool
    fused: bool
    data_on_device: bool

    def as_dict(self) -> dict[str, bool]:
        return {
            "channels_last": self.channels_last,
            "compile": self.compile,
            "fused": self.fused,
            "data_on_device": self.data_on_device,
        }


def resolve_switch(value: Any, key: str) -> bool | None:
    """``"auto"`` -> None; true/false (or their YAML/CLI spellings) -> bool; else ConfigError."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text in ("true", "on", "yes", "1"):
        return True
    if text in ("false", "off", "no", "0"):
        return False
    raise ConfigError(f"{key} must be auto, true or false, got {value!r}")


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def resolve_channels_last(value: Any, device: torch.device, backbone: nn.Module) -> bool:
    """channels-last for conv backbones: ``auto`` = on CUDA and the CPU (see the module docstring)."""
    forced = resolve_switch(value, "train.channels_last")
    if not _has_conv(backbone):
        return False  # an MLP on feature vectors has no 4-D tensors to re-order
    return device.type in ("cuda", "cpu") if forced is None else forced


def resolve_compile(value: Any, device: torch.device, total_steps: int) -> bool:
    """``auto``: CUDA with Triton and at least :data:`COMPILE_MIN_STEPS` steps."""
    forced = resolve_switch(value, "train.compile")
    if forced is not None:
        return forced
    has_triton = importlib.util.find_spec("triton") is not None
    return device.type == "cuda" and has_triton and total_steps >= COMPILE_MIN_STEPS


def fused_supported(name: str, device: torch.device) -> bool:
    """Whether torch has a fused ``name`` (sgd/adam/adamw) update for parameters on ``device``.

    Probed by building the optimiser on one parameter of that device: the public way to ask,
    and it follows whatever the installed torch supports.
    """
    cls = _OPTIMIZERS.get(name)
    if cls is None:
        return False
    p = nn.Parameter(torch.zeros(1, device=device))
    try:
        cls([p], lr=0.1, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def resolve_fused(value: Any, name: str, device: torch.device) -> bool:
    """``auto``: fused where supported; ``true`` on an unsupported device is a ConfigError."""
    forced = resolve_switch(value, "optim.fused")
    supported = fused_supported(name, device)
    if forced and not supported:
        raise ConfigError(
            f"optim.fused=true but this torch has no fused {name} for {device.type}; use optim.fused=auto"
        )
    return supported if forced is None else forced


def resolve_data_on_device(value: Any, device: torch.device, nbytes: int) -> bool:
    """``auto``: resident when ``nbytes`` is at most :data:`RESIDENT_FRACTION` of the free memory
    of a CUDA device; always on the CPU (the images are in host memory already)."""
    forced = resolve_switch(value, "train.data_on_device")
    if forced is not None:
        return forced
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_FRACTION * free


_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {  # constructors taking lr, fused, foreach
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def make_optimizer(
    name: str, groups: list[dict[str, Any]], device: torch.device, fused: Any = "auto", **kwargs: Any
) -> torch.optim.Optimizer:
    """``torch.optim.<name>(groups, **kwargs)`` with the fused or foreach update where it applies.

    The fused and the for-loop updates compute the same formula (up to float rounding); fused
    runs one kernel over all parameters instead of a few per tensor.
    """
    if name not in _OPTIMIZERS:
        raise ConfigError(
            f"optim.name for make_optimizer must be sgd, adam or adamw (lars: engine/lars.LARS), got '{name}'"
        )
    cls = _OPTIMIZERS[name]
    if resolve_fused(fused, name, device):
        opt = cls(groups, fused=True, **kwargs)
        if name == "sgd":
            _zero_momentum_buffers(opt)
        return opt
    if device.type == "cuda":
        return cls(groups, foreach=True, **kwargs)  # multi-tensor kernels: fewer launches
    return cls(groups, **kwargs)


def _zero_momentum_buffers(opt: torch.optim.Optimizer) -> None:
    """Start fused SGD's momentum buffers at zero (in the parameters' dtype and layout).

    torch's fused SGD allocates the buffers of its first step with ``empty_like`` and fills them
    in the kernel; when ``GradScaler`` skips that step (an fp16 overflow, which the first steps at
    scale 2^16 usually are), the kernel skips too and the next step reads uninitialised memory:
    SeCu's centres went to NaN under fp16 on the CPU (torch 2.14, tests/engine/test_fastpath.py). The
    allocation is in torch's Python code for every device, so CUDA's fp16 runs meet it too. With
    zero buffers and no dampening, ``b = m b + g`` gives ``b = g`` on the first step, the same
    update as the unfused first step.
    """
    for group in opt.param_groups:
        if group.get("momentum", 0) and not group.get("dampening", 0):
            for p in group["params"]:
                opt.state[p].setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))


def _nhwc_input(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: 4-D inputs in channels-last (module level, so the module pickles)."""
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def _to_channels_last(module: nn.Module) -> None:
    """NHWC weights, and NHWC inputs through a pre-hook (the first conv sees NHWC too)."""
    module.to(memory_format=torch.channels_last)
    module.register_forward_pre_hook(_nhwc_input)


def apply_fast_paths(
    method: nn.Module, cfg: Any, device: torch.device, n_samples: int, data_bytes: int | None = 0
) -> FastPaths:
    """Apply ``train.channels_last`` and ``train.compile`` to ``method.backbone`` (after
    ``method.to(device)``) and resolve ``optim.fused`` and ``train.data_on_device``.

    ``n_samples`` (training images) sizes the run for the compile rule, ``data_bytes`` (their
    uint8 size; None: streamed from disk) the residency rule. ``nn.Module.compile`` compiles in place, so ``state_dict``
    keys stay those of the eager model.
    """
    t, o = cfg.train, cfg.optim
    backbone = getattr(method, "backbone", None)
    if not isinstance(backbone, nn.Module):
        backbone = method
    steps_per_epoch = -(-n_samples // t.batch_size)
    paths = FastPaths(
        channels_last=resolve_channels_last(t.channels_last, device, backbone),
        compile=resolve_compile(t.compile, device, steps_per_epoch * t.epochs),
        fused=resolve_fused(o.fused, o.name, device),
        # None: streamed from disk, never resident (only the file list is in memory)
        data_on_device=data_bytes is not None and resolve_data_on_device(t.data_on_device, device, data_bytes),
    )
    if paths.channels_last:
        _to_channels_last(backbone)
    if paths.compile:
        backbone.compile()
    log.info("fast paths on %s: %s", device.type, ", ".join(f"{k}={v}" for k, v in paths.as_dict().items()))
    return paths
