"""SCAN's clustering loss (Van Gansbeke et al., "SCAN: Learning to Classify Images without
Labels", ECCV 2020, eq. 2).

For a batch of anchors X and one mined neighbour k of each, with Phi the cluster head's
softmax over C clusters:

    L = -1/|B| sum_X log <Phi(X), Phi(k)>  +  lambda * sum_c Phi'_c log Phi'_c,
    Phi'_c = 1/|B| sum_X Phi_c(X)

The first term makes a sample and its neighbour agree confidently; the second, the negative
entropy of the mean anchor prediction, keeps every cluster in use (the paper's lambda: 5).
Precision: float32 with autocast off (the softmax, the log of a dot product of probabilities
that can approach 0, and the entropy); bf16 inputs are promoted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepclust.precision import fp32
from deepclust.precision import full as _full_precision

__all__ = ["scan_loss"]

#: floor inside both logarithms, so a sample whose neighbour's prediction is orthogonal to its
#: own gives a large finite loss, not inf
LOG_EPS = 1e-8


def scan_loss(
    anchor_logits: torch.Tensor, neighbor_logits: torch.Tensor, entropy_weight: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, consistency, entropy) for logits (B, C) of anchors and their neighbours.

    ``total = consistency - entropy_weight * entropy``; consistency is
    ``-mean_b log sum_c p_bc q_bc``, entropy is ``-sum_c pbar_c log pbar_c`` of the mean anchor
    probability ``pbar`` (maximised). Gradients flow through both views, as in the paper.
    """
    with fp32(anchor_logits):
        p = F.softmax(_full_precision(anchor_logits).float(), dim=1)
        q = F.softmax(_full_precision(neighbor_logits).float(), dim=1)
        consistency = -torch.log((p * q).sum(dim=1).clamp_min(LOG_EPS)).mean()
        pbar = p.mean(dim=0)
        entropy = -(pbar * torch.log(pbar.clamp_min(LOG_EPS))).sum()
        return consistency - entropy_weight * entropy, consistency, entropy
