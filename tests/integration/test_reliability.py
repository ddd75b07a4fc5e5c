"""Issue #17: faults a new user runs into. Each row of the issue's table gives one line and exit
status 2 (or the documented behaviour): a full disk, a damaged checkpoint, bad config values,
kills and Ctrl-C at awkward moments, resume with fewer epochs or on another device."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deepclust.cli import main
from deepclust.engine import io
from deepclust.engine.trainer import Trainer
from deepclust.errors import CheckpointError


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the library catches it, nothing after it runs."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("rel") / "toy.npz"
    np.savez(path, images=rng.integers(0, 256, (96, 8, 8), dtype=np.uint8), labels=rng.integers(0, 3, 96))
    return path


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-q",
        "train",
        "--method",
        "idfd",
        "--data",
        f"npz:{data}",
        "--n-clusters",
        "3",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--batch-size",
        "48",
        "model.width=4",
        "model.feature_dim=8",
        "eval.n_init=1",
        *extra,
    ]


def _one_line(capsys, code: int, expected: str) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if not x.startswith(("WARNING", "INFO"))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("deepclust: error:") and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    return lines[0]


def _epochs(out: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (out / io.METRICS).read_text().splitlines()]


# ----- a full disk ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["torch", "enospc"])
def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(
    failure: str, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, fh, *a, **k):
        calls.append(obj["epoch"])
        if len(calls) == 2:  # the checkpoint of epoch 2
            fh.write(b"partial")
            if failure == "torch":  # what torch raises on a full disk: not an OSError
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    line = _one_line(capsys, main(_train(data, out, "--epochs", "3")), "cannot write")
    assert "previous 'checkpoint.pt' is unchanged" in line
    if failure == "enospc":
        assert "No space left on device" in line
    monkeypatch.undo()
    assert io.load_checkpoint(out)["epoch"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl"]


def test_metrics_write_on_a_full_disk_is_one_line(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real_open = os.open

    def full(path, flags, *a):
        if str(path).endswith(io.METRICS):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(io.os, "open", full)
    _one_line(capsys, main(_train(data, tmp_path / "run", "--epochs", "2")), "No space left on device")


# ----- a damaged checkpoint ------------------------------------------------------------------------------
def _damage_largest_tensor(path: Path) -> None:
    """Overwrite bytes inside the biggest tensor's data: the file still loads, its weights are garbage."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        n, m = struct.unpack("<HH", fh.read(4))
        fh.seek(info.header_offset + 30 + n + m + 8)
        fh.write(np.random.default_rng(1).bytes(32))
    torch.load(path, weights_only=False)  # still loads: only the checksum can tell


def test_damaged_checkpoint_is_reported_corrupt(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_train(data, out, "--epochs", "1")) == 0
    capsys.readouterr()
    _damage_largest_tensor(out / io.CHECKPOINT)
    _one_line(capsys, main(["-q", "resume", str(out), "train.epochs=2"]), "checkpoint corrupt")
    _one_line(capsys, main(["-q", "eval", str(out)]), "checkpoint corrupt")


# ----- config values, before any training ----------------------------------------------------------------
@pytest.mark.parametrize(
    "override",
    [
        "train.checkpoint_every=0",
        "eval.batch_size=0",
        "optim.lr=-1",
        "model.feature_dim=0",
        "model.width=0",
        "model.stem=foo",
        "train.eval_every=-1",
    ],
)
def test_bad_config_values_fail_before_training(
    override: str, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt_in_epoch, capsys
) -> None:
    interrupt_in_epoch(0, AssertionError)  # an epoch would fail the test
    _one_line(capsys, main([*_train(data, tmp_path / "run"), override]), override.split("=")[0])
    assert not (tmp_path / "run").exists()


# ----- kills and resumes ---------------------------------------------------------------------------------
def test_kill_after_an_unsaved_epoch_then_resume_logs_each_epoch_once(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt_in_epoch
) -> None:
    out = tmp_path / "run"
    interrupt_in_epoch(3, Killed)  # killed in epoch 4: epochs 1-3 are logged, the checkpoint is of epoch 2
    with pytest.raises(Killed):
        main(_train(data, out, "--epochs", "5", "train.checkpoint_every=2"))
    monkeypatch.undo()
    assert _epochs(out) == [1, 2, 3] and io.load_checkpoint(out)["epoch"] == 2
    assert main(["-q", "resume", str(out)]) == 0
    assert _epochs(out) == [1, 2, 3, 4, 5]


def test_run_killed_before_its_first_checkpoint_is_not_mixed(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt_in_epoch, capsys
) -> None:
    out = tmp_path / "run"
    interrupt_in_epoch(1, Killed)
    with pytest.raises(Killed):
        main(_train(data, out, "--epochs", "2", "train.checkpoint_every=2"))
    monkeypatch.undo()
    assert _epochs(out) == [1] and not (out / io.CHECKPOINT).exists()
    line = _one_line(capsys, main(_train(data, out, "--epochs", "2")), "stopped before its first checkpoint")
    assert "--overwrite" in line
    _one_line(capsys, main(["-q", "resume", str(out)]), "--overwrite")
    assert main(_train(data, out, "--epochs", "2", "--overwrite")) == 0
    assert _epochs(out) == [1, 2]


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt_in_epoch, capsys
) -> None:
    out = tmp_path / "run"
    interrupt_in_epoch(0)
    line = _one_line(capsys, main(_train(data, out, "--epochs", "1")), "nothing was saved")
    assert "none" not in line and "resume" not in line
    monkeypatch.undo()
    assert main(_train(data, out, "--epochs", "1")) == 0  # "start again with the same command" works


def test_resume_with_fewer_epochs_than_done_says_so(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_train(data, out, "--epochs", "2")) == 0
    before = (out / io.CONFIG).read_text()
    _one_line(capsys, main(["-q", "resume", str(out), "train.epochs=1"]), "already trained 2 epochs")
    assert (out / io.CONFIG).read_text() == before


def test_resume_on_another_device(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(_train(data, out, "--epochs", "1")) == 0
    ckpt = io.load_checkpoint(out)
    ckpt["config"]["train"]["device"] = "cuda"  # as if a GPU run: its config names the GPU
    io.save_checkpoint(ckpt, out / io.CHECKPOINT)
    assert main(["-q", "resume", str(out), "train.epochs=2", "--device", "cpu"]) == 0
    assert "device: cpu" in (out / io.CONFIG).read_text() and io.load_checkpoint(out)["epoch"] == 2


# ----- file writing --------------------------------------------------------------------------------------
def test_files_get_the_umask_mode_and_the_directory_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real = io.fsync_dir
    monkeypatch.setattr(io, "fsync_dir", lambda d: (synced.append(Path(d)), real(d)))
    old = os.umask(0o022)
    try:
        io.save_checkpoint({"method": "idfd", "model": {}, "epoch": 1}, tmp_path / io.CHECKPOINT)
        io.write_json({"acc": 1.0}, tmp_path / io.RESULTS)
    finally:
        os.umask(old)
    for name in (io.CHECKPOINT, io.RESULTS):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert synced == [tmp_path, tmp_path]


def test_metrics_line_cut_by_a_crash_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / io.METRICS
    path.write_text('{"epoch": 1}\n{"epoch": 2, "tra')
    io.append_jsonl({"epoch": 2}, path)
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"epoch": 1}, {"epoch": 2}]


def test_checksum_detects_a_changed_value(tmp_path: Path) -> None:
    path = tmp_path / io.CHECKPOINT
    io.save_checkpoint({"method": "idfd", "model": {"w": torch.ones(4)}, "epoch": 1}, path)
    raw = torch.load(path, weights_only=False)
    raw["model"]["w"][0] = 2.0  # what a flipped bit does
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="checkpoint corrupt"):
        io.load_checkpoint(path)


def test_a_failing_final_evaluation_keeps_the_trained_epochs(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from deepclust.errors import DataError

    out = tmp_path / "run"

    def failing(self, epoch):
        raise DataError("the evaluated features hold NaN")

    monkeypatch.setattr(Trainer, "evaluate", failing)
    _one_line(capsys, main(_train(data, out, "--epochs", "3", "train.checkpoint_every=10")), "NaN")
    assert torch.load(out / io.CHECKPOINT, weights_only=False)["epoch"] == 3  # not lost with the evaluation
    monkeypatch.undo()
    assert main(["-q", "eval", str(out)]) == 0
