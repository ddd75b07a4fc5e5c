"""SeCu losses (Qian, "Stable Cluster Discrimination for Deep Clustering", ICCV 2023;
spec/secu.md section 4).

Both losses take centres as (K, D) rows (the spec's W is d x K; the library stores its
transpose).

Precision: both losses run entirely in float32 (float64 inputs stay float64) with autocast
disabled for the inputs' device: the similarities x.c / t (t = 0.05 multiplies any bf16
rounding of a cosine by 20), the softmax targets, the log-softmax and the scatter of the live
positive logit (which under autocast met bf16 logits and failed). bf16/fp16 inputs are
promoted; their gradients come back in their own dtype.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from deepclust.precision import fp32
from deepclust.precision import full as _fp


def secu_center_loss(
    features: torch.Tensor,
    centers: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.05,
    *,
    detach_negatives: bool = True,
) -> torch.Tensor:
    """Hardness-aware centre loss: cross entropy where only the assigned centre is live.

    With x_i = features[i] (held constant), c = normalize(centers, rows), c̄ = c with its
    gradient stopped and y_i = labels[i]:

        l_c = -(1/B) sum_i log [ exp(x_i.c_{y_i}/t) / (exp(x_i.c_{y_i}/t) + sum_{k != y_i} exp(x_i.c̄_k/t)) ]

    so dl/dc_y = -(1 - p_y) x / t on the assigned centre and 0 on every other centre; the
    gradient then flows through the row normalisation into ``centers``. ``features`` (B, D)
    should be unit-norm; no gradient reaches them. ``detach_negatives=False`` gives plain cross
    entropy (the paper's unstable ablation, secu.md pitfall 8). Float32, autocast off.
    """
    with fp32(centers):
        return _center_loss(features, centers, labels, temperature, detach_negatives)


def _center_loss(
    features: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, temperature: float, detach_negatives: bool
) -> torch.Tensor:
    x = features.detach()
    c = F.normalize(_fp(centers), dim=1)
    x = _fp(x).to(c.dtype)
    if not detach_negatives:
        return F.cross_entropy(x @ c.t() / temperature, labels)
    # The logit matrix is a constant copy; the live positive logits are written back into it.
    logits = (x @ c.detach().t()) / temperature
    positive = (x * c[labels]).sum(dim=1) / temperature
    logits = logits.scatter(1, labels.view(-1, 1), positive.view(-1, 1))
    return F.cross_entropy(logits, labels)


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def secu_representation_loss(
    x1: torch.Tensor,
    x2: torch.Tensor,
    centers: torch.Tensor,
    prev_labels: torch.Tensor,
    temperature: float = 0.05,
    label_weight: float = 0.2,
    *,
    target_sources: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Representation loss against fixed centres, with mixed soft targets.

    z^(v) = x^(v) C^T / t with C = ``centers`` (K, D) held constant (SeCu passes the epoch-start
    snapshot of the normalised centres; it is used as given), and with lambda = label_weight:

        T^(1) = lambda onehot(y_prev) + (1 - lambda) softmax(z^(2))     (held constant)
        T^(2) = lambda onehot(y_prev) + (1 - lambda) softmax(z^(1))     (held constant)
        L = 1/2 [ -mean_i sum_k T^(1)_ik log softmax(z^(1))_ik - mean_i sum_k T^(2)_ik log softmax(z^(2))_ik ]

    i.e. the mean of the two views' soft cross entropies. ``target_sources`` (s1, s2) replaces
    the features whose softmax builds T^(1) and T^(2) (default (x2, x1)); SeCu's ImageNet
    variant uses it so the predictor branch takes its targets from the other view's
    projection branch. Float32, autocast off.
    """
    with fp32(centers):
        return _representation_loss(x1, x2, centers, prev_labels, temperature, label_weight, target_sources)


def _representation_loss(
    x1: torch.Tensor,
    x2: torch.Tensor,
    centers: torch.Tensor,
    prev_labels: torch.Tensor,
    temperature: float,
    label_weight: float,
    target_sources: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    c = _fp(centers.detach())
    z1 = _fp(x1).to(c.dtype) @ c.t() / temperature
    z2 = _fp(x2).to(c.dtype) @ c.t() / temperature
    s1, s2 = target_sources if target_sources is not None else (x2, x1)
    with torch.no_grad():
        onehot = F.one_hot(prev_labels, c.shape[0]).to(c.dtype)
        t1 = label_weight * onehot + (1 - label_weight) * F.softmax(
            _fp(s1.detach()).to(c.dtype) @ c.t() / temperature, dim=1
        )
        t2 = label_weight * onehot + (1 - label_weight) * F.softmax(
            _fp(s2.detach()).to(c.dtype) @ c.t() / temperature, dim=1
        )
    return 0.5 * (_soft_cross_entropy(z1, t1) + _soft_cross_entropy(z2, t2))


__all__ = ["secu_center_loss", "secu_representation_loss"]
