"""``deepclust sweep-k``: K parsing, the silhouette against a direct transcription, train/reuse/resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import entropy

import deepclust.engine
from deepclust.cli import main
from deepclust.errors import ConfigError
from deepclust.saved_run import predict_run
from deepclust.sweep import parse_ks, silhouette, sweep_k


def _silhouette_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Rousseeuw (1987): s_i = (b_i - a_i) / max(a_i, b_i), s_i = 0 for singleton clusters; mean over i."""
    d = cdist(x, x)
    s = []
    for i in range(len(x)):
        own = y == y[i]
        if own.sum() == 1:
            s.append(0.0)
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, y == c].mean() for c in np.unique(y) if c != y[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def test_parse_ks() -> None:
    assert parse_ks("10, 5,20,5") == [5, 10, 20]
    for bad in ("5,x", "1,5", "", " , "):
        with pytest.raises(ConfigError):
            parse_ks(bad)


def test_silhouette_matches_transcription_and_sample_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (40, 3)), rng.normal(4, 1, (30, 3)), rng.normal(-4, 1, (1, 3))])
    y = np.array([0] * 40 + [1] * 30 + [2])
    assert silhouette(x, y, sample_size=1000, seed=0) == pytest.approx(_silhouette_reference(x, y), abs=1e-9)
    assert silhouette(x, y, 30, seed=1) == silhouette(x, y, 30, seed=1)
    assert silhouette(x, np.zeros(71, int), 1000, 0) is None  # one cluster: undefined


def test_sweep_trains_reuses_and_resumes(tmp_path: Path, capsys, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "toy.npz"
    np.savez(data, images=rng.integers(0, 256, (150, 10, 10), dtype=np.uint8), labels=rng.integers(0, 3, 150))
    out = tmp_path / "sweep"
    args = [
        "-q",
        "sweep-k",
        "--method",
        "idfd",
        "--data",
        f"npz:{data}",
        "--k",
        "3,2",
        "--epochs",
        "1",
        "--batch-size",
        "75",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--sample",
        "500",
        "eval.n_init=1",
    ]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "silhouette" in table and "ACC" in table and "trained" in table
    doc = json.loads((out / "sweep.json").read_text())
    assert [r["k"] for r in doc["rows"]] == [2, 3]
    with open(out / "sweep.csv", newline="") as fh:
        assert [int(r["k"]) for r in csv.DictReader(fh)] == [2, 3]
    assert (out / "sweep.png").stat().st_size > 0
    for row in doc["rows"]:
        run = out / f"k{row['k']}"
        res = json.loads((run / "results.json").read_text())
        assert row["acc"] == res["acc"] and row["status"] == "trained"
        pred = predict_run(run, device="cpu")
        y = pred.labels.numpy()
        sizes = np.bincount(y, minlength=row["k"])
        assert row["size_entropy"] == pytest.approx(entropy(sizes) / math.log(row["k"]), abs=1e-9)
        want = _silhouette_reference(pred.features.numpy().astype(np.float64), y) if len(np.unique(y)) > 1 else None
        assert row["silhouette"] == pytest.approx(want, abs=1e-4)

    # Second call: finished runs are reused, nothing is trained; an interrupted one is resumed.
    (out / "k3" / "results.json").unlink()

    calls: list[bool] = []
    real = deepclust.engine.train

    def spy(cfg, resume=False, overwrite=False):
        calls.append(resume)
        return real(cfg, resume=resume, overwrite=overwrite)

    monkeypatch.setattr(deepclust.engine, "train", spy)
    rows = sweep_k(
        {
            "method": "idfd",
            "data": {"name": f"npz:{data}"},
            "train": {"epochs": 2, "batch_size": 75, "device": "cpu", "progress": False},
            "eval": {"n_init": 1},
        },
        [2, 3],
        out,
        device="cpu",
    )
    assert [r["status"] for r in rows] == ["reused", "resumed"] and calls == [True]
    assert json.loads((out / "k3" / "results.json").read_text())["epoch"] == 2
