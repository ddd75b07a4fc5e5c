"""Defaults by data kind (deepclust/presets.py, deepclust/data/peek.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from deepclust.cli import _config_from_args
from deepclust.config import packaged_config, resolve_config
from deepclust.data.peek import DataShape, peek, shape_of
from deepclust.errors import ConfigError, DataError
from deepclust.methods import get_method_class, list_methods
from deepclust.presets import data_kind, kind_defaults

#: the methods that train on images (SCAN clusters feature vectors only: no image config or preset)
IMAGE_METHODS = [m for m in list_methods() if get_method_class(m).accepts_images]


@pytest.mark.parametrize(
    "shape, kind",
    [
        (DataShape(1, 8, 1797), "glyph"),
        (DataShape(1, 28, 60000), "glyph"),
        (DataShape(1, 32, 10), "glyph"),
        (DataShape(1, 64, 10), "natural"),
        (DataShape(3, 16, 10), "natural"),
        (DataShape(3, 224, 10), "natural"),
        (DataShape(1, 0, 10, n_features=64), "features"),
    ],
)
def test_data_kind_rule(shape: DataShape, kind: str) -> None:
    assert data_kind(shape) == kind


def test_peek_npz_folder_and_names(tmp_path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "g.npz", images=rng.integers(0, 255, (7, 12, 12), dtype=np.uint8))
    np.savez(tmp_path / "c.npz", images=rng.integers(0, 255, (5, 20, 24, 3), dtype=np.uint8))
    assert peek(f"npz:{tmp_path / 'g.npz'}") == DataShape(1, 12, 7)
    assert peek(f"npz:{tmp_path / 'c.npz'}") == DataShape(3, 20, 5)
    import io

    blobs = []
    for _ in range(4):  # JPEG bytes back to back, the shared data's layout
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (18, 22, 3), dtype=np.uint8)).save(buf, format="JPEG")
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(tmp_path / "j.npz", jpeg=np.concatenate(blobs), offsets=offsets)
    assert peek(f"npz:{tmp_path / 'j.npz'}") == DataShape(3, 18, 4)
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 5, 5, 5, 5), dtype=np.uint8))
    with pytest.raises(DataError, match="rank 5"):  # the loader's own line
        peek(f"npz:{tmp_path / 'bad.npz'}")
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    (tmp_path / "f").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(tmp_path / "f" / f"{i}.png")
    assert peek(f"folder:{tmp_path / 'f'}") == DataShape(1, 30, 2)
    assert peek("digits") == DataShape(1, 8, 1797) and peek("cifar10").channels == 3
    assert shape_of((4, 1, 9, 9)) == DataShape(1, 9, 4) and shape_of((4, 6)).n_features == 6
    with pytest.raises(DataError, match="not found"):
        peek(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(DataError, match="unknown dataset"):
        peek("cifar11")


def test_flag_form_gets_the_glyph_preset_and_logs_it(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="deepclust"):
        cfg = resolve_config(_config_from_args([], {"method": "cdc", "data": "digits"}), auto=True)
    assert cfg.defaults == "glyph"
    assert any("defaults for glyph data" in r.getMessage() for r in caplog.records)
    a = cfg.augment
    assert a.flip_p == 0.0 and a.jitter[2:] == (0.0, 0.0) and a.grayscale_p == 0.0 and a.affine_p > 0
    assert a.crop_scale[0] >= 0.5 and cfg.data.image_size == 16 and cfg.model.backbone == "small_cnn"
    assert cfg.optim.schedule == "cosine"
    # library calls without auto keep the method's (paper) defaults
    plain = resolve_config({"method": "cdc"})
    assert plain.defaults == "method" and plain.augment.flip_p == 0.5 and plain.augment.affine_p == 0.0


def test_the_runs_own_values_win_over_the_preset() -> None:
    raw = _config_from_args(
        ["augment.flip_p=0.5", "optim.lr=0.01", "data.image_size=24"], {"method": "idfd", "data": "digits"}
    )
    cfg = resolve_config(raw, auto=True)
    assert (cfg.augment.flip_p, cfg.optim.lr, cfg.data.image_size) == (0.5, 0.01, 24)
    assert cfg.augment.affine_p == 0.5  # what the run did not set still comes from the preset


@pytest.mark.parametrize("method", list_methods())
def test_shipped_configs_are_untouched(method: str) -> None:
    path = packaged_config(f"{method}/cifar10")
    if path is not None:
        raw = _config_from_args([str(path)], {})
        assert raw["defaults"] == "method"
        assert resolve_config(raw, auto=True).to_dict() == resolve_config(raw).to_dict()


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_digits_configs_are_the_glyph_preset(method: str) -> None:
    """configs/<method>/digits.yaml is the flag form on digits plus K, the protocol and the
    schedule's length: the same config whether or not the caller asks for auto defaults."""
    raw = _config_from_args([str(packaged_config(f"{method}/digits"))], {})
    cfg = resolve_config(raw)
    assert raw["defaults"] == "glyph" and cfg.to_dict() == resolve_config(raw, auto=True).to_dict()
    flag = resolve_config(
        _config_from_args(
            ["train.epochs=40", "train.checkpoint_every=10"], {"method": method, "data": "digits", "n_clusters": 10}
        ),
        auto=True,
    )
    want, got = flag.to_dict(), cfg.to_dict()
    for d in (want, got):
        d["data"].pop("train_split"), d["data"].pop("eval_split")
    assert got == want
    assert cfg.data.train_split == cfg.data.eval_split == "train+test"


# What a dataset config on the glyph preset may set: the data, the protocol, the schedule's
# length and how often it saves, evaluates and restarts k-means; nothing that trains differently.
RUN_KEYS = {
    "method",
    "defaults",
    "n_clusters",
    "data.name",
    "data.train_split",
    "data.eval_split",
    "train.epochs",
    "train.checkpoint_every",
    "train.eval_every",
    "eval.n_init",
}


def _leaves(d: dict, prefix: str = "") -> set[str]:
    return set().union(
        *(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"} for k, v in d.items())
    )


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_fashion_mnist_configs_are_the_glyph_preset(method: str) -> None:
    """configs/<method>/fashion-mnist.yaml (after the quality matrix showed the hand-made 28 px
    ones below raw-pixel k-means) sets only RUN_KEYS over the glyph preset, and resolves to the
    flag form on Fashion-MNIST with those values: 16 px, width 32, no flips."""
    raw = _config_from_args([str(packaged_config(f"{method}/fashion-mnist"))], {})
    assert raw["defaults"] == "glyph" and _leaves(raw) <= RUN_KEYS, sorted(_leaves(raw) - RUN_KEYS)
    cfg = resolve_config(raw)
    flag = resolve_config({k: v for k, v in raw.items() if k != "defaults"}, auto=True)
    assert cfg.to_dict() == flag.to_dict() and flag.defaults == "glyph"
    assert (cfg.data.image_size, cfg.model.width, cfg.augment.flip_p) == (16, 32, 0.0)


def test_bench_config_sizes_a_preset_config_for_the_given_shape() -> None:
    """``bench_config`` (quality.py's config mode): the Fashion-MNIST SeCu config is on the
    glyph preset, so its batch follows N / 100 of the images given (5,000: 64), and of the
    dataset's headers (60,000 training images: 128) without a shape."""
    from deepclust.bench import bench_config

    assert bench_config("secu", "fashion-mnist", shape=DataShape(1, 28, 5000)).train.batch_size == 64
    assert bench_config("secu", "fashion-mnist").train.batch_size == 128
    assert (
        bench_config("secu", "cifar10", shape=DataShape(3, 32, 5000)).train.batch_size
        == bench_config("secu", "cifar10").train.batch_size
    )  # defaults: method, no preset to size


def test_forced_kind_and_bad_choice() -> None:
    cfg = resolve_config({"method": "secu", "defaults": "glyph", "data": {"name": "digits"}})
    assert cfg.defaults == "glyph" and cfg.augment.flip_p == 0.0
    nat = resolve_config({"method": "secu", "data": {"name": "digits"}}, auto=True, shape=DataShape(3, 32, 100))
    assert nat.defaults == "natural" and nat.augment.flip_p == get_method_class("secu").defaults()["augment"]["flip_p"]
    with pytest.raises(ConfigError, match="defaults"):
        resolve_config({"method": "secu", "defaults": "glyphs"})


def test_a_saved_config_resolves_without_its_data(tmp_path) -> None:
    """A run's config.yaml names the kind applied and writes every value out; resolving it
    again (resume, a saved estimator) needs no data and changes nothing."""
    cfg = resolve_config(_config_from_args([], {"method": "anchorcl", "data": "digits"}), auto=True)
    saved = cfg.to_dict()
    saved["data"]["name"] = f"npz:{tmp_path / 'moved.npz'}"
    again = resolve_config(saved)
    assert again.to_dict() == saved


def test_glyph_preset_per_method_is_valid() -> None:
    for method in list_methods():
        preset = kind_defaults(method, "glyph", DataShape(1, 16, 9000))
        cfg = resolve_config({"method": method, **preset})
        assert cfg.data.image_size == 16 and cfg.model.width == 32
        for side in (8, 28, 32):  # smaller glyphs are resized up, larger ones down
            other = kind_defaults(method, "glyph", DataShape(1, side, 10000))
            assert other["data"]["image_size"] == 16 and other["model"]["width"] == 32


@pytest.mark.parametrize("method", list_methods())
def test_glyph_stroke_views_are_thicken_only_at_half_strength_for_secu_and_cdc(method: str) -> None:
    """SeCu and CDC on glyphs: p 0.5, never thinner, half-way to a 3x3 dilation; IDFD and
    AnchorCL, and every method on natural images, keep stroke views off."""
    glyph = resolve_config({"method": method, **kind_defaults(method, "glyph", DataShape(1, 16, 5000))}).augment
    if method in ("secu", "cdc"):
        assert (glyph.stroke_p, glyph.stroke_thin, glyph.stroke_strength) == (0.5, 0.0, 0.5)
    else:
        assert glyph.stroke_p == 0.0
    natural = resolve_config({"method": method, **kind_defaults(method, "natural", DataShape(3, 32, 5000))}).augment
    assert natural.stroke_p == 0.0


@pytest.mark.parametrize("n", [100, 1797, 4000, 9000, 10000, 60000, 1_281_167])
def test_small_data_batch_rule(n: int) -> None:
    """SeCu on glyph data: B = the power of two nearest N / 100 (in log scale), clipped to
    [16, 128], lr 0.1 B / 128; IDFD: B = 16 at every size, lr 0.05 sqrt(16 / 128)."""
    target = n / 100
    powers = [2**k for k in range(4, 8)]  # 16 .. 128
    want = min(powers, key=lambda p: abs(np.log2(p) - np.log2(target)))
    if target < 16:
        want = 16
    if target > 128:
        want = 128
    idfd = kind_defaults("idfd", "glyph", DataShape(1, 16, n))
    secu = kind_defaults("secu", "glyph", DataShape(1, 16, n))
    assert secu["train"]["batch_size"] == want and idfd["train"]["batch_size"] == 16
    assert idfd["optim"]["lr"] == pytest.approx(0.05 * (16 / 128) ** 0.5, rel=1e-4)
    assert secu["optim"]["lr"] == pytest.approx(0.1 * want / 128, rel=1e-4)
    # the contrastive methods keep their batch: their negatives are the batch
    assert kind_defaults("cdc", "glyph", DataShape(1, 16, n))["train"]["batch_size"] == 256
    assert kind_defaults("anchorcl", "glyph", DataShape(1, 16, n))["train"]["batch_size"] == 128


def test_estimator_uses_the_kind_of_its_array(tmp_path) -> None:
    from deepclust import DeepClusterer

    x = np.random.default_rng(0).integers(0, 256, (40, 12, 12), dtype=np.uint8)
    est = DeepClusterer("idfd", n_clusters=3, epochs=1, batch_size=16, device="cpu", out=str(tmp_path / "run")).fit(x)
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["defaults"] == "glyph" and saved["data"]["image_size"] == 16 and saved["augment"]["flip_p"] == 0.0
    assert saved["train"]["batch_size"] == 16  # the estimator's own value wins
    assert est.predict(x).shape == (40,)
