"""``deepclust report``: the page and every image it references exist and are non-empty PNGs."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

from deepclust.cli import main
from deepclust.config import resolve_config
from deepclust.engine import train
from deepclust.report.build import nearest_to_centers, read_metrics


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.src.append(dict(attrs)["src"])


def _run(tmp: Path, labels: bool) -> Path:
    rng = np.random.default_rng(0)
    data = tmp / "d.npz"
    arrays = {"images": rng.integers(0, 256, (200, 10, 10, 3), dtype=np.uint8)}
    if labels:
        arrays |= {"labels": rng.integers(0, 4, 200), "classes": np.array(["ant", "bee", "cat", "dog"])}
    np.savez(data, **arrays)
    out = tmp / "run"
    raw = {
        "method": "idfd",
        "n_clusters": 5,
        "data": {"name": f"npz:{data}"},
        "train": {"epochs": 2, "eval_every": 1, "batch_size": 100, "device": "cpu", "out": str(out), "progress": False},
        "eval": {"n_init": 1},
    }
    train(resolve_config(raw))
    return out


def _referenced(page: Path) -> list[Path]:
    parser = _Images()
    parser.feed(page.read_text())
    return [page.parent / s for s in parser.src]


@pytest.mark.slow
def test_report_with_labels_via_cli(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path, labels=True)
    code = main(["-q", "report", str(run), "--device", "cpu", "--sample", "150", "--per-cluster", "5"])
    assert code == 0
    page = run / "report" / "report.html"
    assert str(page) in capsys.readouterr().out
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text and "http" not in text.split("<body>")[1]
    files = _referenced(page)
    names = {f.name for f in files}
    assert names == {"curves.png", "sizes.png", "grid_1.png", "tsne_clusters.png", "tsne_classes.png", "confusion.png"}
    for f in files:
        assert f.is_file() and f.stat().st_size > 0, f
        with Image.open(f) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    assert "ant" in text or "ACC" in text  # the summary names the metrics


@pytest.mark.slow
def test_report_without_labels_has_no_class_figures(tmp_path: Path) -> None:
    from deepclust.report import build_report

    run = _run(tmp_path, labels=False)
    page = build_report(run, device="cpu", sample_size=60, per_cluster=3, out=tmp_path / "rep", progress=False)
    names = {f.name for f in _referenced(page)}
    assert "confusion.png" not in names and "tsne_classes.png" not in names
    assert {"curves.png", "sizes.png", "tsne_clusters.png"} <= names
    assert all(f.is_file() and f.stat().st_size > 0 for f in _referenced(page))
    assert len(read_metrics(run)) == 2  # one line per evaluation (eval_every=1, 2 epochs)


@pytest.mark.parametrize("with_centers", [True, False])
def test_nearest_to_centers_matches_brute_force(with_centers: bool) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 4))
    y = rng.integers(0, 6, 90)
    y[y == 5] = 4  # cluster 5 stays empty
    centers = rng.normal(size=(6, 4)) if with_centers else None
    got = nearest_to_centers(x, y, centers, 6, 4)
    for c in range(6):
        members = [i for i in range(90) if y[i] == c]
        if not members:
            assert got[c].size == 0
            continue
        center = centers[c] if with_centers else x[members].mean(0)
        d = cdist(x[members], center[None]).ravel()
        want = [members[j] for j in sorted(range(len(members)), key=lambda j: (d[j], j))[:4]]
        assert got[c].tolist() == want
