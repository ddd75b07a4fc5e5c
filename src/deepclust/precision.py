"""Full-precision blocks inside mixed-precision training.

Under ``torch.autocast`` a matmul runs in bf16/fp16 whatever its inputs are: ``x.float() @
y.float()`` inside autocast still comes out bf16. Precision-critical blocks (logits divided by a
small temperature, log-sum-exps over many columns, Sinkhorn, k-means, KL terms) therefore run
with autocast *disabled* for the input's device type and their inputs cast to float32 (float64
stays float64, so float64 tests keep their precision)::

    with fp32(x):
        logits = full(x) @ full(m).t() / tau  # float32 even inside autocast

Gradients flow through the cast: the backward of ``full`` hands bf16/fp16 gradients back to a
low-precision input. This module depends on torch only, so losses, clustering and methods can
all use it without an import cycle (``deepclust.engine.device`` re-exports it).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["fp32", "full", "device_type_of"]


def device_type_of(obj: Any) -> str:
    """The device type (``"cpu"``, ``"cuda"``, ...) of a tensor, a device or a device string;
    anything else (a numpy array, a list) lives on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.device.type
    if isinstance(obj, torch.device):
        return obj.type
    if isinstance(obj, str):
        return torch.device(obj).type
    return "cpu"


def fp32(where: Any) -> contextlib.AbstractContextManager:
    """A block with autocast disabled on the device type of ``where`` (tensor, device or string):
    every op inside runs in the dtypes of its inputs. A device type without autocast support
    gets a no-op block (nothing there could lower the precision)."""
    try:
        return torch.autocast(device_type=device_type_of(where), enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        return contextlib.nullcontext()


def full(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32/float64 (and integer tensors) stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
