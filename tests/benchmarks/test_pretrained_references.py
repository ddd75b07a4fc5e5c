"""benchmarks/pretrained.py's references (neighbour purity, spectral clustering of the kNN graph, a
linear probe) on small synthetic embeddings, against independent computations: scikit-learn's
exact cosine neighbours for the purity, and blobs whose clusters and classes are known."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import pretrained
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return pretrained


def test_neighbour_purity_matches_scikit_learn(bench) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 12)).astype(np.float32)
    y = rng.integers(0, 3, 200)
    x[y == 1, 0] += 1.5  # some structure, so purity is neither chance nor 1
    ref = bench.references(x, y, 3, seed=0)
    nn = NearestNeighbors(n_neighbors=51, metric="cosine", algorithm="brute").fit(x)
    idx = nn.kneighbors(x, return_distance=False)[:, 1:]  # column 0: the point itself
    for k in (5, 10, 20, 50):
        expected = float((y[idx[:, :k]] == y[:, None]).mean())
        assert ref["neighbour_purity"][str(k)] == pytest.approx(expected, abs=2e-3)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # the blobs are apart by design
def test_spectral_and_probe_find_separated_blobs(bench) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 5
    y = np.repeat(np.arange(4), 60)
    x = (centres[y] + rng.normal(size=(240, 16))).astype(np.float32)
    ref = bench.references(x, y, 4, seed=0)
    assert set(ref["spectral_knn10"]) == {"0"}  # cluster_qr is deterministic: one run
    assert all(c["acc"] == 1.0 and c["nmi"] == 1.0 for c in ref["spectral_knn10"].values())
    assert ref["linear_probe"]["acc"] == 1.0
    assert ref["neighbour_purity"]["20"] == 1.0
    # labels unrelated to the points: the probe is near chance, not perfect
    shuffled = rng.permutation(y)
    assert bench.references(x, shuffled, 4, seed=0)["linear_probe"]["acc"] < 0.5


def test_tables_show_the_references(bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cell = {"acc": 0.5, "nmi": 0.4, "ari": 0.3}
    rec = {
        "dataset": "toy",
        "n_samples": 10,
        "kmeans": {"0": {"acc": 0.40, "nmi": 0.30}, "1": {"acc": 0.42, "nmi": 0.33}},
        "methods": {"scan": {"0": cell, "1": {**cell, "acc": 0.56, "nmi": 0.45}}},
        "references": {
            "neighbour_purity": {"5": 0.7, "10": 0.65, "20": 0.6, "50": 0.5},
            "spectral_knn10": {"0": {"acc": 0.47, "nmi": 0.38}, "1": {"acc": 0.47, "nmi": 0.38}},
            "linear_probe": {"acc": 0.81},
        },
    }
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(rec))
    rows = bench.table([path]).splitlines()
    # worst minus k-means' best seed, best minus it: (0.50 - 0.42, 0.40 - 0.33) and (0.56 - 0.42, 0.45 - 0.33)
    assert "| | | scan | 0.500 / 0.560 | 0.400 / 0.450 | +8.0 / +7.0 | +14.0 / +12.0 |" in rows
    assert "| | | spectral, kNN graph (no head) | 0.470 / 0.470 | 0.380 / 0.380 | +5.0 / +5.0 | +5.0 / +5.0 |" in rows
    refs = bench.references_table([path]).splitlines()
    assert refs[2] == "| toy | 0.700 / 0.600 / 0.500 | 0.420 / 0.330 | 0.470 / 0.380 | scan 0.560 / 0.450 | 0.810 |"
