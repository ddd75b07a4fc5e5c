"""IDFD's memory bank: initialisation, momentum update after the step, loss sees the old bank."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from deepclust.config import resolve_config
from deepclust.losses import feature_decorrelation_loss, instance_discrimination_loss
from deepclust.methods import DataInfo, create_method


def make_idfd(n: int = 50, d: int = 16, seed: int = 0):
    cfg = resolve_config(
        {"method": "idfd", "model": {"backbone": "small_cnn", "feature_dim": d}, "train": {"seed": seed}}
    )
    info = DataInfo(n_samples=n, n_channels=1, image_size=8, mean=[0.5], std=[0.25], n_clusters=3)
    return create_method(cfg, info)


def test_memory_initialisation_uniform() -> None:
    m = make_idfd(n=4000, d=128).memory
    s = 1 / math.sqrt(128 / 3)
    assert m.abs().max() <= s + 1e-6
    assert m.abs().max() > 0.95 * s
    # E||m||^2 = d * s^2 / 3 = 1 exactly.
    assert (m**2).sum(1).mean().item() == pytest.approx(1.0, abs=0.02)


def test_initial_id_loss_is_about_log_n() -> None:
    """At initialisation L_ID = mean_b [-m_ib.v_b / tau + log sum_j exp(m_j.v_b / tau)]. With the
    bank Uniform(+-s), s = 1/sqrt(d/3), and unit v independent of it, log E exp(m.v / tau) =
    sum_c log(sinh(s v_c / tau) / (s v_c / tau)) ~ s^2 / (6 tau^2) = 1 / (2 d tau^2), so
    L_ID ~ log N + 1 / (2 d tau^2) = log N + 1/256 for the paper's tau = 1, d = 128; a bank of
    another scale or a temperature of 0.1 would move it by 0.17 and 0.39."""
    n, d, b = 3000, 128, 512
    method = make_idfd(n=n, d=d)
    tau = method.opts.temperature
    assert tau == 1.0  # the paper's (idfd.md 3)
    v = F.normalize(torch.randn(b, d, generator=torch.Generator().manual_seed(1)), dim=1)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(2))[:b]
    loss = instance_discrimination_loss(v, method.memory, idx, tau)
    mem = method.memory.double()
    logits = v.double() @ mem.t() / tau
    ref = (-logits[torch.arange(b), idx] + torch.logsumexp(logits, dim=1)).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert loss.item() == pytest.approx(math.log(n) + 1 / (2 * d * tau**2), abs=0.02)


def test_step_uses_old_memory_then_updates_rows() -> None:
    torch.manual_seed(0)
    method = make_idfd(n=50, d=16)
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    idx = torch.tensor([3, 7, 11, 0, 49, 20, 21, 22])
    before = method.memory.clone()
    state = torch.get_rng_state()
    out = method.training_step(images, idx, epoch=0)
    # The same forward (same augmentation draw) with the bank as it was must give the same loss.
    torch.set_rng_state(state)
    v = method(method.augment(images))  # recomputed: the step's own state is not trusted
    ref = instance_discrimination_loss(v, before, idx, 1.0) + feature_decorrelation_loss(v, 2.0)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    out.loss.backward()
    assert not method.memory.requires_grad
    method.after_optimizer_step(out)
    # m <- normalize(0.5 m + 0.5 v) with v the network output of this step (idfd.md 3.1)
    vd = v.detach()
    expected = (0.5 * before[idx] + 0.5 * vd) / (0.5 * before[idx] + 0.5 * vd).norm(dim=1, keepdim=True)
    torch.testing.assert_close(method.memory[idx], expected)
    others = torch.ones(50, dtype=torch.bool)
    others[idx] = False
    torch.testing.assert_close(method.memory[others], before[others])
    assert torch.allclose(method.memory[idx].norm(dim=1), torch.ones(8))
