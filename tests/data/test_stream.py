"""Streamed datasets (data/stream.py, data/crops.py, data/imagenet.py, engine/stream_loader.py):
views against Pillow computed independently, per-sample determinism, bad input, and short
end-to-end runs of the ImageNet configs on a generated ImageNet-layout tree."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepclust.augment import Augment, AugmentConfig, EvalTransform
from deepclust.data import StreamData, open_dataset
from deepclust.data.crops import ViewSpec, crop_boxes, decode_views, sample_rng
from deepclust.data.filelist import FileList
from deepclust.engine.stream_loader import StreamLoader
from deepclust.errors import DataError

from ..torchrun_env import free_port, set_torchrun_env

RNG = np.random.default_rng(1)


def _jpeg(path: Path, h: int, w: int, k: int = 0, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 40 * (k % 6))], -1)
    img = np.clip(base + RNG.integers(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img[..., 0] if gray else img).save(path, quality=90)


def make_imagenet(root: Path, n_cls: int = 4, train: int = 50, val: int = 12) -> Path:
    """An ImageNet-layout tree of JPEGs of assorted sizes under root/imagenet."""
    for split, m in (("train", train), ("val", val)):
        for k in range(n_cls):
            for j in range(m):
                h, w = (int(v) for v in RNG.integers(24, 120, 2))
                _jpeg(root / "imagenet" / split / f"n{k:08d}" / f"n{k:08d}_{j}.JPEG", h, w, k)
    return root


# ----------------------------------------------------------------------------------- crops


def test_plain_and_center_views_match_pillow(tmp_path: Path) -> None:
    p = tmp_path / "a.png"  # lossless: the PIL decoder path without DCT scaling
    Image.fromarray(RNG.integers(0, 256, (50, 80, 3), dtype=np.uint8)).save(p)
    plain, center = decode_views(p, [ViewSpec("plain"), ViewSpec("center", crop=0.5)], 16, "RGB", sample_rng(0, 0, 0))
    with Image.open(p) as im:
        ref_plain = np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
        # centred square of half the shorter side (25 px) of an 80 x 50 image: x 27.5..52.5, y 12.5..37.5
        box = (27.5, 12.5, 52.5, 37.5)
        ref_center = np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR, box=box))
    np.testing.assert_array_equal(plain, ref_plain)
    np.testing.assert_array_equal(center, ref_center)


def test_random_boxes_follow_scale_and_ratio() -> None:
    spec = ViewSpec("random", (0.2, 0.6), (0.5, 2.0))
    areas, ratios = [], []
    for i in range(400):
        ((left, top, w, h),) = crop_boxes(300, 200, [spec], sample_rng(3, 1, i))
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        areas.append(w * h / 60000)
        ratios.append(w / h)
    assert 0.19 <= min(areas) and max(areas) <= 0.61 and np.ptp(areas) > 0.3
    assert 0.45 <= min(ratios) and max(ratios) <= 2.1
    # the same (seed, epoch, index) gives the same box; another epoch another box
    assert crop_boxes(300, 200, [spec], sample_rng(3, 1, 5)) == crop_boxes(300, 200, [spec], sample_rng(3, 1, 5))
    assert crop_boxes(300, 200, [spec], sample_rng(3, 1, 5)) != crop_boxes(300, 200, [spec], sample_rng(3, 2, 5))


def test_jpeg_draft_decoding_matches_full_decoding(tmp_path: Path) -> None:
    p = tmp_path / "big.JPEG"
    _jpeg(p, 400, 520)
    specs = [ViewSpec("random", (0.5, 1.0)), ViewSpec("plain")]
    fast = decode_views(p, specs, 32, "RGB", sample_rng(0, 0, 7))  # DCT-scaled by 1/4 or 1/8
    boxes = crop_boxes(520, 400, specs, sample_rng(0, 0, 7))
    with Image.open(p) as im:
        full = im.convert("RGB")
        for view, (l, t, w, h) in zip(fast, boxes, strict=True):
            ref = np.asarray(full.resize((32, 32), Image.Resampling.BILINEAR, box=(l, t, l + w, t + h)))
            assert np.abs(view.astype(int) - ref.astype(int)).mean() < 4.0
    tv = decode_views(p, specs, 32, "RGB", sample_rng(0, 0, 7), decoder="torchvision")
    for a, b in zip(fast, tv, strict=True):
        assert a.shape == b.shape == (32, 32, 3) and np.abs(a.astype(int) - b.astype(int)).mean() < 6.0


def test_file_list_round_trips() -> None:
    names = [f"n{k}/ü_{j}.JPEG" for k in range(3) for j in range(k + 2)]
    fl = FileList.from_paths(Path("/r"), names)
    assert list(fl) == names and len(fl) == len(names) and fl.full(2) == Path("/r") / names[2]
    assert list(fl.subset([4, 0])) == [names[4], names[0]]


# ----------------------------------------------------------------------------------- loader


def test_loader_serves_the_planned_rows_with_per_sample_views(tmp_path: Path) -> None:
    make_imagenet(tmp_path, n_cls=2, train=10, val=2)
    data = open_dataset("imagenet", "train", tmp_path, 24, workers=1)
    assert isinstance(data, StreamData) and data.n_samples == 20 and data.labels.tolist() == [0] * 10 + [1] * 10
    a1 = Augment(AugmentConfig(crop_scale=(0.3, 1.0)), 24, None, None)
    a2 = Augment(AugmentConfig(crop_scale=(0.08, 0.2)), 24, None, None)
    ev = EvalTransform(24, None, None)
    loader = StreamLoader(data, [ev, a1, a2], torch.device("cpu"), seed=5, workers=1)
    loader.set_epoch(3)
    plan = [torch.tensor([7, 2, 19]), torch.tensor([0, 11])]
    got = list(loader.batches_of(plan))
    assert [g[1].tolist() for g in got] == [p.tolist() for p in plan]  # only these rows, in this order
    specs = [
        ViewSpec("plain"),
        ViewSpec("random", (0.3, 1.0), (3 / 4, 4 / 3)),
        ViewSpec("random", (0.08, 0.2), (3 / 4, 4 / 3)),
    ]
    for batch, idx in got:
        for row, i in enumerate(idx.tolist()):
            ref = decode_views(data.files.full(i), specs, 24, "RGB", sample_rng(5, 3, i))
            for k in range(3):  # ev, a1, a2
                np.testing.assert_array_equal(batch.views[k][row].permute(1, 2, 0).numpy(), ref[k])
        # each pipeline takes the view cut for it, in call order, and skips its own crop
        assert torch.equal(ev(batch), batch.views[0].float() / 255)
        out1, out2 = a1(batch), a2(batch)
        assert out1.shape == out2.shape == (len(idx), 3, 24, 24)
        with pytest.raises(RuntimeError, match="stream_views"):
            a1(batch)


def test_gpu_decode_path_gives_the_torchvision_views(tmp_path: Path) -> None:
    make_imagenet(tmp_path, n_cls=1, train=4, val=1)
    data = open_dataset("imagenet", "train", tmp_path, 16, decoder="torchvision", workers=0)
    aug = Augment(AugmentConfig(), 16, None, None)
    loader = StreamLoader(data, [aug, aug], torch.device("cpu"), seed=1, workers=0)
    loader.set_epoch(2)
    ((batch, idx),) = loader.batches_of([torch.tensor([3, 1])])
    raw = [torch.from_numpy(np.fromfile(data.files.full(i), dtype=np.uint8)) for i in idx.tolist()]
    on_device = loader._decode_on_device(raw, idx)  # the CUDA path's logic, run on the CPU
    for k in range(2):
        torch.testing.assert_close(on_device[k], batch.views[k], rtol=0, atol=0)


# ----------------------------------------------------------------------------------- bad input


def _one_line(fn, *needles: str) -> None:
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_bad_imagenet_layouts(tmp_path: Path) -> None:
    _one_line(lambda: open_dataset("imagenet", "train", tmp_path), "imagenet/train/<wnid>/*.JPEG")
    make_imagenet(tmp_path, n_cls=2, train=2, val=0)
    for k in range(2):
        (tmp_path / "imagenet" / "val" / f"n{k:08d}").mkdir(parents=True)
    _one_line(lambda: open_dataset("imagenet", "val", tmp_path), "2 wnid folder(s)", "hold no images")
    for d in (tmp_path / "imagenet" / "val").iterdir():
        d.rmdir()
    _jpeg(tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG", 20, 20)
    _one_line(lambda: open_dataset("imagenet", "val", tmp_path), "no wnid folders", "val/<wnid>/")
    (tmp_path / "imagenet" / "val").rename(tmp_path / "gone")
    _one_line(lambda: open_dataset("imagenet", "val", tmp_path), "missing", "val")
    _one_line(lambda: open_dataset("imagenet", "test", tmp_path), "valid splits: train, val")
    _one_line(lambda: open_dataset("imagenet", "train", tmp_path, stream=False), "does not fit in memory")
    _one_line(lambda: open_dataset("digits", "train", stream=True), "only folder:PATH and imagenet")


def test_folder_streams_when_over_budget(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for k in range(2):
        for j in range(6):
            _jpeg(tmp_path / "f" / f"c{k}" / f"{j}.jpg", 30 + j, 40, k, gray=True)
    with caplog.at_level(logging.INFO, logger="deepclust.data"):
        held = open_dataset(f"folder:{tmp_path / 'f'}", "train", image_size=16)
        streamed = open_dataset(f"folder:{tmp_path / 'f'}", "train", image_size=16, memory_budget_gb=1e-6)
    assert not isinstance(held, StreamData) and held.images.shape == (12, 1, 16, 16)
    assert (
        isinstance(streamed, StreamData)
        and streamed.n_channels == 1
        and streamed.labels.tolist() == held.labels.tolist()
    )
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "held in memory" in text and "streamed from disk" in text
    # the plain view of the stream is what the in-memory loader stores (both: Pillow bilinear)
    plain = streamed.view(ViewSpec("plain"))[torch.arange(12)]
    assert (plain.int() - held.images.int()).abs().float().mean() < 1.5
    # evaluation streams the same view through worker processes, in row order, sharded by slicing
    batches = list(streamed.images[2:12].batches(4, torch.device("cpu"), workers=1))
    assert [len(b) for b in batches] == [4, 4, 2]
    torch.testing.assert_close(torch.cat(batches), plain[2:], rtol=0, atol=0)


def test_stored_size_is_native_for_fixed_size_datasets() -> None:
    from deepclust.data import load_dataset

    d = open_dataset("digits", "train", image_size=16)
    assert d.images.shape[-2:] == (8, 8)
    torch.testing.assert_close(d.images, load_dataset("digits", "train").images, rtol=0, atol=0)
    assert open_dataset("digits", "train", image_size=16, stored_size=12).images.shape[-2:] == (12, 12)


# ----------------------------------------------------------------------------------- end to end


def _imagenet_cfg(name: str, data_dir: Path, out: Path, epochs: int = 1, **extra):
    from deepclust.config import deep_merge, load_yaml, packaged_config, resolve_config

    raw = load_yaml(packaged_config(name))
    small = {
        "n_clusters": 4,
        "data": {"data_dir": str(data_dir), "image_size": 16, "workers": 1},
        "model": {"backbone": "small_cnn", "stem": "cifar", "width": 8, "init": None},  # no SSL checkpoint here
        "optim": {"warmup_epochs": 0},
        "train": {
            "epochs": epochs,
            "batch_size": 40,
            "device": "cpu",
            "progress": False,
            "out": str(out),
            "eval_every": 0,
            "checkpoint_every": 1,
        },
        "eval": {"batch_size": 64},
        "method_args": (
            {"n_heads": 2, "projection_hidden": 32, "frozen_epochs": 0}
            if "secu" in name
            else {"queue_size": 0, "hidden_dim": 32, "cat_dim": 16}
        ),
    }
    return resolve_config(deep_merge(deep_merge(raw, small), extra))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["secu/imagenet", "cdc/imagenet"])
def test_imagenet_configs_train_on_an_imagenet_tree(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from deepclust.engine import train

    make_imagenet(tmp_path / "data", n_cls=4, train=50, val=12)
    bad = tmp_path / "data" / "imagenet" / "train" / "n00000002" / "n00000002_3.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: replaced mid-epoch, named once
    with caplog.at_level(logging.WARNING):
        rec = train(_imagenet_cfg(name, tmp_path / "data", tmp_path / "run", epochs=1))
    assert rec["protocol"] == "train->test" and rec["train_split"] == "train" and rec["eval_split"] == "val"
    assert rec["dataset"] == "imagenet" and rec["n_eval"] == 48 and rec["n_clusters"] == 4
    warned = [r.getMessage() for r in caplog.records if "n00000002_3.JPEG" in r.getMessage()]
    assert len(warned) == 1 and "replaced" in warned[0]


def test_anchorcl_trains_on_a_streamed_folder(tmp_path: Path) -> None:
    # three views per image (the plain anchor and two crops) and setup() on the plain views
    from deepclust.config import resolve_config
    from deepclust.engine import train

    for k in range(3):
        for j in range(12):
            _jpeg(tmp_path / "f" / f"c{k}" / f"{j}.jpg", 30 + 3 * j, 50 - j, k)
    cfg = resolve_config(
        {
            "method": "anchorcl",
            "data": {"name": f"folder:{tmp_path / 'f'}", "image_size": 16, "stream": True, "workers": 1},
            "model": {"backbone": "small_cnn", "width": 8, "feature_dim": 16},
            "train": {"epochs": 1, "batch_size": 12, "device": "cpu", "progress": False, "out": str(tmp_path / "run")},
            "method_args": {"init_batch_size": 8, "init_n_init": 1},
            "eval": {"n_init": 1},
        }
    )
    rec = train(cfg)
    assert rec["dataset"].startswith("folder:") and rec["n_eval"] == 36 and rec["protocol"] == "train+test"


@pytest.mark.slow
def test_streamed_resume_is_exact(tmp_path: Path) -> None:
    # IDFD: its in-memory resume is exact (tests/integration/test_train_e2e.py); CDC's is not, streamed or not
    from deepclust.config import resolve_config
    from deepclust.engine import io, train

    make_imagenet(tmp_path / "data", n_cls=4, train=20, val=4)

    def cfg(out: Path, epochs: int):
        return resolve_config(
            {
                "method": "idfd",
                "n_clusters": 4,
                "data": {
                    "name": "imagenet",
                    "train_split": "train",
                    "eval_split": "val",
                    "data_dir": str(tmp_path / "data"),
                    "image_size": 16,
                    "workers": 1,
                    "mean": [0.5] * 3,
                    "std": [0.25] * 3,
                },
                "model": {"backbone": "small_cnn", "width": 8, "feature_dim": 16},
                "train": {"epochs": epochs, "batch_size": 32, "device": "cpu", "progress": False, "out": str(out)},
                "eval": {"n_init": 1},
            }
        )

    train(cfg(tmp_path / "straight", 2))
    train(cfg(tmp_path / "split", 1))
    (tmp_path / "split" / io.RESULTS).unlink()
    train(cfg(tmp_path / "split", 2), resume=True)
    a, b = io.load_checkpoint(tmp_path / "straight")["model"], io.load_checkpoint(tmp_path / "split")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after a streamed resume")


@pytest.mark.parametrize("layout", ["none", "empty-wnid", "no-val"])
def test_cli_bad_imagenet_is_one_line_exit_2(tmp_path: Path, layout: str, capsys) -> None:
    from deepclust.cli import main

    if layout != "none":
        make_imagenet(tmp_path, n_cls=2, train=2, val=1)
        if layout == "empty-wnid":
            (tmp_path / "imagenet" / "train" / "n00000009").mkdir()
        else:
            for f in (tmp_path / "imagenet" / "val").rglob("*.JPEG"):
                f.unlink()
            for d in (tmp_path / "imagenet" / "val").iterdir():
                d.rmdir()
            (tmp_path / "imagenet" / "val").rmdir()
    code = main(["-q", "train", "secu/imagenet", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if not x.startswith(("WARNING", "INFO"))]
    assert code == 2 and len(lines) == 1 and "imagenet" in lines[0] and "Traceback" not in err, err


def test_report_thumbnails_decode_only_the_rows_shown(tmp_path: Path) -> None:
    from deepclust.report.build import _thumbnail_images

    for j in range(9):
        _jpeg(tmp_path / "f" / f"{j}.jpg", 20 + j, 30, j)
    data = open_dataset(f"folder:{tmp_path / 'f'}", "train", image_size=12, stream=True, workers=0)
    everything = data.images[torch.arange(9)].numpy()
    nearest = [np.array([7, 2]), np.array([], dtype=np.int64), np.array([2, 5, 0])]
    shown, rows = _thumbnail_images(data.images, nearest)
    assert len(shown) == 4  # rows 0, 2, 5, 7 only
    for r, want in zip(rows, nearest, strict=True):
        np.testing.assert_array_equal(shown[r], everything[want])


def _stream_raw(data_dir: Path, out: Path) -> dict:
    return {
        "method": "idfd",
        "n_clusters": 4,
        "data": {
            "name": "imagenet",
            "train_split": "train",
            "eval_split": "val",
            "data_dir": str(data_dir),
            "image_size": 12,
            "workers": 1,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
        },
        "model": {"backbone": "small_cnn", "width": 8, "feature_dim": 16},
        "optim": {"schedule": "constant", "lr": 0.01},
        "train": {
            "epochs": 1,
            "batch_size": 32,
            "device": "cpu",
            "progress": False,
            "out": str(out),
            "sync_bn": True,
            "seed": 3,
        },
        # the streamed crops do not depend on the process; the on-device steps are identities
        "augment": {
            "crop_scale": [0.3, 1.0],
            "jitter": [0, 0, 0, 0],
            "jitter_p": 0.0,
            "grayscale_p": 0.0,
            "flip_p": 0.0,
        },
        "eval": {"n_init": 1},
    }


def _stream_worker(rank: int, port: int, raw: dict) -> None:
    from deepclust.config import resolve_config
    from deepclust.engine import train

    set_torchrun_env(rank, port, 2)
    torch.set_num_threads(1)
    train(resolve_config(raw))


@pytest.mark.slow  # two spawned gloo processes: about 80 s at load 8 on 2 cores, like tests/engine/test_distributed.py
@pytest.mark.multiprocess
def test_two_processes_streaming_their_rows_equal_one_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from deepclust.config import resolve_config
    from deepclust.engine import io, train

    make_imagenet(tmp_path / "data", n_cls=4, train=18, val=2)  # 72 images: steps of 32, 32, 8 rows
    mp.spawn(_stream_worker, args=(free_port(), _stream_raw(tmp_path / "data", tmp_path / "two")), nprocs=2, join=True)
    train(resolve_config(_stream_raw(tmp_path / "data", tmp_path / "one")))
    a, b = io.load_checkpoint(tmp_path / "two")["model"], io.load_checkpoint(tmp_path / "one")["model"]
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(
                a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k}: 2 streaming processes differ from 1"
            )
        else:
            assert torch.equal(a[k], b[k]), k
