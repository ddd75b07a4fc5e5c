"""IDFD losses against direct transcriptions of spec/idfd.md section 3 (random inputs)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from deepclust.losses import feature_decorrelation_loss, instance_discrimination_loss


def ref_instance_discrimination(v: torch.Tensor, m: torch.Tensor, idx: torch.Tensor, tau: float) -> torch.Tensor:
    """L_ID = -(1/B) sum_b log [exp(v_b.m_ib/tau) / sum_j exp(v_b.m_j/tau)], one sample at a time."""
    total = 0.0
    for b in range(v.shape[0]):
        num = torch.exp(torch.dot(v[b], m[idx[b]]) / tau)
        den = sum(torch.exp(torch.dot(v[b], m[j]) / tau) for j in range(m.shape[0]))
        total = total - torch.log(num / den)
    return total / v.shape[0]


def ref_feature_decorrelation(v: torch.Tensor, tau2: float) -> torch.Tensor:
    """L_FD = (1/d) sum_l [-f_l.f_l/tau2 + log sum_m exp(f_l.f_m/tau2)], f_l = column l / its norm."""
    d = v.shape[1]
    cols = [v[:, l] / torch.sqrt((v[:, l] ** 2).sum()) for l in range(d)]
    total = 0.0
    for l in range(d):
        total = (
            total
            - torch.dot(cols[l], cols[l]) / tau2
            + torch.log(sum(torch.exp(torch.dot(cols[l], cols[m]) / tau2) for m in range(d)))
        )
    return total / d


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.07])
@pytest.mark.parametrize("seed", [0, 1])
def test_instance_discrimination_value_and_gradient(tau: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, N, d = 6, 20, 8
    v = F.normalize(torch.randn(B, d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    m = torch.randn(N, d, generator=g, dtype=torch.float64)
    idx = torch.randperm(N, generator=g)[:B]
    loss = instance_discrimination_loss(v, m, idx, tau)
    ref = ref_instance_discrimination(v.detach(), m, idx, tau)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    # Analytic gradient: (sum_j P_bj m_j - m_{i_b}) / (B tau), P = softmax(v M^T / tau).
    p = torch.softmax(v.detach() @ m.t() / tau, dim=1)
    expected = (p @ m - m[idx]) / (B * tau)
    torch.testing.assert_close(v.grad, expected.to(v.grad.dtype), rtol=1e-4, atol=1e-6)


def test_memory_receives_no_gradient() -> None:
    v = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    m = torch.randn(10, 8, requires_grad=True)
    instance_discrimination_loss(v, m, torch.tensor([0, 3, 5, 9])).backward()
    assert m.grad is None
    assert v.grad is not None and v.grad.abs().sum() > 0


@pytest.mark.parametrize("B,d", [(16, 8), (10, 12), (32, 5)])
def test_feature_decorrelation_value_and_gradient(B: int, d: int) -> None:
    g = torch.Generator().manual_seed(B * d)
    v1 = F.normalize(torch.randn(B, d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    v2 = v1.detach().clone().requires_grad_()
    ours = feature_decorrelation_loss(v1, 2.0)
    ref = ref_feature_decorrelation(v2, 2.0)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    ours.backward()
    ref.backward()
    # Gradients flow through both normalisations; they must agree with the transcription's.
    torch.testing.assert_close(v1.grad.double(), v2.grad, rtol=1e-4, atol=1e-7)


def test_feature_decorrelation_extremes() -> None:
    d, tau2 = 128, 2.0
    # Identical columns (collapsed features): L_FD = log d.
    col = torch.randn(64, 1)
    assert feature_decorrelation_loss(col.repeat(1, d), tau2).item() == pytest.approx(math.log(d), rel=1e-5)
    # Orthonormal columns (B >= d): L_FD = -1/tau2 + log(e^(1/tau2) + d - 1) ~ 4.357.
    q, _ = torch.linalg.qr(torch.randn(256, d, dtype=torch.float64))
    expected = -1 / tau2 + math.log(math.exp(1 / tau2) + d - 1)
    assert feature_decorrelation_loss(q, tau2).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(4.357, abs=1e-3)
