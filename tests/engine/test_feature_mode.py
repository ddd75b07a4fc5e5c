"""Feature mode: precomputed vectors (N, D) instead of images, through the same engine.

FeatureData, the feature-space views (standardise + Gaussian noise + dropout), the MLP as
the automatic backbone, and a tiny run of every method on feature vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from deepclust.augment import Augment, EvalTransform, FeatureAugment, FeatureEvalTransform
from deepclust.config import resolve_config
from deepclust.data import ImageData
from deepclust.data.base import FeatureData
from deepclust.engine import Trainer
from deepclust.engine.data_stage import data_info
from deepclust.errors import ConfigError, DataError
from deepclust.methods import list_methods
from deepclust.models import MLPBackbone, auto_backbone, create_backbone


def _blobs(n: int = 240, d: int = 12, k: int = 3, seed: int = 0) -> FeatureData:
    x, y = make_blobs(n, n_features=d, centers=k, cluster_std=1.0, random_state=seed)
    return FeatureData.from_arrays(x * 5.0 + 3.0, y, name="blobs")  # off-centre, not unit scale


# ----- the data type ------------------------------------------------------------------------------
def test_feature_data_holds_float_vectors_and_subsets_keep_the_type() -> None:
    x = np.arange(20, dtype=np.int64).reshape(5, 4)
    d = FeatureData.from_arrays(x, [0, 1, 0, 1, -1])
    assert d.images.dtype == torch.float32 and d.n_features == 4 and d.n_samples == 5
    assert torch.equal(d.features, torch.from_numpy(x.astype(np.float32)))
    sub = d.subset([4, 0])
    assert isinstance(sub, FeatureData) and sub.labels.tolist() == [-1, 0]
    assert torch.equal(sub.features, d.features[[4, 0]])
    assert isinstance(d, ImageData) and "n_features=4" in repr(d)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((3,)), np.zeros((3, 2, 2)), np.array([[1.0, np.nan]]), np.array([[np.inf, 1.0]]), np.zeros((3, 0))],
)
def test_feature_data_rejects_bad_arrays(bad: np.ndarray) -> None:
    with pytest.raises(DataError) as e:
        FeatureData.from_arrays(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("l2", [False, True])
def test_feature_statistics_are_per_dimension_with_a_floor(l2: bool) -> None:
    rng = np.random.default_rng(1)
    raw = rng.normal(2.0, 3.0, (50, 6))
    raw[:, 5] = 7.0  # a constant dimension (before L2 normalisation): its std is floored, not zero
    data = FeatureData.from_arrays(raw)
    cfg = resolve_config({"method": "idfd", "n_clusters": 3, "augment": {"feature_l2": l2}})
    info = data_info(cfg, data, data)
    assert info.n_features == 6 and info.n_clusters == 3
    # the statistics of what the views see: the L2-normalised rows where feature_l2 is on
    x = raw / np.sqrt((raw**2).sum(1, keepdims=True)) if l2 else raw
    std = x.std(0, ddof=1)
    floor = 0.01 * std.mean()
    np.testing.assert_allclose(info.feature_mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(info.feature_std, np.maximum(std, floor), rtol=1e-5)
    with pytest.raises(ConfigError):
        data_info(
            resolve_config({"method": "idfd", "n_clusters": 3, "data": {"mean": [0.0], "std": [1.0]}}), data, data
        )


# ----- the views ------------------------------------------------------------------------------------
def test_eval_view_is_standardisation() -> None:
    rng = np.random.default_rng(2)
    mean, std = rng.normal(size=5), rng.uniform(0.5, 2.0, 5)
    x = rng.normal(size=(8, 5))
    out = FeatureEvalTransform(mean.tolist(), std.tolist())(torch.from_numpy(x))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), (x - mean) / std, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError):
        FeatureEvalTransform(mean.tolist(), std.tolist())(torch.zeros(2, 4))


def test_augmented_view_noise_and_dropout_statistics() -> None:
    mean, std = [1.0] * 64, [2.0] * 64
    x = torch.randn(2000, 64) * 2 + 1
    z = (x - 1) / 2
    g = torch.Generator().manual_seed(0)
    noisy = FeatureAugment(mean, std, noise_std=0.3, dropout=0.0)(x, generator=g)
    eps = (noisy - z).flatten()
    assert abs(float(eps.mean())) < 0.01 and abs(float(eps.std()) - 0.3) < 0.01
    masked = FeatureAugment(mean, std, noise_std=0.0, dropout=0.25)(x, generator=g)
    kept = masked != 0
    assert abs(float(1 - kept.float().mean()) - 0.25) < 0.01
    assert torch.equal(masked[kept], z[kept])  # kept values are the clean ones, not rescaled
    a = FeatureAugment(mean, std)(x, generator=torch.Generator().manual_seed(5))
    b = FeatureAugment(mean, std)(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, FeatureAugment(mean, std)(x))
    with pytest.raises(ConfigError):
        FeatureAugment(mean, std, dropout=1.0)


def test_auto_backbone_is_the_mlp_for_features() -> None:
    assert auto_backbone(1, 1, n_features=30)[0] == "mlp"
    assert auto_backbone(28, 1)[0] == "small_cnn"
    net = create_backbone("mlp", 1, in_dim=30)
    assert isinstance(net, MLPBackbone) and net(torch.randn(4, 30)).shape == (4, net.out_dim)


# ----- every method trains on feature vectors ----------------------------------------------------------
@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_in_feature_mode(method: str, tmp_path: Path) -> None:
    data = _blobs()
    cfg = resolve_config(
        {
            "method": method,
            "n_clusters": 3,
            "data": {"name": "blobs"},
            "train": {"epochs": 2, "batch_size": 60, "out": str(tmp_path), "device": "cpu", "progress": False},
            "eval": {"n_init": 2},
        }
    )
    trainer = Trainer(cfg, data=data)
    m = trainer.method
    # the image pipelines each method builds were replaced by the feature-space ones
    views = [mod for mod in m.modules() if isinstance(mod, (Augment, EvalTransform))]
    assert views == [] and isinstance(m.augment, FeatureAugment) and isinstance(m.eval_transform, FeatureEvalTransform)
    assert isinstance(m.backbone, MLPBackbone) and trainer.cfg.model.backbone == "mlp"
    record = trainer.fit()
    assert record["dataset"] == "blobs" and 0.0 <= record["acc"] <= 1.0
    assert (tmp_path / "results.json").is_file()


@pytest.mark.parametrize("method", list_methods())
def test_feature_noise_and_dropout_come_from_the_config(method: str, tmp_path: Path) -> None:
    cfg = resolve_config(
        {
            "method": method,
            "n_clusters": 3,
            "data": {"name": "blobs"},
            "augment": {"feature_noise": 0.3, "feature_dropout": 0.0},
            "train": {"epochs": 1, "batch_size": 60, "out": str(tmp_path), "device": "cpu", "progress": False},
        }
    )
    m = Trainer(cfg, data=_blobs()).method
    augs = [mod for mod in m.modules() if isinstance(mod, FeatureAugment)]
    assert augs and all(a.noise_std == 0.3 and a.dropout == 0.0 for a in augs)
    # the view really is standardise + N(0, 0.3^2) noise, no masking
    x = torch.randn(4000, m.augment.n_features)
    eps = (m.augment(x, generator=torch.Generator().manual_seed(1)) - m.eval_transform(x)).flatten()
    assert abs(float(eps.std()) - 0.3) < 0.01 and bool((eps != 0).all())


@pytest.mark.parametrize("bad", [{"feature_noise": -0.1}, {"feature_dropout": 1.0}, {"feature_dropout": "x"}])
def test_bad_feature_view_settings_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError, match="augment.feature_"):
        resolve_config({"method": "idfd", "augment": bad})


def test_image_backbone_on_features_is_a_clear_error(tmp_path: Path) -> None:
    cfg = resolve_config(
        {
            "method": "idfd",
            "n_clusters": 3,
            "model": {"backbone": "resnet18"},
            "train": {"out": str(tmp_path), "device": "cpu"},
        }
    )
    with pytest.raises(ConfigError, match="mlp"):
        Trainer(cfg, data=_blobs())


def test_trainer_takes_in_memory_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = ImageData.from_arrays(rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), name="toy")
    cfg = resolve_config(
        {
            "method": "idfd",
            "n_clusters": 2,
            "data": {"name": "toy"},
            "train": {"epochs": 1, "batch_size": 16, "out": str(tmp_path), "device": "cpu", "progress": False},
            "eval": {"n_init": 1},
        }
    )
    trainer = Trainer(cfg, data=data)
    record = trainer.fit()
    assert record["dataset"] == "toy" and "acc" not in record and trainer.cfg.model.backbone == "small_cnn"
    with pytest.raises(DataError):
        Trainer(
            resolve_config({"method": "idfd", "n_clusters": 2, "train": {"out": str(tmp_path / "b")}}),
            data=(data, _blobs()),
        )
