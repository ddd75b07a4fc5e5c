"""LARS: layer-wise adaptive rate scaling (You et al. 2017, arXiv 1708.03888).

The variant SeCu's ImageNet script uses (spec/secu.md section 10: trust coefficient 0.001,
momentum 0.9, weight decay 1e-6 on tensors with ndim > 1 only), which is the one of the
MoCo-v3 / SimSiam-style codes. Per parameter w with gradient g, in each group (lr, momentum m,
weight decay wd, trust coefficient eta):

    if w.ndim > 1:                     # weights of convolutions and linear layers, SeCu's centres
        d = g + wd * w
        d = d * (eta * ||w|| / ||d||)  if ||w|| > 0 and ||d|| > 0, else d unchanged
    else:                              # biases and BatchNorm weights / biases: no decay, no scaling
        d = g
    mu = m * mu + d                    # mu starts at 0
    w = w - lr * mu

torch has no LARS and the project adds no dependency for one, hence this short class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["LARS"]


class LARS(torch.optim.Optimizer):
    """LARS with momentum; tensors with ndim <= 1 get neither weight decay nor adaptation."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, momentum >= 0, weight_decay >= 0 and trust_coefficient > 0, got "
                f"{lr}, {momentum}, {weight_decay}, {trust_coefficient}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]  # torch types step as two overloads (closure or None)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=wd)
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    # torch.where, not a Python `if`: no host synchronisation per tensor.
                    trust = torch.where((w_norm > 0) & (d_norm > 0), eta * w_norm / d_norm, torch.ones_like(w_norm))
                    d = d.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(m).add_(d)
                p.add_(buf, alpha=-lr)
        return loss
