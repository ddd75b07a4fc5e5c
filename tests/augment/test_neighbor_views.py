"""Neighbour views of feature mode: exact cosine kNN (against scikit-learn), the views drawn
from each sample's neighbours, the config defaults, and the table bound at every fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.neighbors import NearestNeighbors

from deepclust.augment import AugmentConfig, FeatureAugment
from deepclust.cluster import nearest_neighbors
from deepclust.config import resolve_config
from deepclust.data.base import FeatureData
from deepclust.engine import Trainer
from deepclust.errors import ConfigError
from deepclust.methods import list_methods


def _blobs(n: int = 240, d: int = 12, k: int = 3, seed: int = 0) -> FeatureData:
    x, y = make_blobs(n, n_features=d, centers=k, cluster_std=1.0, random_state=seed)
    return FeatureData.from_arrays(x * 5.0 + 3.0, y, name="blobs")


@pytest.mark.parametrize("n,d,k,chunk", [(97, 8, 5, 16), (300, 32, 20, 4096), (12, 3, 30, 5)])
def test_nearest_neighbors_match_scikit_learn(n: int, d: int, k: int, chunk: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, d)) * np.random.default_rng(d).uniform(0.5, 3.0, (n, 1))
    got = nearest_neighbors(torch.from_numpy(x).float(), k, chunk=chunk).numpy()
    kk = min(k, n - 1)
    assert got.shape == (n, kk + 1) and (got[:, 0] == np.arange(n)).all()
    ref = NearestNeighbors(n_neighbors=kk + 1, metric="cosine").fit(x).kneighbors(x, return_distance=False)
    # the same sets of k + 1 rows (itself included); order inside a set may differ only at ties
    assert all(set(a) == set(b) for a, b in zip(got, ref, strict=True))


def test_nearest_neighbors_refuse_bad_input() -> None:
    with pytest.raises(ConfigError):
        nearest_neighbors(torch.zeros(0, 3), 5)
    with pytest.raises(ConfigError):
        nearest_neighbors(torch.zeros(4, 3), 0)


def test_a_neighbour_view_is_the_clean_view_of_one_of_the_neighbours() -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(50, 6))).float()
    mean, std = rng.normal(size=6).tolist(), rng.uniform(0.5, 2, 6).tolist()
    aug = FeatureAugment(mean, std, noise_std=0.0, dropout=0.0, l2=True, views="neighbors", neighbors=4)
    knn = nearest_neighbors(x, 4)
    aug.bind(x, knn)
    idx = torch.arange(50).repeat(40)
    out = aug(x[idx], idx, generator=torch.Generator().manual_seed(0))
    # an independent transcription of the clean view: (x / ||x|| - mean) / std
    u = x / x.norm(dim=1, keepdim=True)
    clean = (u - torch.tensor(mean)) / torch.tensor(std)
    dist = torch.cdist(out, clean, compute_mode="donot_use_mm_for_euclid_dist")  # each row is one clean row ...
    src = dist.argmin(1)
    assert float(dist.min(1).values.max()) < 1e-4
    assert all(
        int(s) in knn[int(i)].tolist() for s, i in zip(src, idx, strict=True)
    )  # ... of a neighbour of its sample
    # every one of the k + 1 candidates is drawn, about uniformly (40 draws per sample)
    pos = torch.stack([(knn[int(i)] == s).nonzero()[0, 0] for s, i in zip(src, idx, strict=True)])
    share = torch.bincount(pos, minlength=5).float() / len(pos)
    assert float((share - 0.2).abs().max()) < 0.05
    # without indices (or unbound) the view is the sample's own clean view
    torch.testing.assert_close(aug(x), clean)


def test_noise_and_dropout_defaults_follow_the_kind_of_view() -> None:
    n = AugmentConfig()
    assert n.feature_views == "neighbors" and n.feature_l2 and n.neighbors == 20
    assert (n.feature_noise, n.feature_dropout) == (0.0, 0.0)
    o = AugmentConfig(feature_views="noise")
    assert (o.feature_noise, o.feature_dropout) == (0.5, 0.5)
    assert AugmentConfig(feature_noise=0.2).feature_noise == 0.2
    for bad in ({"feature_views": "crops"}, {"neighbors": 0}, {"feature_l2": "yes"}):
        with pytest.raises(ConfigError, match="augment."):
            AugmentConfig(**bad)


def _cfg(method: str, out: Path, epochs: int = 2) -> object:
    return resolve_config(
        {
            "method": method,
            "n_clusters": 3,
            "data": {"name": "blobs"},
            "train": {"epochs": epochs, "batch_size": 60, "out": str(out), "device": "cpu", "progress": False},
            "eval": {"n_init": 2},
            "augment": {"neighbors": 7},
        }
    )


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_on_neighbour_views_bound_at_fit(method: str, tmp_path: Path) -> None:
    data = _blobs()
    trainer = Trainer(_cfg(method, tmp_path), data=data)
    seen: list[torch.Tensor] = []
    first = trainer.method.training_step

    def step(images, indices, epoch):  # the table the views use while training
        seen.extend(p.knn for p in trainer.method.modules() if isinstance(p, FeatureAugment))
        return first(images, indices, epoch)

    trainer.method.training_step = step
    trainer.fit()
    pipes = [m for m in trainer.method.modules() if isinstance(m, FeatureAugment)]
    assert pipes and all(p.uses_neighbors for p in pipes) and seen
    ref = nearest_neighbors(data.features, 7)
    assert all(k is not None and torch.equal(k.cpu(), ref) for k in seen)
    # released when training ends: a fitted model does not carry the training features
    assert all(p.knn is None and p.table is None for p in pipes)


def test_neighbour_views_keep_resume_exact(tmp_path: Path) -> None:
    """The table is mined again on resume (not saved), so a resumed run equals an uninterrupted one."""
    data = _blobs()
    full = Trainer(_cfg("cdc", tmp_path / "full", epochs=3), data=data)
    full.fit()
    part = Trainer(_cfg("cdc", tmp_path / "part", epochs=1), data=data)
    part.fit()
    cfg = _cfg("cdc", tmp_path / "part", epochs=3)
    resumed = Trainer(cfg, resume=True, data=data)
    resumed.fit()
    for a, b in zip(full.method.state_dict().values(), resumed.method.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----- an npz of feature vectors on the command line ----------------------------------------------------
def test_an_npz_of_features_trains_in_feature_mode_with_its_kmeans_baseline(tmp_path: Path, capsys) -> None:
    import json

    from deepclust.cli import main

    x, y = make_blobs(300, n_features=10, centers=3, cluster_std=1.0, random_state=1)
    path = tmp_path / "emb.npz"
    np.savez(path, features=x.astype(np.float32), labels=y)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--method",
            "scan",
            "--data",
            f"npz:{path}",
            "--n-clusters",
            "3",
            "--epochs",
            "3",
            "--device",
            "cpu",
            "--out",
            str(out),
            "train.progress=false",
            "eval.n_init=2",
        ]
    )
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    assert record["acc"] > 0.9 and record["kmeans_baseline"]["acc"] > 0.9
    assert record["kmeans_baseline"]["input"] == "l2-normalised features"
    cfg = (out / "config.yaml").read_text()
    assert "defaults: features" in cfg and "backbone: mlp" in cfg
    # predict reads the same npz of features; self-labelling (image views) refuses in one line
    csv = tmp_path / "c.csv"
    assert main(["predict", str(out), "--data", f"npz:{path}", "--out", str(csv), "--device", "cpu"]) == 0
    rows = csv.read_text().splitlines()
    assert rows[0] == "path,cluster,confidence" and len(rows) == 301
    capsys.readouterr()
    assert main(["selflabel", str(out), "--epochs", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "feature vectors" in err


@pytest.mark.parametrize("bad", ["nan", "int", "rank3"])
def test_a_bad_npz_of_features_is_one_line(bad: str, tmp_path: Path, capsys) -> None:
    from deepclust.cli import main

    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    if bad == "nan":
        x[3, 2] = np.nan
    arr = {"nan": lambda: x, "int": lambda: x.astype(np.int64), "rank3": lambda: x.reshape(40, 2, 3)}[bad]()
    path = tmp_path / "bad.npz"
    np.savez(path, features=arr)
    code = main(
        [
            "train",
            "--method",
            "scan",
            "--data",
            f"npz:{path}",
            "--n-clusters",
            "3",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
            "train.progress=false",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
