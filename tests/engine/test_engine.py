"""Engine pieces: learning-rate schedules and the evaluation protocols."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from deepclust.augment import EvalTransform
from deepclust.config import OptimConfig, resolve_config
from deepclust.data import ImageData
from deepclust.engine.evaluate import make_record, predict
from deepclust.engine.schedule import lr_factor
from deepclust.metrics import cluster_accuracy


def test_step_schedule() -> None:
    cfg = OptimConfig(schedule="step", milestones=[600, 950, 1300, 1650], gamma=0.1)
    for epoch, expected in [(0, 1.0), (599, 1.0), (600, 0.1), (949, 0.1), (950, 0.01), (1700, 1e-4)]:
        assert lr_factor(cfg, epoch, 5, 391, 2000) == pytest.approx(expected)


def test_cosine_schedule_with_warmup() -> None:
    cfg = OptimConfig(schedule="cosine", warmup_epochs=2)
    n, epochs = 10, 12
    total = (epochs - 2) * n
    for t in [0, 5, 19, 20, 50, 119]:
        e, it = divmod(t, n)
        f = lr_factor(cfg, e, it, n, epochs)
        if t < 20:
            ref = 0.5 * (1 + math.cos(0)) * (t + 1) / 20
        else:
            ref = 0.5 * (1 + math.cos(math.pi * (t - 20) / total))
        assert f == pytest.approx(ref)


class PixelMethod(torch.nn.Module):
    """A stand-in method whose features are the flattened pixels (so k-means is checkable)."""

    prediction = "kmeans"

    def __init__(self) -> None:
        super().__init__()
        self.eval_transform = EvalTransform(4, [0.0], [1.0])

    def infer(self, x: torch.Tensor):
        return x.flatten(1), None


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = rng.uniform(40, 215, (3, 16))
    img = np.clip(centers[y] + rng.normal(0, 12, (n, 16)), 0, 255).astype(np.uint8).reshape(n, 1, 4, 4)
    return torch.from_numpy(img), y


def test_train_to_test_fits_kmeans_on_train_and_assigns_test() -> None:
    xtr, ytr = _blobs(300, 0)
    xte, yte = _blobs(120, 1)
    train = ImageData(xtr, torch.from_numpy(ytr), ["a", "b", "c"], "toy", "train")
    test = ImageData(xte, torch.from_numpy(yte), ["a", "b", "c"], "toy", "test")
    cfg = resolve_config(
        {"method": "idfd", "data": {"train_split": "train", "eval_split": "test"}, "eval": {"n_init": 5}}
    )
    pred = predict(PixelMethod(), cfg, 3, train, test, torch.device("cpu"))
    assert pred.info["fit_split"] == "train" and pred.labels.shape == (120,)
    # The centres are k-means of the *training* features; test images go to the nearest one.
    ftr, fte = xtr.float().flatten(1) / 255, xte.float().flatten(1) / 255
    ref = KMeans(3, n_init=5, random_state=0).fit(ftr.numpy())
    assert ((pred.centers.numpy()[:, None] - ref.cluster_centers_[None]) ** 2).sum(-1).min(1).max() < 1e-3
    nearest = torch.cdist(fte, pred.centers).argmin(1)
    assert torch.equal(nearest, pred.labels)
    record = make_record(cfg, pred, test, 3, epoch=7, device=torch.device("cpu"))
    assert record["protocol"] == "train->test" and record["split"] == "test" and record["epoch"] == 7
    assert record["acc"] == pytest.approx(cluster_accuracy(yte, pred.labels.numpy()))
    from sklearn.metrics import adjusted_mutual_info_score

    ami = adjusted_mutual_info_score(yte, pred.labels.numpy(), average_method="arithmetic")
    assert record["ami"] == pytest.approx(ami, abs=1e-12) and record["metrics"]["ami"] == record["ami"]
    assert record["metric_defs"]["nmi_average"] == "arithmetic" and record["n_init"] == 5


class BankMethod(PixelMethod):
    """A k-means method with a memory bank unrelated to its pixel features."""

    def __init__(self, bank: torch.Tensor | None) -> None:
        super().__init__()
        self.bank = bank

    def memory_bank(self) -> torch.Tensor | None:
        return self.bank


def test_memory_features_cluster_the_methods_memory_bank() -> None:
    from sklearn.metrics import adjusted_rand_score

    x, _ = _blobs(300, 0)
    data = ImageData(x, torch.zeros(300, dtype=torch.long), ["a"], "toy", "train+test")
    rng = np.random.default_rng(3)
    yb = rng.integers(0, 3, 300)  # the bank's own clusters, not the pixels'
    bank = torch.from_numpy(rng.normal(0, 0.05, (300, 8)) + 5 * np.eye(8)[yb]).float()
    cfg = resolve_config({"method": "idfd", "eval": {"features": "memory", "n_init": 3}})
    pred = predict(BankMethod(bank), cfg, 3, data, data, torch.device("cpu"))
    ref = KMeans(3, n_init=3, random_state=0).fit_predict(bank.numpy())
    assert pred.info["type"] == "memory_bank"
    assert adjusted_rand_score(ref, pred.labels.numpy()) == pytest.approx(1.0)
    from deepclust.errors import ConfigError

    with pytest.raises(ConfigError, match="memory bank"):
        predict(BankMethod(None), cfg, 3, data, data, torch.device("cpu"))
