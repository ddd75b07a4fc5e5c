"""``deepclust predict``: a folder of mixed images streamed to a CSV, checked against an independent
re-implementation (Pillow decode + resize, nearest stored centre, softmax over distances)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepclust.predict as predict_mod
from deepclust.cli import main
from deepclust.config import resolve_config
from deepclust.engine import train
from deepclust.predict import predict_to_csv

SIZE = 12


def _train(tmp: Path, method: str, rgb: bool = False) -> Path:
    rng = np.random.default_rng(0)
    shape = (240, SIZE, SIZE, 3) if rgb else (240, SIZE, SIZE)
    data = tmp / f"{method}.npz"
    np.savez(data, images=rng.integers(0, 256, shape, dtype=np.uint8), labels=rng.integers(0, 3, 240))
    out = tmp / f"run_{method}"
    raw = {
        "method": method,
        "n_clusters": 3,
        "data": {"name": f"npz:{data}"},
        "train": {"epochs": 1, "batch_size": 120, "device": "cpu", "out": str(out), "progress": False},
        "eval": {"n_init": 1},
    }
    train(resolve_config(raw))
    return out


@pytest.fixture(scope="module")
def idfd_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("pred_idfd"), "idfd")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """RGB PNG (20x30), grayscale JPEG (9x9), RGBA PNG, palette GIF, a corrupt PNG and a text file."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(1)
    (root / "sub").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / f"rgb{i}.png")
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(root / "sub" / f"gray{i}.jpg")
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(root / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (14, 10, 3), dtype=np.uint8)).convert("P").save(root / "pal.gif")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _reference(run: Path, root: Path, files: list[str], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Independent prediction: Pillow decode/convert/resize, the model's features, nearest stored
    centre and softmax(-d^2 / tau) with tau = inertia / n from results.json."""
    from deepclust.saved_run import load_run

    cfg, method, info, ckpt, dev = load_run(run, "cpu")
    arrays = []
    for f in files:
        with Image.open(root / f) as im:
            a = np.asarray(im.convert(mode).resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrays))
    with torch.no_grad():
        feats, probs = method.infer(method.eval_transform(x))
    if ckpt.get("centers") is None:
        p = probs.numpy().astype(np.float64)
        return p.argmax(1), p.max(1)
    f = feats.numpy().astype(np.float64)
    c = ckpt["centers"].numpy().astype(np.float64)
    d2 = ((f[:, None, :] - c[None]) ** 2).sum(-1)
    tau = json.loads((run / "results.json").read_text())["prediction"]["inertia"] / info.n_samples
    logits = -d2 / tau
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return d2.argmin(1), p.max(1)


READABLE = [
    "alpha.png",
    "pal.gif",
    "rgb0.png",
    "rgb1.png",
    "rgb2.png",
    "rgb3.png",
    "sub/gray0.jpg",
    "sub/gray1.jpg",
    "sub/gray2.jpg",
]


def test_folder_to_csv_matches_reference(idfd_run: Path, mixed_folder: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "deep" / "clusters.csv"
    with caplog.at_level(logging.WARNING):
        summary = predict_to_csv(idfd_run, f"folder:{mixed_folder}", out, device="cpu", chunk_size=4, progress=False)
    rows = _read_csv(out)
    assert [r["path"] for r in rows] == READABLE  # sorted relative paths; text file ignored
    assert summary.skipped == ["broken.png"] and summary.n_images == len(READABLE)
    assert any("broken.png" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    labels, conf = _reference(idfd_run, mixed_folder, READABLE, "L")
    np.testing.assert_array_equal([int(r["cluster"]) for r in rows], labels)
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], conf, atol=2e-5)
    assert summary.cluster_sizes == np.bincount(labels, minlength=3).tolist()
    assert not list(out.parent.glob(".*.tmp"))  # the temporary file was renamed away


def test_chunks_stream_and_do_not_change_results(
    idfd_run: Path, mixed_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    seen: list[int] = []
    real = predict_mod.infer_images

    def spy(method, images, *args, **kwargs):
        seen.append(len(images))
        return real(method, images, *args, **kwargs)

    monkeypatch.setattr(predict_mod, "infer_images", spy)
    predict_to_csv(idfd_run, f"folder:{mixed_folder}", tmp_path / "a.csv", device="cpu", chunk_size=2, progress=False)
    assert max(seen) <= 2 and sum(seen) == len(READABLE)
    predict_to_csv(
        idfd_run, f"folder:{mixed_folder}", tmp_path / "b.csv", device="cpu", chunk_size=1000, progress=False
    )
    a, b = _read_csv(tmp_path / "a.csv"), _read_csv(tmp_path / "b.csv")
    assert [(r["path"], r["cluster"]) for r in a] == [(r["path"], r["cluster"]) for r in b]
    # batch size changes float summation order in the network, nothing more
    np.testing.assert_allclose([float(r["confidence"]) for r in a], [float(r["confidence"]) for r in b], atol=1e-5)


@pytest.mark.slow
def test_head_method_rgb_confidence_is_head_probability(tmp_path: Path, mixed_folder: Path) -> None:
    run = _train(tmp_path, "cdc", rgb=True)
    out = tmp_path / "cdc.csv"
    summary = predict_to_csv(run, f"folder:{mixed_folder}", out, device="cpu", progress=False)
    assert summary.confidence == "head_probability"
    rows = _read_csv(out)
    labels, conf = _reference(run, mixed_folder, READABLE, "RGB")
    np.testing.assert_array_equal([int(r["cluster"]) for r in rows], labels)
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], conf, atol=2e-5)


def test_cli_predict_on_npz_writes_one_row_per_image(idfd_run: Path, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(5)
    data = tmp_path / "new.npz"
    np.savez(data, images=rng.integers(0, 256, (37, 20, 20, 3), dtype=np.uint8))  # other size and mode
    out = tmp_path / "npz.csv"
    code = main(["-q", "predict", str(idfd_run), "--data", f"npz:{data}", "--out", str(out), "--device", "cpu"])
    assert code == 0 and "wrote 37 rows" in capsys.readouterr().out
    rows = _read_csv(out)
    assert [r["path"] for r in rows] == [str(i) for i in range(37)]
    assert all(0 <= int(r["cluster"]) < 3 and 0.0 < float(r["confidence"]) <= 1.0 for r in rows)
