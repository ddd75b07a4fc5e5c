"""Tests of ``deepclust bench`` (src/deepclust/bench/): records, the reference pipeline, k-means."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from deepclust.augment import Augment, AugmentConfig, EvalTransform
from deepclust.bench import (
    ReferenceDataset,
    add_bench_parser,
    bench_config,
    bench_kmeans,
    bench_throughput,
    torchvision_transform,
)
from deepclust.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepclust")
    add_bench_parser(p.add_subparsers(dest="command"))
    return p


def _positive_side(side: dict) -> None:
    assert side["images_per_s"] > 0
    assert len(side["window_images_per_s"]) == 2 and all(r > 0 for r in side["window_images_per_s"])
    assert sorted(side["window_images_per_s"])[0] <= side["images_per_s"] <= sorted(side["window_images_per_s"])[-1]
    assert side["peak_mem_mb"] > 0
    assert np.isfinite(side["mean_loss"])


def test_tiny_throughput_record():
    cfg = bench_config("idfd", "digits", batch_size=32, device="cpu")
    rec = bench_throughput(cfg, warmup=1, windows=2, steps=1, workers=0)
    for key in ("method", "dataset", "backbone", "image_size", "batch_size", "deepclust", "reference", "speedup"):
        assert key in rec
    assert rec["method"] == "idfd" and rec["dataset"] == "digits" and rec["batch_size"] == 32
    _positive_side(rec["deepclust"])
    _positive_side(rec["reference"])
    assert rec["deepclust"]["precision"] == "fp32"  # CPU: no autocast by default
    assert set(rec["deepclust"]["fast_paths"]) == {"channels_last", "compile", "fused", "data_on_device"}
    assert rec["reference"]["views"] == ["augment"]
    assert rec["speedup"] == pytest.approx(
        rec["deepclust"]["images_per_s"] / rec["reference"]["images_per_s"], rel=1e-2
    )


def test_reference_asks_for_the_methods_views_in_order():
    # AnchorCL's step takes the clean view, then two augmented views; the reference feeds
    # torchvision views in that order and the loss math is the method's own
    cfg = bench_config("anchorcl", "digits", batch_size=16, device="cpu")
    rec = bench_throughput(cfg, warmup=0, windows=2, steps=1, workers=0)
    assert rec["reference"]["views"] == ["eval_transform", "augment", "augment"]
    _positive_side(rec["reference"])


def test_reference_transform_matches_eval_transform_on_identity_settings():
    # with the random steps switched off, the torchvision pipeline must give exactly the
    # library's normalised tensor: ToTensor (x / 255) then (x - mean) / std
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 9, 9), generator=g, dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    ident = AugmentConfig(
        crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=0.0, flip_p=0.0
    )
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    for module in (Augment(ident, 9, mean, std), EvalTransform(9, mean, std)):
        ds = ReferenceDataset(images, [torchvision_transform(module, 3)])
        got = torch.stack([ds[i][0][0] for i in range(5)])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert ds[3][1] == 3


def test_reference_transform_grayscale_shapes():
    images = torch.randint(0, 256, (4, 1, 10, 10), dtype=torch.uint8)
    cfg = AugmentConfig(jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5, solarize_p=0.2, flip_p=0.5)
    ds = ReferenceDataset(images, [torchvision_transform(Augment(cfg, 8, [0.5], [0.2]), 1)])
    views, _ = ds[0]
    assert views[0].shape == (1, 8, 8) and views[0].dtype == torch.float32


def test_kmeans_bench_matches_sklearn_inertia():
    x, _ = make_blobs(n_samples=3000, n_features=16, centers=6, cluster_std=4.0, random_state=0)
    rec = bench_kmeans(x.astype(np.float32), 6, n_init=3, repeats=1)
    for lib in ("deepclust", "sklearn"):
        assert rec[lib]["time_s"] > 0 and rec[lib]["inertia_f64"] > 0
        # the reported inertia is that of the returned labels and centres
        assert rec[lib]["inertia"] == pytest.approx(rec[lib]["inertia_f64"], rel=1e-3)
    assert rec["inertia_ratio"] == pytest.approx(1.0, abs=0.01)
    assert rec["speedup_vs_sklearn"] == pytest.approx(rec["sklearn"]["time_s"] / rec["deepclust"]["time_s"], rel=1e-2)


def test_cli_kmeans_writes_record(tmp_path, capsys):
    out = tmp_path / "km.json"
    args = _parser().parse_args(
        [
            "bench",
            "--kmeans",
            "--n",
            "1500",
            "--dim",
            "8",
            "--k",
            "4",
            "--n-init",
            "2",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    rec = json.loads(out.read_text())
    assert rec["benchmark"] == "kmeans" and rec["n"] == 1500 and rec["dim"] == 8
    for key in ("device", "torch", "sklearn", "cpu_count", "torch_threads", "loadavg_start", "loadavg_end"):
        assert key in rec["machine"]
    assert "command" in rec and "date" in rec
    assert "speed-up vs scikit-learn" in capsys.readouterr().out


def test_cli_rejects_overrides_with_kmeans():
    args = _parser().parse_args(["bench", "--kmeans", "train.amp=off"])
    with pytest.raises(ConfigError, match="overrides"):
        args.func(args)


def test_bench_rejects_bad_windows():
    with pytest.raises(ConfigError, match="windows"):
        bench_throughput(bench_config("idfd", "digits", device="cpu"), windows=0)
