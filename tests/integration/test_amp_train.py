"""Every method trains under bf16 and fp16 autocast (fp16 with a gradient scaler) with the fast
paths on, through the CLI; one training step under autocast or channels-last stays within a
stated tolerance of the float32 eager step.

``torch.autocast("cpu")`` follows the dtype rules that matter here as CUDA's does (matmuls and
convolutions in the autocast dtype), so these CPU runs are the ones a GPU default
(``train.amp=auto`` = bf16 on CUDA) would meet; before the losses ran in float32 by
construction, SeCu stopped at its first bf16 step.

Tolerances of one step's loss against float32 eager (same weights, same augmentations):
channels-last in float32 rtol 1e-4 (the same arithmetic in another memory order); bf16
autocast rtol 5e-2 and fp16 rtol 1e-2 (the backbone's convolutions and matmuls run in the low
precision, eps 2^-8 / 2^-11, and every loss runs in float32).
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import pytest
import torch

from deepclust.cli import main
from deepclust.config import resolve_config
from deepclust.engine.fastpath import _to_channels_last, fused_supported
from deepclust.methods import DataInfo, create_method, get_method_class, list_methods

# every method that trains on images (scan clusters feature vectors only: tests/methods/test_scan.py)
METHODS = [m for m in list_methods() if get_method_class(m).accepts_images]
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
STEP_RTOL = {"bf16": 5e-2, "fp16": 1e-2, "channels_last": 1e-4}
#: smaller heads than the defaults keep the CLI runs cheap (half precision is slow on a CPU);
#: a method not named here runs with its defaults
SMALL = {
    "idfd": [],
    "secu": ["method_args.n_heads=2"],
    "cdc": ["method_args.hidden_dim=64", "method_args.cat_dim=32"],
    "anchorcl": ["method_args.init_n_init=1"],
}


def test_the_image_methods_are_covered() -> None:
    assert METHODS and set(SMALL) <= set(METHODS)  # no stale name among the reduced settings


@pytest.mark.slow
@pytest.mark.parametrize("amp", list(AMP))
@pytest.mark.parametrize("method", METHODS)
def test_cli_trains_two_epochs_under_autocast_with_fast_paths(method: str, amp: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    # the optimiser each method defaults to (idfd/secu: sgd, cdc/anchorcl: adam)
    opt = resolve_config({"method": method}).optim.name
    fused = "true" if fused_supported(opt, torch.device("cpu")) else "auto"
    code = main(
        [
            "train",
            "--method",
            method,
            "--data",
            "digits",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--batch-size",
            "512",
            "--out",
            str(out),
            "train.progress=false",
            "eval.n_init=1",
            "model.backbone=small_cnn",
            "model.width=8",
            f"train.amp={amp}",
            "train.channels_last=true",
            f"optim.fused={fused}",
            "model.feature_dim=32",
            *SMALL.get(method, []),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    rec = json.loads((out / "results.json").read_text())
    assert rec["epoch"] == 2 and 0.0 <= rec["acc"] <= 1.0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [v for line in lines for k, v in line.get("train", {}).items() if k.startswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    saved = (out / "config.yaml").read_text()
    assert f"amp: {amp}" in saved and "channels_last: true" in saved


# ----------------------------------------------------------------------------- one step vs fp32


@functools.cache  # built (and AnchorCL's k-means run) once per method; steps deep-copy it
def _method(name: str):
    cfg = resolve_config(
        {
            "method": name,
            "data": {"name": "digits", "image_size": 8},
            "model": {"backbone": "small_cnn", "feature_dim": 16, "width": 8},
            "train": {"device": "cpu", "batch_size": 32, "seed": 0},
            "method_args": {"n_heads": 2} if name == "secu" else {},
        }
    )
    info = DataInfo(n_samples=64, n_channels=1, image_size=8, mean=[0.3], std=[0.3], n_clusters=4)
    torch.manual_seed(0)
    m = create_method(cfg, info)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    m.setup(images)
    m.train()
    return m, images


def _step_loss(m, images: torch.Tensor, amp: torch.dtype | None) -> tuple[float, torch.Tensor]:
    """The loss of one training step (epoch 1: SeCu past its frozen epoch) and the backbone's
    first gradient, from a fixed augmentation stream."""
    m = copy.deepcopy(m)
    idx = torch.arange(32)
    torch.manual_seed(11)
    m.on_epoch_start(1)
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        out = m.training_step(images[idx], idx, 1)
    out.loss.backward()
    first = next(p for p in m.backbone.parameters() if p.grad is not None)
    return float(out.loss.detach()), first.grad.float().clone()


@pytest.mark.parametrize("variant", ["bf16", "fp16", "channels_last"])
@pytest.mark.parametrize("method", METHODS)
def test_one_step_stays_close_to_float32(method: str, variant: str) -> None:
    m, images = _method(method)
    ref, ref_grad = _step_loss(m, images, None)
    if variant == "channels_last":
        fast = copy.deepcopy(m)
        _to_channels_last(fast.backbone)
        got, got_grad = _step_loss(fast, images, None)
        torch.testing.assert_close(got_grad, ref_grad, rtol=1e-4, atol=1e-5)
    else:
        got, _ = _step_loss(m, images, AMP[variant])
    assert math.isfinite(got)
    assert got == pytest.approx(ref, rel=STEP_RTOL[variant]), f"{method} {variant}: {got} vs fp32 {ref}"
