"""The report's figures, one PNG per function (matplotlib, Agg backend: no display needed).

Every function takes plain arrays and a path, writes the PNG and returns the path; none of
them computes clustering results (that is :mod:`deepclust.report.build`'s job).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, works without $DISPLAY
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

__all__ = [
    "montage",
    "plot_cluster_grid",
    "plot_cluster_sizes",
    "plot_confusion",
    "plot_embedding",
    "plot_sweep",
    "plot_training_curves",
]

_DPI = 100
_THUMB_MIN = 48  # smallest displayed thumbnail side in pixels (8x8 digits are upscaled 6x)


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _note(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4", wrap=True)


def plot_training_curves(lines: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training losses (``line["train"]``) and evaluation metrics (acc/nmi/ari, size entropy) per epoch."""
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(12, 4))
    train = [(ln["epoch"], ln["train"]) for ln in lines if isinstance(ln.get("train"), dict) and "epoch" in ln]
    keys = sorted({k for _, t in train for k in t})
    for k in keys:
        pts = [(e, t[k]) for e, t in train if k in t]
        ax_l.plot(*zip(*pts, strict=True), marker="o", ms=3, label=k)
    ax_l.set(title="training losses", xlabel="epoch", ylabel="value")
    if keys:  # below the axes: losses of different scales leave no free corner inside
        ax_l.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(keys), 5), frameon=False)
    if len(train) < 2:
        _note(
            ax_l,
            f"{len(train)} epoch(s) with training losses in metrics.jsonl\n"
            "(the trainer logs them with each evaluation: set train.eval_every)",
        )
    evals = [ln for ln in lines if "epoch" in ln and any(m in ln for m in ("acc", "nmi", "ari", "cluster_sizes"))]
    for m in ("acc", "nmi", "ari"):
        pts = [(ln["epoch"], ln[m]) for ln in evals if ln.get(m) is not None]
        if pts:
            ax_m.plot(*zip(*pts, strict=True), marker="o", ms=4, label=m.upper())
    ent = [
        (ln["epoch"], ln["cluster_sizes"]["entropy_norm"]) for ln in evals if isinstance(ln.get("cluster_sizes"), dict)
    ]
    if ent:
        ax_m.plot(*zip(*ent, strict=True), marker="s", ms=4, ls="--", color="0.5", label="size entropy")
    ax_m.set(title="evaluation", xlabel="epoch", ylim=(-0.05, 1.05))
    if evals:
        ax_m.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
    if len(evals) < 2:
        _note(ax_m, f"{len(evals)} evaluation(s) in metrics.jsonl")
    epochs = sorted({ln["epoch"] for ln in lines if isinstance(ln.get("epoch"), (int, float))})
    for ax in (ax_l, ax_m):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:  # one point: centre it instead of a +-0.05 epoch axis
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        elif epochs:  # the same epoch axis on both panels (the final line has no losses)
            pad = 0.04 * (epochs[-1] - epochs[0])
            ax.set_xlim(epochs[0] - pad, epochs[-1] + pad)
    fig.tight_layout()
    return _save(fig, path)


def plot_cluster_sizes(cluster_sizes: Sequence[int] | np.ndarray, path: Path) -> Path:
    """Bar chart of the number of images per cluster, with the equal-size line n / K."""
    sizes = np.asarray(cluster_sizes)
    k = len(sizes)
    fig, ax = plt.subplots(figsize=(min(14, 4 + 0.25 * k), 3.5))
    ax.bar(np.arange(k), sizes, color="tab:blue", width=0.8)
    ax.axhline(sizes.sum() / max(k, 1), color="tab:red", ls="--", lw=1, label="equal sizes (n / K)")
    ax.set(
        title=f"cluster sizes ({k} clusters, {int(sizes.sum())} images, {int((sizes == 0).sum())} empty)",
        xlabel="cluster",
        ylabel="images",
    )
    if k <= 40:
        ax.set_xticks(np.arange(k))
    ax.set_xlim(-0.6, k - 0.4)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _thumb(img: np.ndarray, scale: int) -> np.ndarray:
    """uint8 (C, H, W) -> (H*s, W*s, 3), nearest-neighbour upscaling (keeps small images crisp)."""
    x = img.transpose(1, 2, 0)
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return np.kron(x, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else x


def montage(images: np.ndarray, rows: Sequence[Sequence[int] | np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
    """One RGB uint8 image: row r holds ``images[rows[r]]`` (C, H, W each), white padding, blanks left empty."""
    h, w = images.shape[2:]
    s = max(1, math.ceil(_THUMB_MIN / max(h, w)))
    th, tw = h * s, w * s
    out = np.full((len(rows) * (th + pad) + pad, cols * (tw + pad) + pad, 3), 255, dtype=np.uint8)
    for r, idx in enumerate(rows):
        for c, i in enumerate(list(idx)[:cols]):
            y, x = pad + r * (th + pad), pad + c * (tw + pad)
            out[y : y + th, x : x + tw] = _thumb(images[i], s)
    return out


def plot_cluster_grid(
    images: np.ndarray,
    rows: Sequence[Sequence[int] | np.ndarray],
    row_labels: Sequence[str],
    cols: int,
    path: Path,
    title: str,
) -> Path:
    """Rows of thumbnails (the images nearest each centre) with a label on the left of every row."""
    grid = montage(images, rows, cols)
    gh, gw = grid.shape[:2]
    fig = plt.figure(figsize=(gw / _DPI + 1.8, gh / _DPI + 0.6), dpi=_DPI)
    ax = fig.add_axes((1.6 / (gw / _DPI + 1.8), 0.0, gw / _DPI / (gw / _DPI + 1.8), gh / (gh + 0.6 * _DPI)))
    ax.imshow(grid, interpolation="nearest")
    step = gh / max(len(rows), 1)
    ax.set_yticks([step * (r + 0.5) for r in range(len(rows))])
    ax.set_yticklabels(row_labels, fontsize=9)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=10, loc="left")
    return _save(fig, path)


def _colors(n: int) -> list:
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("turbo")(i / max(n - 1, 1)) for i in range(n)]


def plot_embedding(xy: np.ndarray, groups: np.ndarray, names: Sequence[str], path: Path, title: str) -> Path:
    """2-D scatter of an embedding, one colour per group (legend up to 20 groups)."""
    values = np.unique(groups)
    colors = _colors(len(values))
    fig, ax = plt.subplots(figsize=(7.5, 6))
    size = 14 if len(xy) <= 2000 else 6
    for v, col in zip(values, colors, strict=True):
        m = groups == v
        label = names[int(v)] if 0 <= int(v) < len(names) else str(v)
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=col, label=label, alpha=0.8, linewidths=0)
    ax.set(title=title, xticks=[], yticks=[])
    if len(values) <= 20:
        ax.legend(fontsize=8, markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(
    matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], path: Path, title: str
) -> Path:
    """Counts (clusters x classes) shaded by the row fraction, annotated when small enough to read."""
    m = np.asarray(matrix)
    k, n_cls = m.shape
    frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(min(16, 2.5 + 0.55 * n_cls), min(16, 1.8 + 0.45 * k)))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(np.arange(n_cls))
    ax.set_xticklabels(col_labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(k))
    ax.set_yticklabels(row_labels, fontsize=8)
    ax.set(xlabel="class", ylabel="cluster (matched class)", title=title)
    if k * n_cls <= 900:
        for i in range(k):
            for j in range(n_cls):
                if m[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(m[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black",
                    )
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Criteria of a K sweep against K: silhouette and size entropy (and ACC/NMI/ARI where present)."""
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = [("silhouette", "o-"), ("size_entropy", "s--"), ("acc", "^:"), ("nmi", "v:"), ("ari", "d:")]
    for key, style in series:
        pts = [(k, r[key]) for k, r in zip(ks, rows, strict=True) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=key.replace("_", " "))
    ax.set(title="criteria against the number of clusters", xlabel="K", xticks=ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
