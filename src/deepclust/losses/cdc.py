"""CDC losses (Ding et al., "Contrastive Representation Disentanglement for Clustering",
arXiv 2306.05439, 2023; spec/cdc.md section 3).

RECONSTRUCTION: the paper's body was not available; these are the spec's reconstruction
consistent with the abstract, not the paper's verified formulas.

The representation of a view is r = [p ; z]: p (B, K) a categorical probability vector (the
cluster head), z (B, D) an instance embedding. All functions are pure (no state, follow the
inputs' device).

Precision: every function runs entirely in float32 (float64 inputs stay float64) with autocast
disabled for the inputs' device: the similarity s(a, b) (a /tau_z = 0.5 scaling and, for
``multiplicative``, a log of p.p near 0), the log-sum-exp of NT-Xent, the swapped-prediction
and entropy terms and the unrolled Sinkhorn (exp(scores / 0.05)). bf16/fp16 inputs are
promoted; their gradients come back in their own dtype.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from deepclust.errors import ConfigError
from deepclust.precision import fp32
from deepclust.precision import full as _f32

__all__ = [
    "cdc_contrastive_loss",
    "cdc_entropy_loss",
    "cdc_similarity",
    "cdc_sinkhorn_soft",
    "cdc_swapped_prediction_loss",
]

_COMBINE = ("additive", "multiplicative")


def cdc_similarity(
    p_a: torch.Tensor,
    z_a: torch.Tensor,
    p_b: torch.Tensor,
    z_b: torch.Tensor,
    tau_p: float = 1.0,
    tau_z: float = 0.5,
    combine: str = "additive",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Pairwise similarities s (Na, Nb) between rows of a and rows of b; z already normalised.

    additive (Reading A, spec 3.2):        s = p_a.p_b / tau_p + z_a.z_b / tau_z
    multiplicative (Reading B, spec 3.5):  s = log(p_a.p_b + eps) + z_a.z_b / tau_z

    Float32 (float64 stays), autocast off.
    """
    if combine not in _COMBINE:
        raise ConfigError(f"combine must be one of {', '.join(_COMBINE)}, got {combine!r}")
    with fp32(p_a):
        pp = _f32(p_a) @ _f32(p_b).t()
        zz = _f32(z_a) @ _f32(z_b).t() / tau_z
        if combine == "additive":
            return pp / tau_p + zz
        return torch.log(pp + eps) + zz


def cdc_contrastive_loss(
    p1: torch.Tensor,
    z1: torch.Tensor,
    p2: torch.Tensor,
    z2: torch.Tensor,
    tau_p: float = 1.0,
    tau_z: float = 0.5,
    *,
    combine: str = "additive",
    eps: float = 1e-6,
    neg_p: torch.Tensor | None = None,
    neg_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """CDC contrastive loss over the 2B views, as NT-Xent (spec/cdc.md 3.2).

    With rows a = 1..2B (view 1 then view 2), a+ the other view of the same image and

        s(a, b) = p_a.p_b / tau_p + z_a.z_b / tau_z       (combine="additive", the default)

        L_con = (1/(2B)) sum_a [ -s(a, a+) + log sum_{b != a} exp s(a, b) ].

    p1, p2 (B, K) are probability vectors (not normalised here); z1, z2 (B, D) are
    L2-normalised inside. Since exp s(a, b) = exp(p_a.p_b / tau_p) * exp(z_a.z_b / tau_z), this
    is an instance InfoNCE on z in which each negative b carries the weight
    w_ab = exp(p_a.p_b / tau_p) in [1, e^(1/tau_p)]: negatives predicted in a's cluster (hard
    negatives) are up-weighted (spec 3.3). ``combine="multiplicative"`` uses
    s = log(p_a.p_b + eps) + z_a.z_b / tau_z instead (spec 3.5; tau_p is then unused).

    ``neg_p`` (Q, K) and ``neg_z`` (Q, D), if given, are extra negatives (a MoCo-style queue):
    they join every anchor's denominator, held constant (no gradient).
    """
    if p1.shape != p2.shape or z1.shape != z2.shape or p1.shape[0] != z1.shape[0]:
        raise ConfigError(
            f"cdc_contrastive_loss: shapes must match, got p1 {tuple(p1.shape)}, p2 {tuple(p2.shape)}, "
            f"z1 {tuple(z1.shape)}, z2 {tuple(z2.shape)}"
        )
    with fp32(p1):
        b = p1.shape[0]
        p = torch.cat([_f32(p1), _f32(p2)])
        z = F.normalize(torch.cat([_f32(z1), _f32(z2)]), dim=1)
        s = cdc_similarity(p, z, p, z, tau_p, tau_z, combine, eps)
        # b != a: the anchor itself never enters its own denominator.
        s = s.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=s.device), float("-inf"))
        if (neg_p is None) != (neg_z is None):
            raise ConfigError("cdc_contrastive_loss: pass both neg_p and neg_z, or neither")
        if neg_p is not None and neg_z is not None and neg_p.shape[0] > 0:
            nz = F.normalize(_f32(neg_z).detach(), dim=1)
            s = torch.cat([s, cdc_similarity(p, z, _f32(neg_p).detach(), nz, tau_p, tau_z, combine, eps)], dim=1)
        target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(s.device)
        return F.cross_entropy(s, target)


def cdc_swapped_prediction_loss(
    log_p1: torch.Tensor, log_p2: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor
) -> torch.Tensor:
    """Swapped prediction with stop-gradient equipartitioned targets (spec 3.6, as SwAV):

        L_eq = -(1/(2B)) sum_n [ sum_k Q2_nk log p1_nk + sum_k Q1_nk log p2_nk ]

    log_p1, log_p2 (B, K) are log-probabilities (log_softmax of the head's logits, for
    stability); q1, q2 (B, K) the Sinkhorn targets of view 1 / view 2, held constant.
    """
    with fp32(log_p1):
        b = log_p1.shape[0]
        q1, q2 = _f32(q1).detach(), _f32(q2).detach()
        return -((q2 * _f32(log_p1)).sum() + (q1 * _f32(log_p2)).sum()) / (2 * b)


def cdc_entropy_loss(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Marginal-entropy equipartition (spec 3.6 alternative, CC/SCAN style), without its weight:

        p_bar = mean of p over the 2B rows;  L = sum_k p_bar_k log(K p_bar_k) = log K - H(p_bar) >= 0,

    zero exactly at uniform cluster usage.
    """
    with fp32(p1):
        p_bar = torch.cat([_f32(p1), _f32(p2)]).mean(dim=0)
        k = p_bar.shape[0]
        return (p_bar * torch.log(p_bar.clamp_min(1e-12) * k)).sum()


def cdc_sinkhorn_soft(scores: torch.Tensor, n_iters: int = 3, epsilon: float = 0.05) -> torch.Tensor:
    """Differentiable Sinkhorn-Knopp (``sinkhorn_mode="similarity"``, spec 3.6).

    The same log-domain arithmetic as :func:`deepclust.cluster.sinkhorn`: from
    log Q = scores / epsilon, ``n_iters`` times give every column (cluster) mass 1/K and every
    row mass 1/n, return n * Q (rows sum to 1) -- but gradients flow through the unrolled
    iterations. Computed in float32 at least.
    """
    with fp32(scores):
        n, k = scores.shape
        log_q = _f32(scores) / float(epsilon)
        log_q = log_q - log_q.max().detach()  # a global shift: changes nothing, keeps exp in range
        for _ in range(int(n_iters)):
            log_q = log_q - (torch.logsumexp(log_q, dim=0, keepdim=True) + math.log(k))
            log_q = log_q - (torch.logsumexp(log_q, dim=1, keepdim=True) + math.log(n))
        if n_iters == 0:
            log_q = log_q - (torch.logsumexp(log_q, dim=1, keepdim=True) + math.log(n))
        return torch.exp(log_q + math.log(n))
