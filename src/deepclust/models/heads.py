"""Heads on top of a backbone."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class NormalizedLinear(nn.Module):
    """``normalize(Linear(x))``: IDFD's head, a single Linear(out_dim, d) then L2 norm."""

    def __init__(self, in_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(x), dim=1)


def mlp_projector(in_dim: int, hidden: int, out_dim: int, batch_norm: bool = True, n_hidden: int = 1) -> nn.Sequential:
    """Linear -> [BN] -> ReLU (repeated ``n_hidden`` times) -> Linear; the usual projection head."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_hidden):
        layers.append(nn.Linear(d, hidden))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU(inplace=True))
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)
