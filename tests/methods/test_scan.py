"""SCAN (Van Gansbeke et al., ECCV 2020): the loss against a NumPy transcription of eq. 2, the
head selection, and the method on feature vectors with neighbour views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from deepclust.config import resolve_config
from deepclust.data.base import FeatureData
from deepclust.engine import Trainer
from deepclust.errors import ConfigError
from deepclust.losses import scan_loss


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _transcription(la: np.ndarray, ln: np.ndarray, lam: float) -> tuple[float, float, float]:
    """Eq. 2: -1/|B| sum log <Phi(X), Phi(k)> + lam * sum_c Phi'_c log Phi'_c, in float64."""
    p, q = _softmax(la), _softmax(ln)
    consistency = -np.mean(np.log(np.sum(p * q, axis=1)))
    pbar = p.mean(0)
    entropy = -np.sum(pbar * np.log(pbar))
    return consistency - lam * entropy, consistency, entropy


@pytest.mark.parametrize("seed,lam", [(0, 5.0), (1, 0.0), (2, 2.5)])
def test_scan_loss_matches_the_paper_formula(seed: int, lam: float) -> None:
    rng = np.random.default_rng(seed)
    la, ln = rng.normal(0, 3, (37, 7)), rng.normal(0, 3, (37, 7))
    got = scan_loss(torch.tensor(la, dtype=torch.float32), torch.tensor(ln, dtype=torch.float32), lam)
    for g, r in zip(got, _transcription(la, ln, lam), strict=True):
        assert abs(float(g) - r) < 1e-4 * max(1.0, abs(r))


def test_scan_loss_has_gradients_through_both_views_and_runs_in_fp32_under_bf16() -> None:
    la = torch.randn(16, 5, requires_grad=True)
    ln = torch.randn(16, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, *_ = scan_loss(la.bfloat16(), ln.bfloat16())
    assert total.dtype == torch.float32
    total.backward()
    assert la.grad is not None and ln.grad is not None and la.grad.abs().sum() > 0 and ln.grad.abs().sum() > 0


def _blobs(seed: int = 0) -> FeatureData:
    x, y = make_blobs(600, n_features=16, centers=4, cluster_std=1.5, random_state=seed)
    return FeatureData.from_arrays(x, y, name="blobs")


def _cfg(out: Path, **method_args: object) -> object:
    return resolve_config(
        {
            "method": "scan",
            "n_clusters": 4,
            "data": {"name": "blobs"},
            "train": {"epochs": 8, "batch_size": 100, "out": str(out), "device": "cpu", "progress": False},
            "eval": {"n_init": 2},
            "method_args": method_args,
        }
    )


def test_scan_clusters_separated_blobs(tmp_path: Path) -> None:
    data = _blobs()
    trainer = Trainer(_cfg(tmp_path), data=data)
    record = trainer.fit()
    assert record["prediction"]["type"] == "head_argmax" and record["acc"] > 0.95


def test_scan_predicts_with_the_head_of_lowest_loss(tmp_path: Path) -> None:
    trainer = Trainer(_cfg(tmp_path, n_heads=4), data=_blobs(1))
    trainer.fit()
    m = trainer.method
    assert m.eval_head == int(m.head_loss.argmin())
    m.head_loss.copy_(torch.tensor([3.0, 1.0, 2.0, 4.0]))
    assert m.eval_head == 1
    m.eval()
    x = m.eval_transform(_blobs(1).features[:10])
    _, p = m.infer(x)
    expected = torch.softmax(m.heads[1](m.backbone(x)), dim=1)
    torch.testing.assert_close(p, expected)
    m.on_epoch_start(99)  # a new epoch: the finished epoch's sums decide until the first step
    assert m.eval_head == 1 and not bool(m.head_loss.any())


def test_scan_needs_neighbour_views(tmp_path: Path) -> None:
    cfg = resolve_config(
        {
            "method": "scan",
            "n_clusters": 4,
            "augment": {"feature_views": "noise"},
            "train": {"out": str(tmp_path), "device": "cpu"},
        }
    )
    with pytest.raises(ConfigError, match="neighbors"):
        Trainer(cfg, data=_blobs())
