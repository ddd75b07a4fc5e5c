"""Tests for deepclust.data: registry, splits, npz/folder/torchvision layouts, real data."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepclust.data import (
    ImageData,
    IndexedDataset,
    list_datasets,
    list_splits,
    load_dataset,
    resolve_data_dir,
)
from deepclust.errors import DataError

RNG = np.random.default_rng(0)


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deepclust-cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, _session_cache: Path) -> None:
    """No downloads, no user data dir, and a throw-away decode cache shared by this session."""
    monkeypatch.setenv("DEEPCLUST_DOWNLOAD", "0")
    monkeypatch.setenv("DEEPCLUST_CACHE", str(_session_cache))
    monkeypatch.delenv("DEEPCLUST_DATA", raising=False)


def _raises_one_line(fn, *match: str) -> str:
    """Call fn, expect a DataError with a one-line message containing every ``match``."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip(), f"message is not one line: {msg!r}"
    for m in match:
        assert m in msg, f"{m!r} not in {msg!r}"
    return msg


def _jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _save_jpeg_npz(path: Path, blobs: list[bytes], **extra: np.ndarray) -> None:
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    jpeg = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    np.savez(path, jpeg=jpeg, offsets=offsets, **extra)


def _smooth_rgb(n: int, h: int, w: int) -> np.ndarray:
    """Smooth random RGB images (JPEG-friendly), uint8 (n, h, w, 3)."""
    base = RNG.random((n, 4, 4, 3))
    t = torch.nn.functional.interpolate(torch.from_numpy(base).permute(0, 3, 1, 2), size=(h, w), mode="bilinear")
    return (t.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


# ------------------------------------------------------------------ registry, digits, ImageData


def test_list_datasets_names() -> None:
    names = list_datasets()
    for n in [
        "digits",
        "cifar10",
        "cifar100-20",
        "cifar100",
        "stl10",
        "imagenet10",
        "imagenet-dogs",
        "tiny-imagenet",
        "imagenet",
        "fashion-mnist",
    ]:
        assert n in names
    assert "train+test" in list_splits("cifar10")
    assert "unlabeled" in list_splits("stl10")
    assert list_splits("npz:/x.npz") == ["train", "test", "train+test"]


def test_digits_matches_sklearn_exactly() -> None:
    from sklearn.datasets import load_digits

    sk = load_digits()
    d = load_dataset("digits")
    expected = np.array([[round(v * 255 / 16) for v in img.ravel()] for img in sk.images], dtype=np.uint8)
    assert d.images.dtype == torch.uint8 and d.images.shape == (1797, 1, 8, 8) and d.images.is_contiguous()
    assert np.array_equal(d.images.reshape(1797, 64).numpy(), expected)
    assert np.array_equal(d.labels.numpy(), sk.target)
    assert d.labels.dtype == torch.int64
    assert d.classes == [str(i) for i in range(10)] and d.name == "digits"
    assert (d.n_samples, d.n_channels, d.image_size, d.has_labels, d.n_classes) == (1797, 1, (8, 8), True, 10)
    for split in ("test", "train+test"):
        other = load_dataset("digits", split)
        assert torch.equal(other.images, d.images) and other.split == split


def test_unknown_name_suggests_closest() -> None:
    _raises_one_line(lambda: load_dataset("cifar1"), "'cifar10'", "valid names")
    _raises_one_line(lambda: load_dataset("fashion_mnst"), "fashion-mnist")
    _raises_one_line(lambda: load_dataset("zip:/x"), "npz:PATH or folder:PATH")
    _raises_one_line(lambda: load_dataset("npz:"), "no path")


def test_unknown_split_lists_valid_ones() -> None:
    _raises_one_line(lambda: load_dataset("digits", "validation"), "'validation'", "train, test, train+test")
    _raises_one_line(lambda: load_dataset("stl10", "val", data_dir="/nonexistent"), "unlabeled", "train+unlabeled")


def test_bad_image_size() -> None:
    _raises_one_line(lambda: load_dataset("digits", image_size=0), "image_size")


def test_image_size_resizes() -> None:
    d = load_dataset("digits", image_size=16)
    assert d.images.shape == (1797, 1, 16, 16) and d.images.dtype == torch.uint8


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir(None) == tmp_path / "data"
    monkeypatch.setenv("DEEPCLUST_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_subset_and_indexed_dataset() -> None:
    d = load_dataset("digits")
    sub = d.subset([5, 1, 7])
    assert torch.equal(sub.images[0], d.images[5]) and sub.labels.tolist() == d.labels[[5, 1, 7]].tolist()
    mask = d.labels == 3
    assert d.subset(mask).n_samples == int(mask.sum()) and d.subset(slice(0, 10)).n_samples == 10
    ds = IndexedDataset(sub)
    img, label, i = ds[2]
    assert i == 2 and label == int(d.labels[7]) and torch.equal(img, d.images[7]) and img.shape == (1, 8, 8)
    loader = torch.utils.data.DataLoader(
        IndexedDataset(d), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    x, y, idx = next(iter(loader))
    assert x.dtype == torch.uint8 and torch.equal(x, d.images[idx]) and torch.equal(y, d.labels[idx])


def test_image_data_validates() -> None:
    with pytest.raises(DataError):
        ImageData(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), [], "x", "train")
    with pytest.raises(DataError):
        ImageData(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), [], "x", "train")
    d = ImageData.from_arrays(np.zeros((3, 5, 5, 3), dtype=np.uint8))
    assert d.images.shape == (3, 3, 5, 5) and not d.has_labels and d.n_classes == 0


# ------------------------------------------------------------------ npz


def test_npz_pixel_layouts_round_trip(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=gray, labels=np.array([0, 1, 2, 1, 0]), classes=np.array(["a", "b", "c"]))
    d = load_dataset(f"npz:{tmp_path / 'g.npz'}")
    assert d.images.shape == (5, 1, 6, 7) and np.array_equal(d.images[:, 0].numpy(), gray)
    assert d.labels.tolist() == [0, 1, 2, 1, 0] and d.classes == ["a", "b", "c"]
    assert d.name == f"npz:{tmp_path / 'g.npz'}" and d.split == "train"

    rgb = RNG.integers(0, 256, (4, 6, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", images=rgb)
    d = load_dataset(f"npz:{tmp_path / 'c.npz'}", split="train+test")
    assert d.images.shape == (4, 3, 6, 7) and np.array_equal(d.images.permute(0, 2, 3, 1).numpy(), rgb)
    assert d.labels.tolist() == [-1] * 4 and d.classes == [] and not d.has_labels and d.split == "train+test"
    assert torch.equal(load_dataset(f"npz:{tmp_path / 'c.npz'}", split="test").images, d.images)
    assert load_dataset(f"npz:{tmp_path / 'c.npz'}", image_size=12).images.shape == (4, 3, 12, 12)

    np.savez(tmp_path / "f.npz", images=rgb.astype(np.float32) / 255.0, labels=np.array([1, 0, 1, -1]))
    d = load_dataset(f"npz:{tmp_path / 'f.npz'}")
    assert np.array_equal(d.images.permute(0, 2, 3, 1).numpy(), rgb)
    assert d.classes == ["0", "1"] and d.labels.tolist() == [1, 0, 1, -1]


def test_npz_relative_path_is_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "r.npz", images=np.zeros((2, 3, 3), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    assert load_dataset("npz:r.npz").name == f"npz:{tmp_path / 'r.npz'}"


def test_npz_jpeg_layout_matches_pil_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path / "cache"))
    arrays = _smooth_rgb(6, 10, 12)
    blobs = [_jpeg(a) for a in arrays]
    path = tmp_path / "j.jpeg.npz"
    _save_jpeg_npz(path, blobs, labels=np.arange(6) % 2, classes=np.array(["x", "y"]))
    d = load_dataset(f"npz:{path}")
    pil = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    assert d.images.shape == (6, 3, 10, 12)
    diff = np.abs(d.images.permute(0, 2, 3, 1).numpy().astype(int) - pil.astype(int))
    assert diff.max() <= 1, diff.max()
    assert d.labels.tolist() == [0, 1, 0, 1, 0, 1] and d.classes == ["x", "y"]
    cached = list((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 1

    import deepclust.data.npz as npz_mod

    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache is fresh")

    monkeypatch.setattr(npz_mod, "_decode_jpeg_bytes", no_decode)
    assert torch.equal(load_dataset(f"npz:{path}").images, d.images)
    monkeypatch.undo()
    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path / "cache"))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a new version of the file
    assert torch.equal(load_dataset(f"npz:{path}").images, d.images)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1 and not cached[0].exists()


def test_npz_jpeg_pil_fallback_decodes_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepclust.data.npz as npz_mod

    _save_jpeg_npz(tmp_path / "p.npz", [_jpeg(a) for a in _smooth_rgb(4, 9, 9)])
    fast = load_dataset(f"npz:{tmp_path / 'p.npz'}", image_size=9)  # another cache variant

    def unavailable(*a, **k):
        raise ImportError("no image ops")

    monkeypatch.setattr(npz_mod, "_torchvision_decode", unavailable)
    slow = load_dataset(f"npz:{tmp_path / 'p.npz'}")
    assert (slow.images.int() - fast.images.int()).abs().max() <= 1


def test_npz_jpeg_grayscale(tmp_path: Path) -> None:
    gray = _smooth_rgb(3, 8, 8)[..., 0]
    _save_jpeg_npz(tmp_path / "g.npz", [_jpeg(g) for g in gray])
    d = load_dataset(f"npz:{tmp_path / 'g.npz'}")
    assert d.images.shape == (3, 1, 8, 8) and not d.has_labels


def test_npz_errors(tmp_path: Path) -> None:
    def p(name: str) -> str:
        return f"npz:{tmp_path / name}"

    _raises_one_line(lambda: load_dataset(p("missing.npz")), "not found", "missing.npz")
    _raises_one_line(lambda: load_dataset(f"npz:{tmp_path}"), "directory")
    (tmp_path / "text.npz").write_text("hello\nworld\n")
    _raises_one_line(lambda: load_dataset(p("text.npz")), "not a readable .npz")
    np.save(tmp_path / "single.npy", np.zeros((2, 3, 3), dtype=np.uint8))
    _raises_one_line(lambda: load_dataset(p("single.npy")), "not an .npz archive")
    np.savez(tmp_path / "keys.npz", x=np.zeros((2, 3, 3), dtype=np.uint8), y=np.zeros(2))
    _raises_one_line(lambda: load_dataset(p("keys.npz")), "['x', 'y']", "'images'", "'jpeg'")
    np.savez(tmp_path / "rank.npz", images=np.zeros((2, 784), dtype=np.uint8))
    _raises_one_line(lambda: load_dataset(p("rank.npz")), "rank 2", "(N, H, W)")
    np.savez(tmp_path / "rgba.npz", images=np.zeros((2, 5, 5, 4), dtype=np.uint8))
    _raises_one_line(lambda: load_dataset(p("rgba.npz")), "(N, H, W, 3)")
    np.savez(tmp_path / "len.npz", images=np.zeros((3, 4, 4), dtype=np.uint8), labels=np.zeros(2, dtype=np.int64))
    _raises_one_line(lambda: load_dataset(p("len.npz")), "3 images", "labels")
    np.savez(tmp_path / "float.npz", images=np.full((2, 4, 4), 200.0, dtype=np.float32))
    _raises_one_line(lambda: load_dataset(p("float.npz")), "[0, 1]", "200")
    np.savez(tmp_path / "zero.npz", images=np.zeros((0, 4, 4), dtype=np.uint8))
    _raises_one_line(lambda: load_dataset(p("zero.npz")), "zero images")
    np.savez(tmp_path / "nooff.npz", jpeg=np.zeros(10, dtype=np.uint8))
    _raises_one_line(lambda: load_dataset(p("nooff.npz")), "'offsets'")
    good = _jpeg(_smooth_rgb(1, 8, 8)[0])
    _save_jpeg_npz(tmp_path / "bad.npz", [good, good[:40], good])
    _raises_one_line(lambda: load_dataset(p("bad.npz")), "image 1", "not a valid JPEG")
    np.savez(tmp_path / "obj.npz", images=np.array([np.zeros((2, 2)), np.zeros((3, 3))], dtype=object))
    _raises_one_line(lambda: load_dataset(p("obj.npz")), "pickle")
    np.savez(
        tmp_path / "cls.npz",
        images=np.zeros((2, 4, 4), dtype=np.uint8),
        labels=np.array([0, 3]),
        classes=np.array(["a"]),
    )
    _raises_one_line(lambda: load_dataset(p("cls.npz")), "label 3", "'classes'")
    np.savez(tmp_path / "ok.npz", images=np.zeros((2, 4, 4), dtype=np.uint8))
    _raises_one_line(lambda: load_dataset(p("ok.npz"), split="val"), "train, test, train+test")


# ------------------------------------------------------------------ folder


def _save(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def test_folder_with_subfolders_gives_sorted_labels_and_skips_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "imgs"
    a = RNG.integers(0, 256, (3, 9, 11, 3), dtype=np.uint8)
    _save(root / "zebra" / "1.png", a[0])
    _save(root / "zebra" / "2.png", a[1])
    _save(root / "ant" / "x.png", a[2])
    (root / "ant" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "ant" / "readme.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="deepclust.data"):
        d = load_dataset(f"folder:{root}")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ant/broken.jpg" in warnings[0].getMessage()
    assert d.classes == ["ant", "zebra"]
    assert d.paths == ["ant/x.png", "zebra/1.png", "zebra/2.png"]
    assert d.labels.tolist() == [0, 1, 1]
    assert d.images.shape == (3, 3, 9, 11) and d.name == f"folder:{root}"
    assert np.array_equal(d.images[0].permute(1, 2, 0).numpy(), a[2])
    assert np.array_equal(d.images[2].permute(1, 2, 0).numpy(), a[1])


def test_folder_mixed_sizes_and_modes_without_labels(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    _save(root / "a.png", RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    _save(root / "b.jpg", RNG.integers(0, 256, (50, 40), dtype=np.uint8))  # grayscale
    _save(root / "sub" / "c.png", RNG.integers(0, 256, (10, 10, 4), dtype=np.uint8))  # RGBA
    d = load_dataset(f"folder:{root}")
    assert d.images.shape == (3, 3, 64, 64) and d.labels.tolist() == [-1, -1, -1] and d.classes == []
    assert d.paths == ["a.png", "b.jpg", "sub/c.png"]
    assert load_dataset(f"folder:{root}", image_size=32).images.shape == (3, 3, 32, 32)


def test_folder_all_grayscale_stays_single_channel(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    g = RNG.integers(0, 256, (2, 12, 12), dtype=np.uint8)
    _save(root / "0.png", g[0])
    _save(root / "1.bmp", g[1])
    d = load_dataset(f"folder:{root}")
    assert d.images.shape == (2, 1, 12, 12) and np.array_equal(d.images[:, 0].numpy(), g)


def test_folder_errors(tmp_path: Path) -> None:
    _raises_one_line(lambda: load_dataset(f"folder:{tmp_path / 'nope'}"), "not found")
    (tmp_path / "empty").mkdir()
    _raises_one_line(lambda: load_dataset(f"folder:{tmp_path / 'empty'}"), "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    _raises_one_line(lambda: load_dataset(f"folder:{tmp_path / 'txt'}"), "no images", ".txt")
    (tmp_path / "file.npz").write_bytes(b"x")
    _raises_one_line(lambda: load_dataset(f"folder:{tmp_path / 'file.npz'}"), "not a folder", "npz:")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"garbage")
    _raises_one_line(lambda: load_dataset(f"folder:{tmp_path / 'bad'}"), "could be read")


# ------------------------------------------------------------------ ImageNet subsets, Tiny-ImageNet


def test_imagenet10_from_train_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from deepclust.data.folder import IMAGENET10_CLASSES

    for k, wnid in enumerate(IMAGENET10_CLASSES):
        for j in range(2):
            _save(
                tmp_path / "imagenet" / "train" / wnid / f"{wnid}_{j}.JPEG",
                RNG.integers(0, 256, (30 + k, 40 + j, 3), dtype=np.uint8),
                fmt="JPEG",
            )
    (tmp_path / "imagenet" / "train" / "n99999999").mkdir()  # other classes are ignored
    with caplog.at_level(logging.INFO, logger="deepclust.data"):
        d = load_dataset("imagenet10", data_dir=str(tmp_path), image_size=16)
    assert d.images.shape == (20, 3, 16, 16) and d.classes[0] == "king penguin" and len(d.classes) == 10
    assert d.labels.tolist() == [k for k in range(10) for _ in range(2)]
    assert d.paths[0] == "n02056570/n02056570_0.JPEG"
    assert any("found 20 images" in r.getMessage() for r in caplog.records)
    assert load_dataset("imagenet10", data_dir=str(tmp_path)).images.shape == (20, 3, 96, 96)
    # imagenet-dogs needs its own wnids: only one of them (n02085936) is present here
    _raises_one_line(lambda: load_dataset("imagenet-dogs", data_dir=str(tmp_path)), "14 of 15", "missing")
    _raises_one_line(
        lambda: load_dataset("imagenet10", data_dir=str(tmp_path / "x")), "imagenet/train/<wnid>", "DEEPCLUST_DATA"
    )
    _raises_one_line(lambda: load_dataset("imagenet", data_dir=str(tmp_path)), "streaming only")


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for j in range(2):
            _save(
                root / "train" / w / "images" / f"{w}_{j}.JPEG",
                RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                fmt="JPEG",
            )
    ann = []
    for j, w in enumerate(["n03", "n01"]):
        _save(root / "val" / "images" / f"val_{j}.JPEG", RNG.integers(0, 256, (64, 64), dtype=np.uint8), fmt="JPEG")
        ann.append(f"val_{j}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    _save(root / "test" / "images" / "test_0.JPEG", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), fmt="JPEG")

    tr = load_dataset("tiny-imagenet", data_dir=str(tmp_path))
    assert tr.images.shape == (6, 3, 64, 64) and tr.classes == ["n01", "n02", "n03"]
    assert tr.labels.tolist() == [0, 0, 1, 1, 2, 2] and tr.paths[0] == "train/n01/images/n01_0.JPEG"
    va = load_dataset("tiny-imagenet", "val", data_dir=str(tmp_path))
    assert va.labels.tolist() == [2, 0] and va.n_channels == 3
    te = load_dataset("tiny-imagenet", "test", data_dir=str(tmp_path))
    assert te.labels.tolist() == [-1] and te.classes == []
    both = load_dataset("tiny-imagenet", "train+val", data_dir=str(tmp_path), image_size=32)
    assert both.images.shape == (8, 3, 32, 32) and both.labels.tolist() == [0, 0, 1, 1, 2, 2, 2, 0]
    _raises_one_line(lambda: load_dataset("tiny-imagenet", "train+test", data_dir=str(tmp_path)), "train+val")


# ------------------------------------------------------------------ torchvision layouts (tiny fakes)


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


@pytest.fixture
def fake_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray, np.ndarray]:
    """cifar-10-batches-py with 2 images per batch (checksums bypassed), plus a JPEG copy."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    base = tmp_path / "cifar-10-batches-py"
    imgs = np.ascontiguousarray(_smooth_rgb(12, 32, 32).transpose(0, 3, 1, 2))
    labels = np.arange(12) % 10
    for b in range(5):
        _pickle(
            base / f"data_batch_{b + 1}",
            {"data": imgs[2 * b : 2 * b + 2].reshape(2, -1), "labels": labels[2 * b : 2 * b + 2].tolist()},
        )
    _pickle(base / "test_batch", {"data": imgs[10:].reshape(2, -1), "labels": labels[10:].tolist()})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(base / "batches.meta", {"label_names": names})
    (tmp_path / "cifar10").mkdir()
    for part, sl in (("train", slice(0, 10)), ("test", slice(10, 12))):
        blobs = [_jpeg(x.transpose(1, 2, 0), quality=95) for x in imgs[sl]]
        _save_jpeg_npz(tmp_path / "cifar10" / f"{part}.jpeg.npz", blobs, labels=labels[sl], classes=np.array(names))
    return tmp_path, imgs, labels


def test_cifar10_prefers_exact_layout_and_concatenates(fake_cifar10) -> None:
    root, imgs, labels = fake_cifar10
    d = load_dataset("cifar10", "train+test", data_dir=str(root))
    assert d.name == "cifar10" and d.split == "train+test"
    assert np.array_equal(d.images.numpy(), imgs) and d.labels.tolist() == labels.tolist()
    tr = load_dataset("cifar10", "train", data_dir=str(root))
    te = load_dataset("cifar10", "test", data_dir=str(root))
    assert torch.equal(torch.cat([tr.images, te.images]), d.images) and d.classes[1] == "automobile"
    j = load_dataset("cifar10-jpeg", "train+test", data_dir=str(root))
    assert j.name == "cifar10-jpeg" and j.images.shape == (12, 3, 32, 32)
    assert (j.images.float() - d.images.float()).abs().mean() < 5
    assert j.labels.tolist() == labels.tolist()


def test_cifar10_falls_back_to_jpeg_copy_and_reports_missing(fake_cifar10) -> None:
    root, _, _ = fake_cifar10
    import shutil

    shutil.rmtree(root / "cifar-10-batches-py")
    assert load_dataset("cifar10", "test", data_dir=str(root)).name == "cifar10-jpeg"
    (root / "cifar10" / "test.jpeg.npz").unlink()
    _raises_one_line(
        lambda: load_dataset("cifar10", "test", data_dir=str(root)),
        "cifar-10-batches-py/",
        "cifar10/test.jpeg.npz",
        str(root),
        "DEEPCLUST_DATA",
    )


# The standard CIFAR-100 fine -> coarse table (evaluation.md section 3.1), twice: by name and flat.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR100_COARSE_OF_FINE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]  # fmt: skip


def _fake_cifar100(root: Path, per_class: dict[str, int]) -> None:
    """cifar-100-python/ built from the by-name table, indices in alphabetical order as in meta."""
    fine_names = sorted(f for fs in CIFAR100_SUPERCLASSES.values() for f in fs)
    coarse_names = sorted(CIFAR100_SUPERCLASSES)
    coarse_of = {f: coarse_names.index(c) for c, fs in CIFAR100_SUPERCLASSES.items() for f in fs}
    for part, n in per_class.items():
        fine = np.repeat(np.arange(100), n)
        RNG.shuffle(fine)
        data = RNG.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        _pickle(
            root / "cifar-100-python" / part,
            {
                "data": data,
                "fine_labels": fine.tolist(),
                "coarse_labels": [coarse_of[fine_names[i]] for i in fine],
                "filenames": [f"{i}.png" for i in range(len(fine))],
            },
        )
    _pickle(root / "cifar-100-python" / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})


def _trust(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Let the fake cifar-100-python/ files pass as official: their md5s replace torchvision's."""
    from deepclust.data import standard

    md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (root / "cifar-100-python").iterdir()}
    monkeypatch.setattr(standard, "_official_md5s", lambda: md5s)


def test_cifar100_coarse_labels_come_from_pickles_and_match_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepclust.data.standard import cifar100_fine_to_coarse

    _fake_cifar100(tmp_path, {"train": 2, "test": 1})
    _trust(monkeypatch, tmp_path)
    fine = load_dataset("cifar100", "train+test", data_dir=str(tmp_path))
    coarse = load_dataset("cifar100-20", "train+test", data_dir=str(tmp_path))
    assert fine.n_samples == coarse.n_samples == 300 and fine.images.shape == (300, 3, 32, 32)
    assert torch.equal(fine.images, coarse.images)
    assert len(fine.classes) == 100 and coarse.classes[0] == "aquatic_mammals" and len(coarse.classes) == 20
    derived = [-1] * 100
    for f, c in zip(fine.labels.tolist(), coarse.labels.tolist(), strict=True):
        assert derived[f] in (-1, c)
        derived[f] = c
    assert derived == CIFAR100_COARSE_OF_FINE
    assert cifar100_fine_to_coarse(tmp_path) == CIFAR100_COARSE_OF_FINE
    assert sorted(np.bincount(coarse.labels.numpy()).tolist()) == [15] * 20  # 5 fine classes x 3 images
    assert fine.classes[4] == "beaver" and coarse.classes[CIFAR100_COARSE_OF_FINE[4]] == "aquatic_mammals"


def test_cifar100_inconsistent_pickles_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cifar100(tmp_path, {"train": 2, "test": 1})
    path = tmp_path / "cifar-100-python" / "train"
    with open(path, "rb") as fh:
        entry = pickle.load(fh)
    entry["coarse_labels"][0] = (entry["coarse_labels"][0] + 1) % 20
    _pickle(path, entry)
    _trust(monkeypatch, tmp_path)
    _raises_one_line(lambda: load_dataset("cifar100-20", data_dir=str(tmp_path)), "more than one coarse label")
    _raises_one_line(
        lambda: load_dataset("cifar100-20", data_dir=str(tmp_path / "none")), "cifar-100-python/", "DEEPCLUST_DATA"
    )


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_cifar100_reads_only_official_files_and_no_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batches are pickles: a file whose md5 is not the official one is refused unread, and
    even a file that passed is unpickled with NumPy's array types only (issue #30)."""
    _fake_cifar100(tmp_path, {"train": 1, "test": 1})
    _raises_one_line(lambda: load_dataset("cifar100", data_dir=str(tmp_path)), "not the official file", "md5")
    marker = tmp_path / "MARKER"
    _pickle(tmp_path / "cifar-100-python" / "meta", {"fine_label_names": _Payload(marker)})
    _trust(monkeypatch, tmp_path)
    _raises_one_line(lambda: load_dataset("cifar100", data_dir=str(tmp_path)), "cannot read")
    assert not marker.exists()


def test_stl10_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.stl10 as tv_stl

    monkeypatch.setattr(tv_stl, "check_integrity", lambda *a, **k: True)
    base = tmp_path / "stl10_binary"
    base.mkdir()
    sets = {"train": 3, "test": 2, "unlabeled": 4}
    imgs = {k: RNG.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for k, n in sets.items()}
    for k, x in imgs.items():
        (base / f"{k}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())  # column-major
    (base / "train_y.bin").write_bytes(bytes([1, 2, 10]))
    (base / "test_y.bin").write_bytes(bytes([3, 4]))
    (base / "class_names.txt").write_text(
        "\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"])
    )
    tr = load_dataset("stl10", data_dir=str(tmp_path))
    assert np.array_equal(tr.images.numpy(), imgs["train"]) and tr.labels.tolist() == [0, 1, 9]
    assert tr.classes[1] == "bird"
    un = load_dataset("stl10", "unlabeled", data_dir=str(tmp_path))
    assert un.labels.tolist() == [-1] * 4 and un.classes == [] and not un.has_labels
    tt = load_dataset("stl10", "train+test", data_dir=str(tmp_path))
    assert tt.labels.tolist() == [0, 1, 9, 2, 3] and np.array_equal(tt.images[3:].numpy(), imgs["test"])
    tu = load_dataset("stl10", "train+unlabeled", data_dir=str(tmp_path), image_size=32)
    assert tu.images.shape == (7, 3, 32, 32) and tu.labels.tolist() == [0, 1, 9, -1, -1, -1, -1]


def test_fashion_mnist_torchvision_raw_layout(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = {
        "train": RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k": RNG.integers(0, 256, (2, 28, 28), dtype=np.uint8),
    }
    labels = {"train": [9, 0, 3], "t10k": [1, 2]}
    for k in imgs:
        (raw / f"{k}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(imgs[k]), 28, 28) + imgs[k].tobytes()
        )
        (raw / f"{k}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels[k])) + bytes(labels[k]))
    d = load_dataset("fashion-mnist", "train+test", data_dir=str(tmp_path))
    assert d.images.shape == (5, 1, 28, 28) and d.labels.tolist() == [9, 0, 3, 1, 2] and d.name == "fashion-mnist"
    assert np.array_equal(d.images[:3, 0].numpy(), imgs["train"]) and d.classes[0] == "T-shirt/top"
    _raises_one_line(
        lambda: load_dataset("fashion-mnist", data_dir=str(tmp_path / "x")),
        "fashion_mnist/train.npz",
        "FashionMNIST/raw/",
    )


# ------------------------------------------------------------------ real data (skipped without ../shared/data)


def test_real_fashion_mnist_test(shared_data: Path) -> None:
    d = load_dataset("fashion-mnist", "test", data_dir=str(shared_data))
    assert d.images.shape == (10000, 1, 28, 28) and d.name == "fashion-mnist"
    assert np.bincount(d.labels.numpy()).tolist() == [1000] * 10 and d.classes[-1] == "Ankle boot"


def test_real_cifar10_jpeg_test(shared_data: Path) -> None:
    d = load_dataset("cifar10", "test", data_dir=str(shared_data))
    assert d.name == "cifar10-jpeg" and d.images.shape == (10000, 3, 32, 32)
    mean = d.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.49, 0.48, 0.45]), atol=0.02), mean
    assert np.bincount(d.labels.numpy()).tolist() == [1000] * 10
    t = time.perf_counter()
    again = load_dataset("cifar10", "test", data_dir=str(shared_data))
    assert time.perf_counter() - t < 1.0 and torch.equal(again.images, d.images)

    exact = np.load(shared_data / "cifar10" / "exact_test_first1000.npz")
    orig = np.load(shared_data / "cifar10" / "test.jpeg.npz")["orig_index"]
    pos_of = {int(o): i for i, o in enumerate(exact["orig_index"])}
    pairs = [(j, pos_of[int(o)]) for j, o in enumerate(orig) if int(o) in pos_of]
    assert len(pairs) >= 100
    jpeg_idx, exact_idx = map(list, zip(*pairs, strict=True))
    jp = d.images[jpeg_idx].permute(0, 2, 3, 1).numpy().astype(np.float64)
    ex = exact["images"][exact_idx].astype(np.float64)
    assert np.abs(jp - ex).mean() < 10
    assert np.array_equal(d.labels[jpeg_idx].numpy(), exact["labels"][exact_idx])
