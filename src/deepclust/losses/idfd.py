"""IDFD losses (Tao et al., ICLR 2021; spec/idfd.md section 3)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def instance_discrimination_loss(
    features: torch.Tensor, memory: torch.Tensor, indices: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Full-softmax instance discrimination against a memory bank.

    L_ID = -(1/B) sum_b log softmax_j(v_b . m_j / tau)[i_b]  over all N memory rows.

    ``memory`` (N, d) is a constant (no gradient reaches it); ``features`` (B, d) are the
    L2-normalised outputs v_b and ``indices`` (B,) their rows in the bank. The logits and
    the log-sum-exp are computed in float32 even under autocast (pitfall 5).
    """
    logits = features.float() @ memory.detach().float().t() / temperature
    return F.cross_entropy(logits, indices)


def feature_decorrelation_loss(features: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Softmax-formulated feature decorrelation over the batch.

    f_l = V[:, l] / ||V[:, l]|| (each feature dimension normalised over the batch),
    L_FD = (1/d) sum_l [ -f_l.f_l / tau2 + log sum_m exp(f_l.f_m / tau2) ],
    i.e. cross-entropy of the d x d Gram matrix / tau2 against the identity, mean over d.
    """
    f = F.normalize(features.float(), dim=0)
    gram = f.t() @ f / temperature
    return F.cross_entropy(gram, torch.arange(gram.shape[0], device=gram.device))
