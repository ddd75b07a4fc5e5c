"""How many clusters? Train (or reuse) one run per K and compare label-free criteria.

For every K the run directory is ``OUT/k{K}``: a finished run (``results.json``) is reused, an
interrupted one (checkpoint only) is resumed, otherwise a new run is trained. Criteria, on the
run's evaluated images as the run predicts them (:func:`deepclust.saved_run.predict_run`):

- ``silhouette``: mean silhouette coefficient ``(b - a) / max(a, b)`` of the learned features
  (Euclidean; Rousseeuw 1987), ``sklearn.metrics.silhouette_score`` on a seeded sample of at
  most ``sample_size`` images; higher is better, in [-1, 1]; None when fewer than 2 clusters
  are occupied;
- ``size_entropy``: normalised cluster-size entropy ``H(n_k / n) / log K`` in [0, 1] (1 = equal
  sizes; low values flag collapsed or empty clusters);
- ``acc``, ``nmi``, ``ari`` from the run's ``results.json`` where the data has labels.

Writes ``sweep.json``, ``sweep.csv`` and ``sweep.png`` (criteria against K) in ``OUT``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepclust.config import deep_merge, resolve_config
from deepclust.engine import io
from deepclust.errors import ConfigError
from deepclust.metrics import cluster_size_stats

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "format_table", "parse_ks", "silhouette", "sweep_k", "write_sweep"]

COLUMNS = ("k", "silhouette", "size_entropy", "empty_clusters", "acc", "nmi", "ari", "epoch", "run_dir", "status")


def parse_ks(text: str | Sequence[int]) -> list[int]:
    """``"5,10,20"`` -> [5, 10, 20] (sorted, unique); every K must be an integer >= 2."""
    items = text.split(",") if isinstance(text, str) else list(text)
    ks: set[int] = set()
    for item in items:
        s = str(item).strip()
        if not s:
            continue
        try:
            k = int(s)
        except ValueError:
            raise ConfigError(f"--k must be comma-separated integers such as 5,10,20; got '{s}'") from None
        if k < 2:
            raise ConfigError(f"every K must be at least 2 (a clustering needs two clusters); got {k}")
        ks.add(k)
    if not ks:
        raise ConfigError("--k is empty; pass the numbers of clusters to try, e.g. --k 5,10,20")
    return sorted(ks)


def silhouette(features: np.ndarray, labels: np.ndarray, sample_size: int, seed: int) -> float | None:
    """Silhouette on a seeded sample (None when the sample has fewer than 2 occupied clusters)."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(labels))[: max(2, sample_size)]
    x, y = features[idx], labels[idx]
    n_labels = len(np.unique(y))
    if n_labels < 2 or n_labels >= len(y):
        return None
    return float(silhouette_score(x, y, metric="euclidean"))


def _train_or_reuse(raw: dict[str, Any], k: int, run: Path) -> str:
    from deepclust.engine import train

    if (run / io.RESULTS).is_file():
        done = json.loads((run / io.RESULTS).read_text())
        if done.get("n_clusters") != k:
            raise ConfigError(f"'{run}' holds a run with {done.get('n_clusters')} clusters, not {k}; use another --out")
        log.info("K=%d: reusing the finished run in %s", k, run)
        return "reused"
    cfg = resolve_config(deep_merge(copy.deepcopy(raw), {"n_clusters": k, "train": {"out": str(run)}}), auto=True)
    resume = (run / io.CHECKPOINT).is_file()
    log.info("K=%d: %s %s", k, "resuming" if resume else "training", run)
    train(cfg, resume=resume, overwrite=not resume)  # no checkpoint: the logs of a dead run are replaced
    return "resumed" if resume else "trained"


def sweep_k(
    raw: dict[str, Any],
    ks: Sequence[int],
    out: str | Path,
    sample_size: int = 2000,
    seed: int = 0,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Train or reuse one run per K (config ``raw`` with ``n_clusters`` = K) and score each."""
    from deepclust.saved_run import predict_run

    out = Path(out)
    ks = parse_ks(ks)
    if sample_size < 2:
        raise ConfigError(f"the silhouette sample size must be at least 2, got {sample_size}")
    rows: list[dict[str, Any]] = []
    for k in ks:
        run = out / f"k{k}"
        status = _train_or_reuse(raw, k, run)
        pred = predict_run(run, device=device)
        y = pred.labels.numpy()
        stats = cluster_size_stats(y, k)
        results = json.loads((run / io.RESULTS).read_text())
        row = {
            "k": k,
            "silhouette": silhouette(pred.features.numpy(), y, sample_size, seed),
            "size_entropy": stats["entropy_norm"],
            "empty_clusters": stats["empty"],
            "acc": results.get("acc"),
            "nmi": results.get("nmi"),
            "ari": results.get("ari"),
            "epoch": results.get("epoch"),
            "run_dir": str(run),
            "status": status,
        }
        log.info("K=%d: silhouette %s, size entropy %.3f", k, _fmt(row["silhouette"]), row["size_entropy"])
        rows.append(row)
    write_sweep(rows, out, {"sample_size": sample_size, "seed": seed})
    return rows


def write_sweep(rows: list[dict[str, Any]], out: Path, settings: dict[str, Any]) -> None:
    """``sweep.json`` (rows + settings), ``sweep.csv`` and the ``sweep.png`` plot."""
    from deepclust.report.plots import plot_sweep

    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "criteria": {
            "silhouette": "sklearn silhouette_score, Euclidean, on a seeded sample of the learned features",
            "size_entropy": "H(cluster sizes / n) / log K",
        },
        **settings,
        "rows": rows,
    }
    io.write_json(doc, out / "sweep.json")
    with open(out / "sweep.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows({c: ("" if r.get(c) is None else r.get(c)) for c in COLUMNS} for r in rows)
    plot_sweep(rows, out / "sweep.png")


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (supervised columns only where present)."""
    sup = any(r.get("acc") is not None for r in rows)
    head = ["K", "silhouette", "size_entropy", "empty"] + (["ACC", "NMI", "ARI"] if sup else []) + ["run"]
    lines = [head]
    for r in rows:
        line = [str(r["k"]), _fmt(r["silhouette"]), _fmt(r["size_entropy"]), str(r["empty_clusters"])]
        if sup:
            line += [_fmt(r.get("acc")), _fmt(r.get("nmi")), _fmt(r.get("ari"))]
        lines.append(line + [f"{r['run_dir']} ({r['status']})"])
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if i < len(head) - 1 else c for i, (c, w) in enumerate(zip(x, widths, strict=True)))
        for x in lines
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
