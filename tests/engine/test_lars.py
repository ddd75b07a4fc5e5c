"""LARS (engine/lars.py) against a transcription of the update rule, and its config wiring."""

from __future__ import annotations

import math

import pytest
import torch

from deepclust.config import resolve_config
from deepclust.engine.fastpath import apply_fast_paths
from deepclust.engine.lars import LARS
from deepclust.engine.setup import build_optimizer
from deepclust.errors import ConfigError
from deepclust.methods import DataInfo, create_method


def _norm(x: list[float]) -> float:
    return math.sqrt(sum(v * v for v in x))


def _reference(ws, grads_per_step, groups):
    """You et al. 2017 as in SeCu / MoCo v3, on flat Python lists (float64), one param at a time:
    ndim > 1: d = g + wd w; d *= eta |w| / |d| when both norms > 0. ndim <= 1: d = g.
    mu = m mu + d; w -= lr mu."""
    ws = [list(map(float, w.flatten().tolist())) for w in ws]
    mus = [[0.0] * len(w) for w in ws]
    for grads in grads_per_step:
        for i, (w, g) in enumerate(zip(ws, grads, strict=True)):
            if g is None:
                continue
            lr, m, wd, eta, ndim = groups[i]
            g = [float(v) for v in g.flatten().tolist()]
            if ndim > 1:
                d = [gv + wd * wv for gv, wv in zip(g, w, strict=True)]
                wn, dn = _norm(w), _norm(d)
                q = eta * wn / dn if wn > 0 and dn > 0 else 1.0
                d = [q * v for v in d]
            else:
                d = g
            mus[i] = [m * mv + dv for mv, dv in zip(mus[i], d, strict=True)]
            ws[i] = [wv - lr * mv for wv, mv in zip(w, mus[i], strict=True)]
    return ws


def test_lars_matches_transcription_on_random_tensors() -> None:
    gen = torch.Generator().manual_seed(3)
    shapes = [(5, 3), (4, 2, 3, 3), (7,), (7,), (3, 4)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
    with torch.no_grad():
        params[4].zero_()  # ||w|| = 0: no adaptation (trust 1), decay still added
    g1 = {"lr": 0.7, "momentum": 0.9, "weight_decay": 0.05, "trust_coefficient": 0.02}
    g2 = {"lr": 0.3, "momentum": 0.5, "weight_decay": 0.1, "trust_coefficient": 0.5}
    opt = LARS([{"params": params[:3], **g1}, {"params": params[3:], **g2}], lr=1.0)
    meta = [(g1["lr"], g1["momentum"], g1["weight_decay"], g1["trust_coefficient"], len(s)) for s in shapes[:3]]
    meta += [(g2["lr"], g2["momentum"], g2["weight_decay"], g2["trust_coefficient"], len(s)) for s in shapes[3:]]
    start = [p.detach().clone() for p in params]
    steps = []
    for t in range(5):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) * (t + 1) for s in shapes]
        if t == 2:
            grads[1] = None  # a parameter without a gradient is skipped, its buffer untouched
        steps.append(grads)
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else g.clone()
        opt.step()
    expected = _reference(start, steps, meta)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(e, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_zero_gradient_is_not_scaled_to_nan() -> None:
    w = torch.nn.Parameter(torch.zeros(3, 3))
    w.grad = torch.zeros(3, 3)
    LARS([w], lr=1.0, weight_decay=0.1).step()
    assert torch.isfinite(w).all() and (w == 0).all()


def _secu_method(optim: dict):
    cfg = resolve_config(
        {
            "method": "secu",
            "n_clusters": 3,
            "model": {"backbone": "small_cnn", "width": 4, "feature_dim": 8},
            "optim": optim,
            "method_args": {"n_heads": 2},
        }
    )
    info = DataInfo(n_samples=20, n_channels=1, image_size=8, mean=[0.5], std=[0.2], n_clusters=3)
    return cfg, create_method(cfg, info)


def test_build_optimizer_lars_keeps_secu_groups() -> None:
    cfg, method = _secu_method({"name": "lars", "lr": 1.6, "weight_decay": 1e-6, "trust_coefficient": 0.001})
    opt = build_optimizer(cfg, method, torch.device("cpu"))
    assert isinstance(opt, LARS)
    enc, centres = opt.param_groups
    assert enc["lr"] == 1.6 and enc["trust_coefficient"] == 0.001 and enc["weight_decay"] == 1e-6
    assert centres["lr"] == cfg.method_args["center_lr"] and centres["scheduled"] is False
    assert all(p.ndim > 1 for p in centres["params"])  # the centres are adapted and decayed (spec 10)
    assert apply_fast_paths(method, cfg, torch.device("cpu"), 20).fused is False


@pytest.mark.parametrize(
    "optim, needle",
    [
        ({"name": "lars", "trust_coefficient": 0.0}, "optim.trust_coefficient"),
        ({"name": "lars", "momentum": 1.0}, "optim.momentum"),
        ({"name": "lars", "weight_decay": -1.0}, "optim.weight_decay"),
        ({"name": "lars", "nesterov": True}, "optim.nesterov"),
        ({"name": "lamb"}, "lars"),
    ],
)
def test_bad_lars_config_is_one_line(optim: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config({"method": "secu", "optim": optim})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_fused_true_with_lars_is_one_line() -> None:
    cfg, method = _secu_method({"name": "lars", "fused": True})
    with pytest.raises(ConfigError, match="fused"):
        apply_fast_paths(method, cfg, torch.device("cpu"), 20)
