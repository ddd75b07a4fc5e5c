"""Assemble a run's report: reload the run, predict its evaluated images, draw, write the page.

Figures (PNG, beside ``report.html``):

- ``curves.png``: training losses and evaluation metrics from ``metrics.jsonl``;
- ``sizes.png``: the cluster-size histogram;
- ``grid_<n>.png``: per cluster, the ``per_cluster`` images nearest its centre (k-means runs:
  the stored k-means centre; head runs: the mean feature of the cluster's images), up to 16
  clusters per PNG. A ``--features`` run ranks by its features but shows the original images,
  read again from the run's image dataset at a display size of at most 64 px (matched by file
  path for folders); a run on plain feature vectors (no images) has no grid, only a note;
- ``tsne_clusters.png`` (and ``tsne_classes.png`` where labels exist): t-SNE (van der Maaten &
  Hinton 2008; scikit-learn, PCA init, seeded) of a seeded sample of the learned features;
- ``confusion.png`` where labels exist: clusters x classes after Hungarian matching
  (:func:`deepclust.metrics.matched_confusion`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepclust.data.base import FeatureData, resize_images
from deepclust.engine import io
from deepclust.engine.data_stage import open_images
from deepclust.errors import ConfigError, DeepClustError
from deepclust.metrics import cluster_size_stats, evaluate, match_clusters, matched_confusion
from deepclust.report import plots
from deepclust.report.html import Figure, Section, write_html
from deepclust.saved_run import RunPrediction, predict_run

log = logging.getLogger(__name__)

__all__ = ["build_report", "nearest_to_centers", "read_metrics", "tsne"]

_ROWS_PER_GRID = 16
DISPLAY_SIZE = 64  # side of the images a --features run's grids show


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (a torn last line from a killed run is skipped)."""
    p = Path(run_dir) / io.METRICS
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def nearest_to_centers(
    features: np.ndarray, labels: np.ndarray, centers: np.ndarray | None, k: int, n: int
) -> list[np.ndarray]:
    """Per cluster 0..k-1, the indices of its ``n`` members nearest its centre (closest first).

    ``centers`` None: each cluster's mean feature is its centre.
    """
    out = []
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            out.append(idx)
            continue
        center = features[idx].mean(axis=0) if centers is None else centers[c]
        d = ((features[idx] - center) ** 2).sum(axis=1)
        out.append(idx[np.argsort(d, kind="stable")[:n]])
    return out


def tsne(features: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of the rows (scikit-learn, PCA initialisation, seeded)."""
    from sklearn.manifold import TSNE

    n = len(features)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto"
    ).fit_transform(features.astype(np.float32))


def _name(names: list[str], c: Any) -> str:
    return names[int(c)] if 0 <= int(c) < len(names) else str(c)


def _thumbnail_images(images: Any, nearest: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The images as uint8 (N, C, H, W), or for a streamed dataset (data/stream.py) only the
    rows shown, decoded now, with ``nearest`` renumbered into them."""
    if not hasattr(images, "batches"):
        return images.numpy(), nearest
    shown = np.unique(np.concatenate([np.asarray(r, dtype=np.int64) for r in nearest] or [np.zeros(0, np.int64)]))
    decoded = images[torch.from_numpy(shown)].numpy() if len(shown) else np.zeros((0, *images.shape[1:]), np.uint8)
    return decoded, [np.searchsorted(shown, np.asarray(r, dtype=np.int64)) for r in nearest]


def _feature_run_images(pred: RunPrediction, nearest: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]] | str:
    """The images shown for a run on feature vectors: for a ``--features`` run the rows of
    ``nearest`` read from the run's image dataset at :data:`DISPLAY_SIZE` (uint8 (n, C, H, W))
    with ``nearest`` renumbered into them; otherwise, or when the images cannot be matched to
    the embedding's rows, the note that replaces the grid."""
    data, cfg = pred.data, pred.cfg
    if not cfg.data.features:
        return (
            f"No image grids: this run clustered feature vectors ({data.name}) without images. Train with "
            "--features on the images (data.features) to see the images nearest each centre."
        )
    try:
        shown_data = open_images(cfg, data.split, DISPLAY_SIZE)
    except DeepClustError as exc:
        return f"No image grids: the images of {cfg.data.name} could not be read for display ({exc})."
    emb_paths, disp_paths = getattr(data, "image_paths", None), shown_data.paths
    if emb_paths is not None and disp_paths is not None:
        pos = {p: i for i, p in enumerate(disp_paths)}
        try:
            rows = [np.asarray([pos[emb_paths[int(i)]] for i in r], dtype=np.int64) for r in nearest]
        except KeyError as exc:
            return f"No image grids: the image {exc.args[0]} of the embedding is no longer in {cfg.data.name}."
    elif shown_data.n_samples == data.n_samples:
        rows = [np.asarray(r, dtype=np.int64) for r in nearest]
    else:
        return (
            f"No image grids: {cfg.data.name} now holds {shown_data.n_samples} images, the embedding "
            f"{data.n_samples}; the rows cannot be matched."
        )
    shown = np.unique(np.concatenate(rows or [np.zeros(0, np.int64)]))
    images = shown_data.images[torch.from_numpy(shown)]
    if images.shape[-1] > DISPLAY_SIZE or images.shape[-2] > DISPLAY_SIZE:
        images = resize_images(images, DISPLAY_SIZE)
    return images.numpy(), [np.searchsorted(shown, r) for r in rows]


def _grids(pred: RunPrediction, k: int, per_cluster: int, out: Path, names: list[str]) -> tuple[list[Figure], str]:
    """The grid figures, or none and the note that says why."""
    feats, labels = pred.features.numpy(), pred.labels.numpy()
    centers = None if pred.centers is None else pred.centers.numpy()
    nearest = nearest_to_centers(feats, labels, centers, k, per_cluster)
    if isinstance(pred.data, FeatureData):
        got = _feature_run_images(pred, nearest)
        if isinstance(got, str):
            log.info("%s", got)
            return [], got
        images, nearest = got
    else:
        images, nearest = _thumbnail_images(pred.data.images, nearest)
    y = pred.data.labels.numpy()
    sizes = np.bincount(labels, minlength=k)
    figs = []
    order = [c for c in range(k) if sizes[c] > 0]
    for page, start in enumerate(range(0, len(order), _ROWS_PER_GRID), 1):
        clusters = order[start : start + _ROWS_PER_GRID]
        row_labels = []
        for c in clusters:
            text = f"cluster {c}\n{sizes[c]} images"
            known = y[labels == c]
            known = known[known >= 0]
            if known.size and names:
                top = np.bincount(known).argmax()
                text += f"\n{100 * np.mean(known == top):.0f}% {_name(names, top)}"
            row_labels.append(text)
        file = f"grid_{page}.png"
        last = clusters[-1]
        plots.plot_cluster_grid(
            images,
            [nearest[c] for c in clusters],
            row_labels,
            per_cluster,
            out / file,
            f"clusters {clusters[0]}-{last}: the {per_cluster} images nearest each centre, closest first",
        )
        figs.append(
            Figure(
                file,
                f"Clusters {clusters[0]} to {last}: each row shows the images nearest the cluster's "
                "centre, closest on the left; the label gives the cluster's size"
                + (" and its most common class" if names else "")
                + ".",
            )
        )
    return figs, ""


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    device: str = "auto",
    sample_size: int = 2000,
    per_cluster: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write ``report.html`` and its PNGs into ``out`` (default ``RUN_DIR/report``); returns the page's path."""
    if sample_size < 10:
        raise ConfigError(f"the t-SNE sample must hold at least 10 images, got {sample_size}")
    if per_cluster < 1:
        raise ConfigError(f"images per cluster must be at least 1, got {per_cluster}")
    run = Path(run_dir)
    out = Path(out) if out is not None else run / "report"
    steps = tqdm(total=6, desc="report", disable=not progress)
    pred = predict_run(run, device=device, progress=progress)
    steps.update()
    cfg, info, data = pred.cfg, pred.info, pred.data
    k = info.n_clusters
    labels = pred.labels.numpy()
    y = data.labels.numpy()
    names = list(data.classes) if data.has_labels else []
    if data.has_labels and not names:
        names = [str(i) for i in range(int(y.max()) + 1)]
    results = json.loads((run / io.RESULTS).read_text()) if (run / io.RESULTS).is_file() else {}
    lines = read_metrics(run)
    out.mkdir(parents=True, exist_ok=True)

    sections = [
        Section(
            "Training",
            [
                Figure(
                    "curves.png",
                    "Training losses per logged epoch (left) and evaluation "
                    "metrics with the normalised cluster-size entropy (right), from metrics.jsonl.",
                )
            ],
        )
    ]
    plots.plot_training_curves(lines, out / "curves.png")
    stats = cluster_size_stats(labels, k)
    plots.plot_cluster_sizes(stats["sizes"], out / "sizes.png")
    sections.append(
        Section(
            "Cluster sizes",
            [
                Figure(
                    "sizes.png",
                    f"Images per cluster; size entropy "
                    f"{stats['entropy_norm']:.3f} (1 = equal sizes), {stats['empty']} empty.",
                )
            ],
        )
    )
    steps.update()
    grids, grid_note = _grids(pred, k, per_cluster, out, names)
    sections.append(Section("Clusters", grids, text=grid_note))
    steps.update()

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.permutation(len(labels))[:sample_size])
    xy = tsne(pred.features.numpy()[sample], seed)
    steps.update()
    emb = [Figure("tsne_clusters.png", f"t-SNE of {len(sample)} sampled images' features, coloured by cluster.")]
    plots.plot_embedding(
        xy,
        labels[sample],
        [f"cluster {c}" for c in range(k)],
        out / "tsne_clusters.png",
        "t-SNE of the learned features, by cluster",
    )
    if names:
        ys = y[sample]
        keep = ys >= 0
        plots.plot_embedding(xy[keep], ys[keep], names, out / "tsne_classes.png", "the same embedding, by true class")
        emb.append(
            Figure("tsne_classes.png", "The same embedding coloured by the true class (unlabelled images left out).")
        )
    sections.append(Section("Embedding", emb))
    steps.update()

    summary: list[tuple[str, Any]] = [
        ("method", cfg.method),
        ("dataset", data.name),
        ("protocol", cfg.protocol),
        ("evaluated split", cfg.data.eval_split),
        ("images", data.n_samples),
        ("clusters", k),
        ("checkpoint epoch", pred.ckpt.get("epoch")),
        ("backbone", cfg.model.backbone),
        ("seed", cfg.train.seed),
        ("prediction", "head argmax" if pred.centers is None else "nearest stored k-means centre"),
        ("mean confidence", f"{float(pred.confidence.mean()):.3f}"),
    ]
    if cfg.data.features:
        summary.append(("features", f"{cfg.data.features} (pretrained embedding of {cfg.data.name})"))
    for m in ("acc", "nmi", "ari"):
        if results.get(m) is not None:
            summary.append((f"{m.upper()} (results.json)", f"{results[m]:.4f}"))
    base = results.get("kmeans_baseline") or {}
    if base.get("acc") is not None:
        summary.append(
            (
                "k-means on the L2-normalised inputs: ACC / NMI / ARI",
                f"{base['acc']:.4f} / {base['nmi']:.4f} / {base['ari']:.4f}",
            )
        )
    if names:
        mask = y >= 0
        scores = evaluate(y[mask], labels[mask])
        summary.append(
            (
                "ACC / NMI / ARI (this page's predictions)",
                f"{scores['acc']:.4f} / {scores['nmi']:.4f} / {scores['ari']:.4f}",
            )
        )
        matrix, rows, cols = matched_confusion(y[mask], labels[mask], return_labels=True)
        match = match_clusters(y[mask], labels[mask])
        col_names = [_name(names, c) for c in cols]
        row_names = [
            f"{int(r)} -> {_name(names, match[r])}" if r in match else f"{int(r)} (unmatched)" for r in rows.tolist()
        ]
        plots.plot_confusion(
            matrix,
            row_names,
            col_names,
            out / "confusion.png",
            f"clusters after Hungarian matching (ACC {scores['acc']:.3f})",
        )
        sections.append(
            Section(
                "Confusion matrix",
                [
                    Figure(
                        "confusion.png",
                        "Rows: clusters reordered to their Hungarian-matched class (cluster -> class); columns: "
                        "true classes; cells: image counts, shaded by the fraction of the cluster's images.",
                    )
                ],
            )
        )
    steps.update()
    steps.close()
    notes = [
        "Predictions on this page: "
        + (
            "the argmax of the method's cluster head."
            if pred.centers is None
            else "each image's nearest k-means centre stored in the final checkpoint, on clean features."
        ),
        "Per-epoch training losses appear only for epochs with an evaluation (train.eval_every); "
        "the other epochs' losses are in the training log only.",
    ]
    title = f"deepclust report: {cfg.method} on {data.name}"
    subtitle = f"run directory {run.resolve()}"
    page = write_html(out / "report.html", title, subtitle, summary, sections, notes)
    log.info("report written to %s", page)
    return page
