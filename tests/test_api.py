"""``deepclust.DeepClusterer``: the scikit-learn estimator contract, inputs, errors, save/load,
and, on real Fashion-MNIST images, beating k-means on the same raw input."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError

from deepclust import DeepClusterer
from deepclust.api import as_data, default_epochs
from deepclust.data import ImageData, load_dataset
from deepclust.data.base import FeatureData
from deepclust.errors import CheckpointError, ConfigError, DataError, DeepClustError
from deepclust.metrics import cluster_accuracy

FAST = dict(epochs=2, batch_size=16, device="cpu")


def _features(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n, n_features=8, centers=3, random_state=seed)
    return x.astype(np.float32), y


def _images(n: int = 48, seed: int = 0, shape: tuple[int, ...] = (10, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


# ----- the scikit-learn contract ----------------------------------------------------------------------
# scikit-learn's check_estimator, whole: the checks that cannot apply (they set n_clusters=1) are
# declared with their reason in deepclust.api.SKLEARN_EXPECTED_FAILED_CHECKS; any other failure,
# or a declared one that starts passing, fails this test.
@pytest.mark.slow
def test_sklearn_check_estimator_whole() -> None:
    from sklearn.utils.estimator_checks import check_estimator

    from deepclust.api import SKLEARN_EXPECTED_FAILED_CHECKS

    results = check_estimator(
        DeepClusterer(n_clusters=3, **FAST),
        on_fail=None,
        on_skip=None,
        expected_failed_checks=SKLEARN_EXPECTED_FAILED_CHECKS,
    )
    status = {r["check_name"]: r["status"] for r in results}
    failed = {k: repr(r["exception"])[:200] for r in results if r["status"] == "failed" for k in [r["check_name"]]}
    assert not failed, failed
    assert {k for k, v in status.items() if v == "xfail"} == set(SKLEARN_EXPECTED_FAILED_CHECKS)
    skipped = {k for k, v in status.items() if v == "skipped"}
    assert skipped <= {"check_array_api_input"}, skipped  # needs SCIPY_ARRAY_API=1 in the environment
    assert len(status) >= 45 and "check_dtype_object" in status and "check_fit2d_1sample" in status


def test_image_fitted_estimator_pickles() -> None:
    import pickle

    x = _images(40, shape=(8, 8))
    est = DeepClusterer("idfd", n_clusters=3, epochs=1, batch_size=16, device="cpu").fit(x)
    back = pickle.loads(pickle.dumps(est))  # channels-last pre-hook: a module-level function
    np.testing.assert_array_equal(back.predict(x), est.predict(x))


def test_predict_on_another_image_size_warns_and_resizes() -> None:
    x = _images(40, shape=(16, 16))  # 16 px: the glyph preset's input size, so fitted = native
    est = DeepClusterer("idfd", n_clusters=3, epochs=1, batch_size=16, device="cpu").fit(x)
    big = (
        torch.nn.functional.interpolate(
            torch.from_numpy(x[:, None]).float(), size=(20, 20), mode="bilinear", antialias=True
        )
        .round()
        .clamp(0, 255)
        .to(torch.uint8)[:, 0]
        .numpy()
    )
    with pytest.warns(UserWarning, match="20x20 images but the model was fitted on 16x16; they are resized to 16x16"):
        labels = est.predict(big)
    assert labels.shape == (40,) and set(labels) <= {0, 1, 2}


def test_nan_loss_message_names_no_deleted_directory() -> None:
    x, _ = _features()
    with pytest.raises(DeepClustError) as e:
        DeepClusterer("idfd", n_clusters=3, lr=1e6, **FAST).fit(x)
    msg = str(e.value)
    assert "lower optim.lr" in msg and "deepclust-" not in msg and "no checkpoint was saved" in msg, msg


def test_clone_and_params_round_trip() -> None:
    est = DeepClusterer(
        "secu", n_clusters=4, epochs=3, random_state=7, method_options={"n_heads": 2}, config={"eval": {"n_init": 2}}
    )
    params = est.get_params()
    assert params["method"] == "secu" and params["method_options"] == {"n_heads": 2} and params["random_state"] == 7
    twin = clone(est)
    assert twin.get_params() == params and twin is not est
    assert twin.method_options is not est.method_options  # deep-copied, not shared
    assert est.set_params(n_clusters=5, lr=0.1) is est and est.get_params()["n_clusters"] == 5
    assert DeepClusterer(**est.get_params()).get_params() == est.get_params()
    x, _ = _features()
    est.set_params(n_clusters=3, epochs=1).fit(x)
    fresh = clone(est)
    assert not hasattr(fresh, "labels_") and not hasattr(fresh, "method_")


def test_not_fitted_errors() -> None:
    est = DeepClusterer()
    for call in (
        lambda: est.predict(np.zeros((3, 4))),
        lambda: est.transform(np.zeros((3, 4))),
        lambda: est.save("x.pt"),
    ):
        with pytest.raises(NotFittedError):
            call()


@pytest.mark.parametrize("method", ["idfd", "anchorcl"])  # one k-means method, one head method
def test_fit_predict_consistency_and_reproducibility(method: str) -> None:
    x, _ = _features()
    est = DeepClusterer(method, n_clusters=3, random_state=3, **FAST).fit(x)
    assert est.labels_.shape == (90,) and est.labels_.dtype == np.int64
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    emb = est.transform(x)
    assert emb.shape[0] == 90 and emb.shape[1] == est.cluster_centers_.shape[1] and est.cluster_centers_.shape[0] == 3
    # predicting in pieces gives what predicting at once gives (eval mode, no batch statistics)
    np.testing.assert_array_equal(np.concatenate([est.predict(x[:7]), est.predict(x[7:])]), est.labels_)
    # fit_predict == fit().labels_, and the same random_state gives the same run on the CPU
    again = DeepClusterer(method, n_clusters=3, random_state=3, **FAST)
    np.testing.assert_array_equal(again.fit_predict(x), est.labels_)
    np.testing.assert_array_equal(again.transform(x), emb)
    other = DeepClusterer(method, n_clusters=3, random_state=4, **FAST).fit(x)
    assert not np.allclose(other.transform(x), emb)  # another seed is another network


def test_cluster_centers_follow_the_prediction_rule() -> None:
    x, _ = _features()
    km = DeepClusterer("idfd", n_clusters=3, random_state=0, **FAST).fit(x)
    emb = km.transform(x)  # k-means method: labels are the nearest centre in the embedding
    d2 = ((emb[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(d2.argmin(1), km.labels_)
    head = DeepClusterer("cdc", n_clusters=3, random_state=0, **FAST).fit(x)
    emb = head.transform(x)  # head method: centres are the mean embedding of each cluster
    for k in range(3):
        rows = emb[head.labels_ == k]
        expected = rows.mean(0) if len(rows) else np.full(emb.shape[1], np.nan)
        np.testing.assert_allclose(head.cluster_centers_[k], expected, rtol=1e-4, atol=1e-5)


def test_does_not_touch_params_or_global_rng() -> None:
    x, _ = _features()
    est = DeepClusterer("idfd", n_clusters=2, method_options={"fd_weight": 1.0}, **FAST)
    before = {k: (v.copy() if isinstance(v, dict) else v) for k, v in est.get_params().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    est.fit(x)
    assert torch.equal(torch.rand(3), expected)  # the run's seeding did not leak out
    assert est.get_params() == before


# ----- inputs -------------------------------------------------------------------------------------------
def test_image_inputs_of_every_kind_give_the_same_run() -> None:
    gray = _images(48)
    est = DeepClusterer("idfd", n_clusters=3, random_state=0, **FAST)
    ref = est.fit_predict(gray)
    assert est.input_shape_ == (1, 10, 10) and est.config_.model.backbone == "small_cnn"
    same = [
        gray.astype(np.float32) / 255.0,  # floats in [0, 1]
        gray.astype(np.float64),  # floats in [0, 255]
        gray.astype(np.int32),
        gray[..., None],  # (N, H, W, 1)
        torch.from_numpy(gray)[:, None],  # tensor (N, C, H, W)
        torch.from_numpy(gray)[..., None],  # tensor (N, H, W, C)
        ImageData.from_arrays(gray),
    ]
    for x in same:
        np.testing.assert_array_equal(clone(est).fit_predict(x), ref)
    np.testing.assert_array_equal(est.predict(gray.astype(np.float32) / 255.0), ref)


def test_image_conversion_rule_matches_a_direct_transcription() -> None:
    rng = np.random.default_rng(1)
    x01 = rng.uniform(0, 1, (4, 3, 5, 5)).astype(np.float32)  # numpy (N, C, H, W), unambiguous
    d = as_data(x01)
    np.testing.assert_array_equal(d.images.numpy(), np.rint(x01 * 255).astype(np.uint8))
    x255 = rng.uniform(0, 255, (4, 5, 6, 3))  # (N, H, W, C) in [0, 255]
    np.testing.assert_array_equal(as_data(x255).images.numpy(), np.rint(x255).astype(np.uint8).transpose(0, 3, 1, 2))
    amb = rng.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)  # C in {1, 3} at both ends
    assert as_data(amb).images.shape == (2, 3, 3, 4)  # numpy: (N, H, W, C)
    assert as_data(torch.from_numpy(amb)).images.shape == (2, 3, 4, 3)  # tensor: (N, C, H, W)
    f = as_data(torch.arange(12.0).reshape(3, 4), y=np.array([0.0, 1.0, 1.0]))
    assert isinstance(f, FeatureData) and f.labels.tolist() == [0, 1, 1]


@pytest.mark.slow
def test_rgb_images_and_feature_tensors() -> None:
    rgb = _images(40, shape=(8, 8, 3))
    est = DeepClusterer("cdc", n_clusters=2, random_state=0, **FAST).fit(rgb)
    assert est.input_shape_ == (3, 8, 8) and est.predict(rgb[:5]).shape == (5,)
    with pytest.raises(DataError, match="channel"):
        est.predict(_images(5, shape=(8, 8)))
    x, _ = _features()
    a = DeepClusterer("idfd", n_clusters=3, random_state=0, **FAST)
    np.testing.assert_array_equal(a.fit_predict(x), clone(a).fit_predict(torch.from_numpy(x)))
    assert a.n_features_in_ == 8 and a.feature_mode_ and a.config_.model.backbone == "mlp"
    with pytest.raises(DataError, match="fitted on feature vectors"):
        a.predict(_images(5))


def test_labels_only_score_the_record(tmp_path: Path) -> None:
    x, y = _features()
    est = DeepClusterer("idfd", n_clusters=3, random_state=0, out=str(tmp_path / "run"), **FAST).fit(x, y)
    assert est.record_["acc"] == pytest.approx(cluster_accuracy(y, est.labels_))
    assert (tmp_path / "run" / "results.json").is_file() and est.run_dir_ == str(tmp_path / "run")
    np.testing.assert_array_equal(
        DeepClusterer("idfd", n_clusters=3, random_state=0, **FAST).fit_predict(x), est.labels_
    )
    with pytest.raises(CheckpointError, match="already holds a run"):  # a kept run is never overwritten
        clone(est).fit(x)


# ----- bad inputs ----------------------------------------------------------------------------------------
BAD = {
    "rank 1": (dict(), np.zeros(10), DataError, "rank 1"),
    "rank 5": (dict(), np.zeros((4, 2, 3, 3, 3)), DataError, "rank 5"),
    "NaN features": (dict(), np.array([[0.0, np.nan]] * 10), DataError, "NaN"),
    "inf features": (dict(), np.array([[np.inf, 1.0]] * 10), DataError, "infinite"),
    "NaN images": (dict(), np.full((10, 4, 4), np.nan), DataError, "NaN"),
    "images out of range": (dict(), np.full((10, 4, 4), 300.0), DataError, "255"),
    "4 channels": (dict(), np.zeros((10, 5, 5, 4), np.uint8), DataError, "channels"),
    "too many clusters": (dict(n_clusters=11), np.zeros((10, 3)), DataError, "larger than the number of samples"),
    "one cluster": (dict(n_clusters=1), np.zeros((10, 3)), ConfigError, "at least 2"),
    "one sample": (dict(), np.zeros((1, 3)), DataError, "n_samples=1"),
    "object array of dicts": (dict(), np.array([[{"a": 1}] * 3] * 10, dtype=object), TypeError, "not a numeric array"),
    "unknown method": (dict(method="idfdd"), np.zeros((10, 3)), ConfigError, "did you mean 'idfd'"),
    "bad option": (dict(method_options={"tempreature": 1.0}), np.zeros((10, 3)), ConfigError, "temperature"),
    "bad epochs": (dict(epochs=0), np.zeros((10, 3)), ConfigError, "epochs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_one_line_errors(case: str) -> None:
    params, x, error, text = BAD[case]
    with pytest.raises(error) as e:
        DeepClusterer(**{"n_clusters": 2, **FAST, **params}).fit(x)
    assert isinstance(e.value, DeepClustError) and text in str(e.value) and "\n" not in str(e.value)


def test_predict_checks_the_feature_dimension() -> None:
    x, _ = _features()
    est = DeepClusterer("idfd", n_clusters=3, **FAST).fit(x)
    with pytest.raises(DataError, match="X has 5 features, but DeepClusterer is expecting 8"):
        est.predict(x[:, :5])


# ----- save / load ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["idfd", "secu"])
def test_save_load_round_trip(method: str, tmp_path: Path) -> None:
    x, _ = _features()
    est = DeepClusterer(
        method, n_clusters=3, random_state=2, method_options={"n_heads": 2} if method == "secu" else None, **FAST
    ).fit(x)
    path = tmp_path / "model.pt"
    est.save(path)
    back = DeepClusterer.load(path)
    assert back.get_params() == est.get_params()
    np.testing.assert_array_equal(back.labels_, est.labels_)
    np.testing.assert_array_equal(back.cluster_centers_, est.cluster_centers_)
    np.testing.assert_array_equal(back.predict(x), est.predict(x))
    np.testing.assert_allclose(back.transform(x), est.transform(x), rtol=0, atol=0)
    assert back.n_features_in_ == 8 and back.config_.to_dict() == est.config_.to_dict()


def test_load_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no saved DeepClusterer"):
        DeepClusterer.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    other = tmp_path / "other.pt"
    torch.save({"method": "idfd", "model": {}}, other)  # e.g. a training checkpoint
    for p in (junk, other):
        with pytest.raises(CheckpointError, match="not a saved DeepClusterer") as e:
            DeepClusterer.load(p)
        assert "\n" not in str(e.value)


def test_default_epochs_rule() -> None:
    assert default_epochs(10_000, 128, features=False) == 26  # ceil(2000 * 128 / 10000)
    assert default_epochs(1_000_000, 128, features=False) == 10
    assert default_epochs(100, 25, features=True) == 200


# ----- Fashion-MNIST: beat k-means on the same raw input ---------------------------------------------------
# 3,000 test images (a seeded random subset), IDFD, a fixed seed. k-means gets the same input
# (the flattened pixels) and the same number of restarts as the method's own k-means.
# Measured while tuning (seeds 0-2, two subsets): images ACC 0.61-0.65 vs k-means 0.48-0.49;
# pixel vectors 0.55-0.60 vs 0.48-0.49.
FMNIST_N = 3000
# A fixed, fast recipe (the first shipped Fashion-MNIST config's: width-16 CNN, flips, mild
# crops, cosine schedule) at half resolution (14 px), to fit the 2-core CPU test budget; the
# shipped config is now the glyph preset (16 px, width 32: four times the compute).
FMNIST_RECIPE = {
    "data": {"image_size": 14},
    "model": {"width": 16},
    "optim": {"schedule": "cosine"},
    "augment": {"crop_scale": [0.3, 1.0], "jitter": [0.4, 0.4, 0.0, 0.0], "grayscale_p": 0.0, "flip_p": 0.5},
}


@pytest.fixture(scope="module")
def fmnist(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    d = load_dataset("fashion-mnist", "test", shared_data)
    idx = np.random.default_rng(0).permutation(d.n_samples)[:FMNIST_N]
    return d.images[idx, 0].numpy(), d.labels[idx].numpy()


def _kmeans_acc(x: np.ndarray, y: np.ndarray, n_init: int) -> float:
    pred = KMeans(10, n_init=n_init, random_state=0).fit_predict(x.reshape(len(x), -1).astype(np.float32))
    return cluster_accuracy(y, pred)


@pytest.mark.slow
def test_fmnist_images_beat_kmeans_on_pixels(fmnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, y = fmnist
    t0 = time.time()
    est = DeepClusterer("idfd", n_clusters=10, epochs=40, random_state=0, device="cpu", config=FMNIST_RECIPE)
    labels = est.fit_predict(images)
    seconds = time.time() - t0
    assert labels.shape == (FMNIST_N,) and est.config_.model.backbone == "small_cnn"
    acc, base = cluster_accuracy(y, labels), _kmeans_acc(images / 255.0, y, est.config_.eval.n_init)
    print(f"FMNIST images: DeepClusterer ACC {acc:.4f} ({seconds:.0f} s) vs k-means on pixels {base:.4f}")
    assert acc > base + 0.02


@pytest.mark.slow
def test_fmnist_feature_vectors_beat_kmeans(fmnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, y = fmnist
    # The raw pixels as feature vectors: the comparison then isolates what training adds (a
    # PCA or whitening would change k-means' own metric and muddle it).
    x = images.reshape(FMNIST_N, -1).astype(np.float32) / 255.0
    t0 = time.time()
    est = DeepClusterer("idfd", n_clusters=10, epochs=60, random_state=0, device="cpu")
    labels = est.fit_predict(x)
    seconds = time.time() - t0
    assert labels.shape == (FMNIST_N,) and est.feature_mode_ and est.config_.model.backbone == "mlp"
    acc, base = cluster_accuracy(y, labels), _kmeans_acc(x, y, est.config_.eval.n_init)
    print(f"FMNIST features: DeepClusterer ACC {acc:.4f} ({seconds:.0f} s) vs k-means on the same vectors {base:.4f}")
    assert acc > base + 0.02
