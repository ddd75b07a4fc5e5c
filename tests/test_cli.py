"""The command line: flag form, config form, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepclust.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


FAST = ["--epochs", "1", "--device", "cpu", "--batch-size", "256", "train.progress=false", "eval.n_init=1"]


def test_flag_form_on_npz(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "toy.npz"
    np.savez(path, images=rng.integers(0, 256, (300, 12, 12), dtype=np.uint8), labels=rng.integers(0, 3, 300))
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        [
            "train",
            "--method",
            "idfd",
            "--data",
            f"npz:{path}",
            "--n-clusters",
            "3",
            "--out",
            str(out),
            "--seed",
            "1",
            *FAST,
        ],
        capsys,
    )
    assert code == 0 and "ACC" in stdout
    rec = json.loads((out / "results.json").read_text())
    assert rec["seed"] == 1 and rec["n_clusters"] == 3 and rec["dataset"].startswith("npz:")
    code, stdout, _ = run_cli(["eval", str(out), "--device", "cpu"], capsys)
    assert code == 0 and "ACC" in stdout


@pytest.mark.slow
def test_config_form_with_overrides(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        [
            "train",
            "idfd/digits",
            f"train.out={out}",
            "train.epochs=1",
            "train.device=cpu",
            "train.progress=false",
            "eval.n_init=1",
        ],
        capsys,
    )
    assert code == 0 and (out / "config.yaml").is_file()


def _bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"not a png")
    noimg = tmp_path / "noimg.npz"
    np.savez(noimg, pixels=np.zeros((4, 8, 8), np.uint8))
    rank = tmp_path / "rank.npz"
    np.savez(rank, images=np.zeros((4, 8), np.uint8))
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((5, 8, 8), np.uint8))
    return {
        "missing path": ["train", "--method", "idfd", "--data", f"npz:{tmp_path / 'nope.npz'}", "--n-clusters", "3"],
        "empty folder": ["train", "--method", "idfd", "--data", f"folder:{empty}", "--n-clusters", "3"],
        "corrupt image": ["train", "--method", "idfd", "--data", f"folder:{corrupt}", "--n-clusters", "3"],
        "npz without images": ["train", "--method", "idfd", "--data", f"npz:{noimg}", "--n-clusters", "3"],
        "wrong rank": ["train", "--method", "idfd", "--data", f"npz:{rank}", "--n-clusters", "3"],
        "more clusters than samples": ["train", "--method", "idfd", "--data", f"npz:{small}", "--n-clusters", "10"],
        "unknown method": ["train", "--method", "idfx", "--data", "digits"],
        "unknown dataset": ["train", "--method", "idfd", "--data", "digitz"],
        "unknown config key": ["train", "idfd/digits", "train.epoch=3"],
        "missing config file": ["train", str(tmp_path / "missing.yaml")],
        "missing run dir": ["eval", str(tmp_path / "no_run")],
        "no labels and no k": ["train", "--method", "idfd", "--data", f"npz:{small}"],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "empty folder",
        "corrupt image",
        "npz without images",
        "wrong rank",
        "more clusters than samples",
        "unknown method",
        "unknown dataset",
        "unknown config key",
        "missing config file",
        "missing run dir",
        "no labels and no k",
    ],
)
def test_bad_input_is_one_line_exit_2(case: str, tmp_path: Path, capsys) -> None:
    args = _bad_inputs(tmp_path)[case]
    if args[0] == "train":
        args = [*args, "--out", str(tmp_path / "out")]
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    lines = [x for x in err.strip().splitlines() if not x.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and lines[0].startswith("deepclust: error:"), err
    assert "Traceback" not in err


@pytest.mark.slow
def test_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepclust",
            "train",
            "--method",
            "idfd",
            "--data",
            f"npz:{tmp_path / 'x.npz'}",
            "--n-clusters",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
