"""Errors a person understands (issue #6, point 5): each case prints exactly one line on stderr,
exits with status 2 and shows no traceback; the line says what is wrong (and the closest valid
name where one was mistyped). Cases already in test_cli.py are not repeated here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepclust.cli import main
from deepclust.config import resolve_config
from deepclust.engine import train


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """A tiny finished IDFD run and the bad inputs the cases point at."""
    tmp = tmp_path_factory.mktemp("errors")
    rng = np.random.default_rng(0)
    data = tmp / "toy.npz"
    np.savez(data, images=rng.integers(0, 256, (120, 10, 10), dtype=np.uint8), labels=rng.integers(0, 3, 120))
    run = tmp / "run"
    train(
        resolve_config(
            {
                "method": "idfd",
                "n_clusters": 3,
                "data": {"name": f"npz:{data}"},
                "eval": {"n_init": 1},
                "train": {"epochs": 1, "batch_size": 60, "device": "cpu", "out": str(run), "progress": False},
            }
        )
    )
    paths = {"data": data, "run": run}
    (tmp / "empty").mkdir()
    (tmp / "texts").mkdir()
    (tmp / "texts" / "readme.txt").write_text("no images here")
    (tmp / "texts" / "table.csv").write_text("a,b\n")
    (tmp / "corrupt").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp / "corrupt" / name).write_bytes(b"this is not an image")
    (tmp / "notrun").mkdir()
    (tmp / "notrun" / "checkpoint.pt").write_bytes(b"garbage, not a torch file")
    nan = rng.random((20, 8, 8)).astype(np.float32)
    nan[3, 2, 1] = np.nan
    np.savez(tmp / "nan.npz", images=nan)
    inf = rng.random((20, 8, 8, 3))
    inf[0, 0, 0, 0] = np.inf
    np.savez(tmp / "inf.npz", images=inf)
    np.savez(tmp / "rank5.npz", images=np.zeros((4, 2, 8, 8, 3), np.uint8))
    np.savez(tmp / "rank1.npz", images=np.zeros((64,), np.uint8))
    sl = tmp / "selflabel"
    sl.mkdir()
    torch.save({"stage": "selflabel", "method": "idfd", "config": {}, "epoch": 1, "model": {}}, sl / "checkpoint.pt")
    for name in ("empty", "texts", "corrupt", "notrun", "nan.npz", "inf.npz", "rank5.npz", "rank1.npz", "selflabel"):
        paths[name] = tmp / name
    paths["tmp"] = tmp
    return paths


def _train(data: str, *extra: str) -> list[str]:
    return ["train", "--method", "idfd", "--data", data, "--n-clusters", "3", "--device", "cpu", *extra]


# case -> (arguments, a piece of the message that says what to do or what is wrong)
CASES = {
    "folder with no images": (lambda p: _train(f"folder:{p['texts']}"), "no images"),
    "folder with only corrupt images": (lambda p: _train(f"folder:{p['corrupt']}"), "could be read"),
    "NaN in float images": (lambda p: _train(f"npz:{p['nan.npz']}"), "NaN or infinite"),
    "inf in float images": (lambda p: _train(f"npz:{p['inf.npz']}"), "NaN or infinite"),
    "5-D image array": (lambda p: _train(f"npz:{p['rank5.npz']}"), "rank 5"),
    "1-D image array": (lambda p: _train(f"npz:{p['rank1.npz']}"), "rank 1"),
    "n_clusters below 2": (
        lambda p: ["train", "--method", "idfd", "--data", f"npz:{p['data']}", "--n-clusters", "1"],
        "at least 2",
    ),
    "unknown method suggests": (lambda p: ["train", "--method", "secuu", "--data", "digits"], "did you mean 'secu'"),
    "unknown dataset suggests": (
        lambda p: ["train", "--method", "idfd", "--data", "fashion-mnst"],
        "did you mean 'fashion-mnist'",
    ),
    "unknown config key suggests": (lambda p: ["train", "idfd/digits", "optim.lrr=0.1"], "did you mean 'optim.lr'"),
    "checkpoint from another method": (
        lambda p: _train(f"npz:{p['data']}", "--method", "cdc", "--out", str(p["run"]), "--resume"),
        "from method 'idfd'",
    ),
    "resume as another method": (lambda p: ["resume", str(p["run"]), "method=secu"], "cannot be resumed as secu"),
    "unreadable checkpoint": (lambda p: ["eval", str(p["notrun"])], "cannot be read"),
    "selflabel checkpoint to predict": (
        lambda p: ["predict", str(p["selflabel"]), "--data", f"npz:{p['data']}"],
        "self-labelling checkpoint",
    ),
    "predict: missing run": (
        lambda p: ["predict", str(p["tmp"] / "nope"), "--data", f"folder:{p['corrupt']}"],
        "does not exist",
    ),
    "predict: missing folder": (
        lambda p: ["predict", str(p["run"]), "--data", f"folder:{p['tmp'] / 'nope'}"],
        "not found",
    ),
    "predict: empty folder": (lambda p: ["predict", str(p["run"]), "--data", f"folder:{p['empty']}"], "is empty"),
    "predict: folder with no images": (
        lambda p: ["predict", str(p["run"]), "--data", f"folder:{p['texts']}"],
        "no images",
    ),
    "predict: only corrupt images": (
        lambda p: ["predict", str(p["run"]), "--data", f"folder:{p['corrupt']}", "--out", str(p["tmp"] / "c.csv")],
        "could be read",
    ),
    "predict: bad chunk size": (lambda p: ["predict", str(p["run"]), "--chunk-size", "0"], "--chunk-size"),
    "predict: unknown dataset": (lambda p: ["predict", str(p["run"]), "--data", "cifar11"], "did you mean 'cifar10'"),
    "report: not a run": (lambda p: ["report", str(p["empty"])], "no checkpoint"),
    "sweep-k: K below 2": (lambda p: ["sweep-k", "--data", f"npz:{p['data']}", "--k", "1,4"], "at least 2"),
    "sweep-k: K not a number": (lambda p: ["sweep-k", "--data", f"npz:{p['data']}", "--k", "5,ten"], "comma-separated"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_exit_2(case: str, env: dict[str, Path], capsys) -> None:
    make, expected = CASES[case]
    args = make(env)
    if args[0] == "train" and "--out" not in args:
        args = [*args, "--out", str(env["tmp"] / "out")]
    code = main(["-q", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [x for x in err.strip().splitlines() if not x.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and lines[0].startswith("deepclust: error:"), err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]


def test_corrupt_predict_output_is_not_left_behind(env: dict[str, Path], capsys) -> None:
    out = env["tmp"] / "never.csv"
    assert main(["-q", "predict", str(env["run"]), "--data", f"folder:{env['corrupt']}", "--out", str(out)]) == 2
    capsys.readouterr()
    assert not out.exists() and not list(out.parent.glob(".never.csv*"))


@pytest.mark.slow
def test_subprocess_predict_error_has_no_traceback(env: dict[str, Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deepclust", "predict", str(env["run"]), "--data", f"folder:{env['empty']}"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
