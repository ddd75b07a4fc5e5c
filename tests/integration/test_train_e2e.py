"""Short end-to-end runs: run directory contents, exact resume, atomic checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from deepclust.config import resolve_config
from deepclust.engine import io, train
from deepclust.errors import CheckpointError, StorageError

REQUIRED = {"method", "dataset", "protocol", "split", "seed", "epoch", "n_init", "acc", "nmi", "ari"}


def tiny_cfg(out: Path, epochs: int = 2, **train_over):
    return resolve_config(
        {
            "method": "idfd",
            "data": {"name": "digits", "image_size": 8},
            "model": {"backbone": "small_cnn", "feature_dim": 32},
            "train": {
                "epochs": epochs,
                "batch_size": 256,
                "out": str(out),
                "device": "cpu",
                "progress": False,
                **train_over,
            },
            "augment": {"crop_scale": [0.5, 1.0], "grayscale_p": 0.0},
            "eval": {"n_init": 2},
        }
    )


def test_run_directory_contents(tmp_path: Path) -> None:
    out = tmp_path / "run"
    record = train(tiny_cfg(out, epochs=2, eval_every=1))
    assert REQUIRED <= set(record)
    assert record["protocol"] == "train+test" and record["epoch"] == 2 and record["n_init"] == 2
    assert 0.0 <= record["acc"] <= 1.0
    saved = json.loads((out / io.RESULTS).read_text())
    assert REQUIRED <= set(saved) and saved["acc"] == record["acc"]
    lines = (out / io.METRICS).read_text().strip().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    cfg = yaml.safe_load((out / io.CONFIG).read_text())
    assert cfg["method"] == "idfd" and cfg["model"]["backbone"] == "small_cnn"
    assert io.load_checkpoint(out)["epoch"] == 2


@pytest.mark.slow
def test_resume_is_exact(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(tiny_cfg(straight, epochs=3))
    split = tmp_path / "split"
    train(tiny_cfg(split, epochs=1))
    (split / io.RESULTS).unlink()  # a finished 1-epoch run; continue it to 3 epochs
    train(tiny_cfg(split, epochs=3), resume=True)
    a, b = io.load_checkpoint(straight)["model"], io.load_checkpoint(split)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resume")


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_cfg(out, epochs=1))
    before = (out / io.RESULTS).read_bytes()
    with pytest.raises(CheckpointError, match="--resume"):
        train(tiny_cfg(out, epochs=1))
    assert (out / io.RESULTS).read_bytes() == before


def test_crash_during_save_keeps_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    io.save_checkpoint({"method": "idfd", "model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def broken_save(obj, fh):
        fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(StorageError, match="previous 'checkpoint.pt' is unchanged"):  # one line, not a traceback
        io.save_checkpoint({"method": "idfd", "model": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path: Path, interrupt_in_epoch) -> None:
    from deepclust.errors import DeepClustError

    straight = tmp_path / "straight"
    train(tiny_cfg(straight, epochs=3, checkpoint_every=5))
    out = tmp_path / "interrupted"
    undo = interrupt_in_epoch(2)
    # checkpoint_every=5: no periodic checkpoint exists yet when Ctrl-C arrives in epoch 3.
    with pytest.raises(DeepClustError, match="checkpoint of epoch 2"):
        train(tiny_cfg(out, epochs=3, checkpoint_every=5))
    undo()
    assert io.load_checkpoint(out)["epoch"] == 2
    train(tiny_cfg(out, epochs=3, checkpoint_every=5), resume=True)
    a, b = io.load_checkpoint(straight)["model"], io.load_checkpoint(out)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after Ctrl-C and resume")


def test_metrics_has_one_training_line_per_epoch(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_cfg(out, epochs=3, eval_every=2))
    lines = [json.loads(x) for x in (out / io.METRICS).read_text().strip().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert all("loss" in x["train"] for x in lines)
    assert "acc" not in lines[0] and "acc" in lines[1] and "acc" in lines[2]


def test_streaming_from_host_memory_trains_the_same_weights(tmp_path: Path) -> None:
    # train.data_on_device=false: batches come through engine.loader.BatchStream's DataLoader
    # instead of indexing a resident tensor; the batches, so the weights, must be the same.
    from deepclust.engine.trainer import Trainer

    resident = tmp_path / "resident"
    train(tiny_cfg(resident, epochs=2, data_on_device=True))
    streamed = tmp_path / "streamed"
    t = Trainer(tiny_cfg(streamed, epochs=2, data_on_device=False))
    t.fit()
    assert t.stream is not None
    a, b = io.load_checkpoint(resident)["model"], io.load_checkpoint(streamed)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs when streamed")
