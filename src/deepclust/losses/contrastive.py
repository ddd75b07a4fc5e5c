"""Instance-wise contrastive loss (SimCLR NT-Xent), as used by CC and AnchorCL (spec/anchor.md 3.5).

Precision: float32 throughout (float64 stays) with autocast disabled for the inputs' device:
the 2B x 2B similarity / tau and its log-sum-exp; bf16/fp16 inputs are promoted.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from deepclust.precision import fp32
from deepclust.precision import full as _full_precision


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy over the 2B views.

    With u = [normalize(z1); normalize(z2)] (2B x d) and S = u u^T / tau, for every row a the
    positive is its other view pos(a) = a +- B, and the 2B - 2 other rows are negatives:

        L = (1 / 2B) sum_a [ -S_{a,pos(a)} + log sum_{b != a} exp(S_ab) ]

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML
    2020; CC's instance loss (Li et al., AAAI 2021); AnchorCL's L_ins (Sundareswaran et al.,
    2021), tau = 0.5. Any batch size B >= 1 works (no precomputed mask, unlike the released
    code, which needs ``drop_last``). Inputs need not be normalised: they are L2-normalised here.
    Float32, autocast off.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"nt_xent_loss needs two (B, d) tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    with fp32(z1):
        b = z1.shape[0]
        u = F.normalize(torch.cat([_full_precision(z1), _full_precision(z2)]), dim=1)
        sim = u @ u.t() / temperature
        # the self-similarity is no candidate: -inf drops it from the log-sum-exp
        eye = torch.eye(2 * b, dtype=torch.bool, device=sim.device)
        sim = sim.masked_fill(eye, float("-inf"))
        pos = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(sim.device)
        return F.cross_entropy(sim, pos)
