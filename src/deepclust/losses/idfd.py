"""IDFD losses (Tao et al., ICLR 2021; spec/idfd.md section 3).

Precision: both losses run entirely in float32 (float64 inputs stay float64) with autocast
disabled for the inputs' device, so the B x N logits, their log-sum-exp over the N memory
rows (spec/idfd.md pitfall 5) and the d x d Gram matrix are never bf16/fp16, whatever the
caller's autocast; bf16/fp16 inputs are promoted and get gradients in their own dtype back.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from deepclust.precision import fp32, full


def instance_discrimination_loss(
    features: torch.Tensor, memory: torch.Tensor, indices: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Full-softmax instance discrimination against a memory bank.

    L_ID = -(1/B) sum_b log softmax_j(v_b . m_j / tau)[i_b]  over all N memory rows.

    ``memory`` (N, d) is a constant (no gradient reaches it); ``features`` (B, d) are the
    L2-normalised outputs v_b and ``indices`` (B,) their rows in the bank. Float32 throughout,
    autocast off (see the module docstring).
    """
    with fp32(features):
        v = full(features)
        logits = v @ full(memory.detach()).to(v.dtype).t() / temperature
        return F.cross_entropy(logits, indices)


def feature_decorrelation_loss(features: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Softmax-formulated feature decorrelation over the batch.

    f_l = V[:, l] / ||V[:, l]|| (each feature dimension normalised over the batch),
    L_FD = (1/d) sum_l [ -f_l.f_l / tau2 + log sum_m exp(f_l.f_m / tau2) ],
    i.e. cross-entropy of the d x d Gram matrix / tau2 against the identity, mean over d.
    Float32 throughout, autocast off (see the module docstring).
    """
    with fp32(features):
        f = F.normalize(full(features), dim=0)
        gram = f.t() @ f / temperature
        return F.cross_entropy(gram, torch.arange(gram.shape[0], device=gram.device))
