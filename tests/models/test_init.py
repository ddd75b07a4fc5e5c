"""model.init (models/init.py): real key layouts of torchvision, MoCo v2/v3, DINO, SwAV and
deepclust checkpoints, built from torchvision's own ResNets (no download), mapped into
deepclust's backbones; one-line errors; torchvision's cache; the run's record of its init."""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm

from deepclust.cli import main as cli_main
from deepclust.config import resolve_config
from deepclust.engine import io, train
from deepclust.errors import CheckpointError
from deepclust.models import create_backbone
from deepclust.models.init import init_backbone

_HEAD_ROOTS = ("fc", "projection_head", "prototypes", "head", "predictor")


@functools.cache
def _tv_base(arch: str) -> dict:
    torch.manual_seed(0)
    net = getattr(tvm, arch)(weights=None)
    with torch.no_grad():  # BN buffers and affine away from their defaults, so a missed copy shows
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
                m.num_batches_tracked.fill_(7)
    return net.state_dict()


def _tv(arch: str = "resnet18", fc: nn.Module | None = None) -> dict:
    """The state dict of torchvision's ``arch`` (built once per test session), with ``fc``
    replaced by ``fc`` as the SSL codes do (nn.Identity: no fc keys)."""
    base = _tv_base(arch)
    sd = {k: v.clone() for k, v in base.items() if fc is None or not k.startswith("fc.")}
    return sd if fc is None else {**sd, **_prefixed(fc.state_dict(), "fc.")}


def _mlp(d: int, out: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, out))  # MoCo v2's projection: fc.0, fc.2


def _prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v.clone() for k, v in sd.items()}


def _other(sd: dict) -> dict:
    """A second encoder of the same layout with other values (MoCo's key / momentum encoder,
    DINO's student): loading it instead of the right one must show."""
    return {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}


def _encoder(sd: dict) -> dict:
    """The source tensors the backbone must end up with: everything but the heads."""
    return {k: v for k, v in sd.items() if k.split(".")[0] not in _HEAD_ROOTS}


def _moco_v2() -> tuple[dict, dict]:
    q = _tv(fc=_mlp(512))
    k = _other(q)
    sd = {
        **_prefixed(q, "module.encoder_q."),
        **_prefixed(k, "module.encoder_k."),
        "module.queue": torch.randn(128, 64),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    return {
        "epoch": 200,
        "arch": "resnet18",
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": []},
    }, _encoder(q)


def _moco_v3() -> tuple[dict, dict]:
    def mlp(d_in: int, hidden: int, out: int, last_bn: bool = True) -> nn.Sequential:
        layers = [
            nn.Linear(d_in, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, out, bias=False),
        ]
        return nn.Sequential(*layers, *([nn.BatchNorm1d(out, affine=False)] if last_bn else []))

    base = _tv(fc=mlp(512, 64, 32))
    momentum = _other(base)
    sd = {
        **_prefixed(base, "module.base_encoder."),
        **_prefixed(momentum, "module.momentum_encoder."),
        **_prefixed(mlp(32, 64, 32, last_bn=False).state_dict(), "module.predictor."),
    }
    return {"epoch": 300, "arch": "resnet18", "state_dict": sd, "optimizer": {}, "scaler": {}}, _encoder(base)


def _dino_head() -> dict:
    return {
        "head.mlp.0.weight": torch.randn(16, 512),
        "head.mlp.0.bias": torch.randn(16),
        "head.last_layer.weight_g": torch.randn(64, 1),
        "head.last_layer.weight_v": torch.randn(64, 16),
    }


def _dino_training() -> tuple[dict, dict]:
    teacher = _tv(fc=nn.Identity())
    student = _other(teacher)
    ckpt = {
        "student": {**_prefixed(student, "module.backbone."), **_prefixed(_dino_head(), "module.")},
        "teacher": {**_prefixed(teacher, "backbone."), **_dino_head()},
        "optimizer": {},
        "epoch": 100,
        "args": argparse.Namespace(arch="resnet50", out_dim=60000),  # admitted by name (INIT_GLOBALS)
    }
    return ckpt, teacher  # DINO's own evaluation reads the teacher


def _dino_state_dict() -> tuple[dict, dict]:
    net = _tv(fc=nn.Identity())
    return {"state_dict": {**_prefixed(net, "module.backbone."), **_prefixed(_dino_head(), "module.")}}, net


def _dino_bare() -> tuple[dict, dict]:
    net = _tv(fc=nn.Identity())
    return {**_prefixed(net, "backbone."), **_dino_head()}, net


def _swav() -> tuple[dict, dict]:
    net = _tv(fc=nn.Identity())
    proj = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16)).state_dict()
    sd = {
        **_prefixed(net, "module."),
        **_prefixed(proj, "module.projection_head."),
        "module.prototypes.weight": torch.randn(30, 16),
    }
    return sd, net


def _torchvision() -> tuple[dict, dict]:
    sd = _tv()
    return sd, _encoder(sd)


LAYOUTS = {
    "torchvision": (_torchvision, "torchvision"),
    "moco_v2": (_moco_v2, "moco_v2"),
    "moco_v3": (_moco_v3, "moco_v3"),
    "dino_training": (_dino_training, "dino"),
    "dino_state_dict": (_dino_state_dict, "dino"),
    "dino_bare": (_dino_bare, "dino"),
    "swav": (_swav, "swav"),
}


def _assert_loaded(backbone: nn.Module, source: dict) -> None:
    own = backbone.state_dict()
    assert {k for k in own if not k.endswith("num_batches_tracked")} == {
        f"net.{k}" for k in source if not k.endswith("num_batches_tracked")
    }
    for k, v in source.items():
        torch.testing.assert_close(own[f"net.{k}"], v, rtol=0, atol=0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ssl_layouts_map_into_the_deepclust_resnet(layout: str, tmp_path: Path) -> None:
    build, fmt = LAYOUTS[layout]
    ckpt, source = build()
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    backbone = create_backbone("resnet18", 3, "imagenet")
    record = init_backbone(backbone, str(path), "resnet18", "imagenet")
    _assert_loaded(backbone, source)
    assert record == {
        "source": str(path),
        "file": str(path),
        "format": fmt,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_torchvision_resnet50_loads_into_deepclust_resnet50_imagenet_stem(tmp_path: Path) -> None:
    sd = _tv("resnet50")
    path = tmp_path / "r50.pth"
    torch.save(sd, path)
    backbone = create_backbone("resnet50", 3, "imagenet")
    assert init_backbone(backbone, str(path), "resnet50", "imagenet")["format"] == "torchvision"
    _assert_loaded(backbone, _encoder(sd))  # every tensor but fc, in the module of the same name


def test_releases_without_num_batches_tracked_load(tmp_path: Path) -> None:
    sd = {k: v for k, v in _tv().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    backbone = create_backbone("resnet18", 3, "imagenet")
    init_backbone(backbone, str(tmp_path / "old.pth"), "resnet18", "imagenet")
    _assert_loaded(backbone, _encoder(sd))


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_mismatches_name_the_first_key_that_does_not_fit(tmp_path: Path) -> None:
    torch.save(_tv("resnet50"), tmp_path / "r50.pth")
    torch.save(_tv("resnet18"), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(create_backbone("resnet18", 3, "imagenet"), str(tmp_path / "r50.pth"), "resnet18", "imagenet")
    _one_line(exc, "'layer1.0.conv1.weight'", "(64, 64, 1, 1)", "model.backbone=resnet50")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(create_backbone("resnet18", 3, "cifar"), str(tmp_path / "r18.pth"), "resnet18", "cifar")
    _one_line(exc, "'conv1.weight'", "model.stem=imagenet")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(create_backbone("small_cnn", 1, "cifar"), str(tmp_path / "r18.pth"), "small_cnn", "cifar")
    _one_line(exc, "model.backbone=resnet18")
    partial = {k: v for k, v in _tv().items() if not k.startswith("layer4.1.")}
    torch.save(partial, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(create_backbone("resnet18", 3, "imagenet"), str(tmp_path / "cut.pth"), "resnet18", "imagenet")
    _one_line(exc, "'layer4.1.conv1.weight'", "missing")


def _vit_like() -> dict:
    return {
        "cls_token": torch.zeros(1, 1, 8),
        "patch_embed.proj.weight": torch.zeros(8, 3, 4, 4),
        "blocks.0.attn.qkv.weight": torch.zeros(24, 8),
        "head.weight": torch.zeros(10, 8),
    }


def test_not_a_resnet_is_one_line_and_exit_2_in_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save({"state_dict": _vit_like()}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(create_backbone("resnet18", 3, "imagenet"), str(tmp_path / "vit.pth"), "resnet18", "imagenet")
    _one_line(exc, "is not a ResNet checkpoint", "'cls_token'")
    code = cli_main(
        [
            "train",
            "--method",
            "idfd",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
            "--init",
            str(tmp_path / "vit.pth"),
            "train.progress=false",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not a ResNet checkpoint" in err[0], err


def test_missing_and_unreadable_files_are_one_line(tmp_path: Path) -> None:
    backbone = create_backbone("resnet18", 3, "imagenet")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(backbone, str(tmp_path / "moco_v2_800ep_pretrain.pth.tar"), "resnet50", "imagenet")
    _one_line(exc, "moco_v2_800ep_pretrain.pth.tar", "MoCo v2", "--init PATH")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(backbone, str(tmp_path / "junk.pth"), "resnet18", "imagenet")
    _one_line(exc, "cannot be read")


def _deepclust_ckpt(tmp_path: Path, backbone: str, stem: str) -> tuple[Path, dict]:
    """A checkpoint as the trainer writes it (engine/checkpoint.py RunState.state)."""
    cfg = resolve_config({"method": "idfd", "model": {"backbone": backbone, "stem": stem, "width": 4}})
    torch.manual_seed(5)
    bb = create_backbone(backbone, 1, stem, width=4)
    model = {**_prefixed(bb.state_dict(), "backbone."), "head.weight": torch.randn(4, 4)}
    path = tmp_path / "run" / io.CHECKPOINT
    io.save_checkpoint({"method": "idfd", "config": cfg.to_dict(), "epoch": 3, "model": model}, path)
    return path.parent, bb.state_dict()


def test_deepclust_run_as_before(tmp_path: Path) -> None:
    run, saved = _deepclust_ckpt(tmp_path, "small_cnn", "cifar")
    backbone = create_backbone("small_cnn", 1, "cifar", width=4)
    record = init_backbone(backbone, str(run), "small_cnn", "cifar")
    assert record["format"] == "deepclust" and record["file"] == str(run / io.CHECKPOINT)
    for k, v in saved.items():
        torch.testing.assert_close(backbone.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(CheckpointError) as exc:
        init_backbone(create_backbone("resnet18", 1, "cifar"), str(run), "resnet18", "cifar")
    _one_line(exc, "deepclust small_cnn", "use the same model.backbone and stem")


def test_torchvision_names_through_torchvisions_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    backbone = create_backbone("resnet18", 3, "imagenet")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(backbone, "torchvision:resnet18.IMAGENET1K_V1", "resnet18", "imagenet")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    _one_line(exc, "not in torchvision's cache", str(cached.parent), "--init PATH")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(backbone, "torchvision:resnet18.IMAGENET9K", "resnet18", "imagenet")
    _one_line(exc, "IMAGENET1K_V1")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"truncated")
    with pytest.raises(CheckpointError) as exc:
        init_backbone(backbone, "torchvision:resnet18.IMAGENET1K_V1", "resnet18", "imagenet")
    _one_line(exc, "cannot be read", "delete it")
    sd = _tv()
    torch.save(sd, cached)  # where torchvision's get_state_dict looks before downloading
    record = init_backbone(backbone, "torchvision:resnet18.IMAGENET1K_V1", "resnet18", "imagenet")
    _assert_loaded(backbone, _encoder(sd))
    assert record == {
        "source": "torchvision:resnet18.IMAGENET1K_V1",
        "file": str(cached),
        "format": "torchvision",
        "sha256": hashlib.sha256(cached.read_bytes()).hexdigest(),
    }


def test_the_run_records_its_initial_weights(tmp_path: Path) -> None:
    run, _ = _deepclust_ckpt(tmp_path, "small_cnn", "cifar")
    out = tmp_path / "trained"
    images = torch.randint(0, 256, (48, 8, 8), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy()
    np.savez(tmp_path / "tiny.npz", images=images)
    cfg = resolve_config(
        {
            "method": "idfd",
            "n_clusters": 3,
            "data": {"name": f"npz:{tmp_path / 'tiny.npz'}"},
            "model": {"backbone": "small_cnn", "stem": "cifar", "width": 4, "feature_dim": 8, "init": str(run)},
            "train": {"epochs": 1, "batch_size": 48, "out": str(out), "device": "cpu", "progress": False},
            "eval": {"n_init": 1},
        }
    )
    record = train(copy.deepcopy(cfg))
    want = {
        "source": str(run),
        "file": str(run / io.CHECKPOINT),
        "format": "deepclust",
        "sha256": hashlib.sha256((run / io.CHECKPOINT).read_bytes()).hexdigest(),
    }
    assert record["init"] == want
    assert json.loads((out / io.RESULTS).read_text())["init"] == want
    assert io.load_checkpoint(out)["init"] == want


def test_cdc_imagenet_config_asks_for_its_checkpoint_before_reading_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepclust.config import deep_merge, load_yaml, packaged_config
    from deepclust.engine import Trainer

    monkeypatch.chdir(tmp_path)  # no checkpoint here, and no ImageNet either: the init error comes first
    raw = deep_merge(
        load_yaml(packaged_config("cdc/imagenet")),
        {"data": {"data_dir": str(tmp_path / "none")}, "train": {"out": str(tmp_path / "run")}},
    )
    with pytest.raises(CheckpointError) as exc:
        Trainer(resolve_config(raw))
    _one_line(exc, "moco_v2_800ep_pretrain.pth.tar", "--init PATH", "MoCo v2")


def test_a_damaged_deepclust_checkpoint_is_corrupt_as_init(tmp_path: Path) -> None:
    # Its weights still load, so only the stored checksum can tell (as resume and eval check it).
    run, _ = _deepclust_ckpt(tmp_path, "small_cnn", "cifar")
    ckpt = torch.load(run / io.CHECKPOINT, weights_only=False)
    ckpt["model"][
        "backbone.stem.0.weight" if "backbone.stem.0.weight" in ckpt["model"] else next(iter(ckpt["model"]))
    ] += 1.0
    torch.save(ckpt, run / io.CHECKPOINT)  # the old checksum, now wrong
    with pytest.raises(CheckpointError) as exc:
        init_backbone(create_backbone("small_cnn", 1, "cifar", width=4), str(run), "small_cnn", "cifar")
    _one_line(exc, "checkpoint corrupt")
