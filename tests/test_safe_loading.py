"""A file from elsewhere is data, never code (issue #30).

Every entry point that reads a checkpoint or weights file is given a crafted one whose payload
would create a marker file when unpickled: none creates it, each command prints one line on
stderr and exits 2. Checkpoints written before RNG states were stored as tensors (dd4f959)
still load, through an allow-list of NumPy's array types, and resume exactly.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deepclust.api import DeepClusterer
from deepclust.cli import main
from deepclust.config import resolve_config
from deepclust.engine import io, train
from deepclust.errors import CheckpointError
from deepclust.models import create_backbone
from deepclust.models.init import init_backbone


class Payload:
    """Unpickling this calls ``Path(marker).touch()``: code a checkpoint must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def craft(path: Path, marker: Path, raw: bool = False) -> Path:
    """A checkpoint-shaped file carrying the payload: torch's zip format, or a plain pickle."""
    state = {"method": "idfd", "model": {"w": torch.ones(2)}, "epoch": 1, "config": {}, "rng": Payload(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw:
        path.write_bytes(pickle.dumps(state, protocol=4))
    else:
        torch.save(state, path)
    return path


def tiny_cfg(data: Path, out: Path, epochs: int = 1, k: int = 3):
    return resolve_config(
        {
            "method": "idfd",
            "n_clusters": k,
            "data": {"name": f"npz:{data}"},
            "eval": {"n_init": 1},
            "train": {"epochs": epochs, "batch_size": 60, "device": "cpu", "out": str(out), "progress": False},
        }
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """A tiny finished run, and a copy of it whose checkpoint is crafted."""
    tmp = tmp_path_factory.mktemp("safe")
    rng = np.random.default_rng(0)
    data = tmp / "toy.npz"
    np.savez(data, images=rng.integers(0, 256, (120, 10, 10), dtype=np.uint8), labels=rng.integers(0, 3, 120))
    run = tmp / "run"
    train(tiny_cfg(data, run))
    return {"tmp": tmp, "data": data, "run": run}


def crafted_run(env: dict[str, Path], name: str, marker: Path, raw: bool = False) -> Path:
    """A copy of the tiny run (config, logs, results) whose checkpoint carries the payload."""
    run = env["tmp"] / name
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(env["run"], run)
    craft(run / io.CHECKPOINT, marker, raw)
    return run


def _cli_refuses(args: list[str], marker: Path, capsys: pytest.CaptureFixture, *expected: str) -> str:
    code = main(["-q", *args])
    err = capsys.readouterr().err
    assert not marker.exists(), "the payload ran"
    assert code == 2, err
    lines = [x for x in err.strip().splitlines() if not x.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and lines[0].startswith("deepclust: error:") and "Traceback" not in err, err
    for piece in expected:
        assert piece in lines[0], lines[0]
    return lines[0]


ENTRY_POINTS = {
    "resume": lambda run, env: ["resume", str(run)],
    "eval": lambda run, env: ["eval", str(run)],
    "predict": lambda run, env: ["predict", str(run), "--data", f"npz:{env['data']}", "--out", str(run / "c.csv")],
    "report": lambda run, env: ["report", str(run)],
    "selflabel": lambda run, env: ["selflabel", str(run)],
}


@pytest.mark.parametrize("raw", [False, True], ids=["torch-zip", "plain-pickle"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_run_directory_commands_refuse_a_crafted_checkpoint(
    entry: str, raw: bool, env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "MARKER"
    run = crafted_run(env, f"{entry}_{raw}", marker, raw)
    line = _cli_refuses(
        ENTRY_POINTS[entry](run, env), marker, capsys, str(run / io.CHECKPOINT), "needs the Python type"
    )
    assert "pathlib" in line or "getattr" in line  # the type the payload needs is named


def test_sweep_k_reusing_a_run_refuses_a_crafted_checkpoint(
    env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "MARKER"
    sweep = tmp_path / "sweep"
    shutil.copytree(env["run"], sweep / "k3")  # a finished K=3 run: reused, its checkpoint read for the criteria
    craft(sweep / "k3" / io.CHECKPOINT, marker)
    args = [
        "sweep-k",
        "--method",
        "idfd",
        "--data",
        f"npz:{env['data']}",
        "--k",
        "3",
        "--device",
        "cpu",
        "--out",
        str(sweep),
    ]
    _cli_refuses(args, marker, capsys, "needs the Python type")


@pytest.mark.parametrize("raw", [False, True], ids=["torch-zip", "plain-pickle"])
def test_train_init_refuses_a_crafted_file(
    raw: bool, env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "MARKER"
    weights = craft(tmp_path / "moco.pth.tar", marker, raw)
    args = [
        "train",
        "--method",
        "idfd",
        "--data",
        f"npz:{env['data']}",
        "--n-clusters",
        "3",
        "--device",
        "cpu",
        "--init",
        str(weights),
        "--out",
        str(tmp_path / "out"),
        "train.epochs=1",
    ]
    _cli_refuses(args, marker, capsys, str(weights), "needs the Python type")


def test_estimator_load_refuses_a_crafted_file(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = craft(tmp_path / "est.pt", marker)
    with pytest.raises(CheckpointError) as exc:
        DeepClusterer.load(path)
    assert not marker.exists() and "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_init_allows_only_the_named_types(tmp_path: Path) -> None:
    """DINO's argparse Namespace is admitted by name; any other class is refused, named."""
    backbone = create_backbone("resnet18", 3, "cifar")
    sd = create_backbone("resnet18", 3, "cifar").net.state_dict()
    dino = tmp_path / "dino.pth"
    torch.save(
        {"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "args": argparse.Namespace(arch="resnet18")}, dino
    )
    assert init_backbone(backbone, str(dino), "resnet18", "cifar")["format"] == "dino"
    other = tmp_path / "other.pth"
    torch.save({"state_dict": sd, "extra": pathlib.PurePosixPath("x")}, other)
    with pytest.raises(CheckpointError) as exc:
        init_backbone(backbone, str(other), "resnet18", "cifar")
    assert "pathlib.PurePosixPath" in str(exc.value) and str(other) in str(exc.value) and "\n" not in str(exc.value)


def test_safetensors_init(tmp_path: Path) -> None:
    src = create_backbone("resnet18", 3, "cifar")
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in src.net.state_dict().items()}, str(path))
    backbone = create_backbone("resnet18", 3, "cifar")
    record = init_backbone(backbone, str(path), "resnet18", "cifar")
    assert record["format"] == "torchvision"
    for k, v in src.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(CheckpointError, match="cannot be read"):
        init_backbone(backbone, str(bad), "resnet18", "cifar")


def test_new_checkpoints_hold_only_tensors_and_plain_data(env: dict[str, Path]) -> None:
    path = env["run"] / io.CHECKPOINT
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    torch.load(path, weights_only=True)  # no allow-list needed


def _as_dd4f959(run: Path) -> None:
    """Rewrite a run's checkpoint as deepclust dd4f959 wrote it: the NumPy RNG state as the tuple
    of ``np.random.get_state()`` (a uint32 ndarray inside), checksummed and saved the same way."""
    ckpt = io.load_checkpoint(run)
    st = ckpt["rng"]["numpy"]
    ckpt["rng"]["numpy"] = (
        st["bit_generator"],
        st["key"].numpy().astype(np.uint32),
        st["pos"],
        st["has_gauss"],
        st["gauss"],
    )
    torch.save(io.with_checksum(ckpt), run / io.CHECKPOINT)


def test_a_dd4f959_checkpoint_resumes_exactly(env: dict[str, Path], tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(tiny_cfg(env["data"], straight, epochs=2))
    old = tmp_path / "old"
    train(tiny_cfg(env["data"], old, epochs=1))
    _as_dd4f959(old)
    path = old / io.CHECKPOINT
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # needs the allow-list
    (old / io.RESULTS).unlink()
    train(tiny_cfg(env["data"], old, epochs=2), resume=True)
    a, b = io.load_checkpoint(straight)["model"], io.load_checkpoint(old)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resuming a dd4f959 checkpoint")
