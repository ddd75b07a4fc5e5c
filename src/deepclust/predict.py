"""Cluster new images with a trained run and write a CSV: ``deepclust predict RUN --data folder:PATH``.

Folders are streamed: files are decoded ``chunk_size`` at a time (a few threads), converted to
the run's channels (grayscale "L" or "RGB", whatever their own mode) and resized straight to
the run's image size (bilinear, antialiased, no crop: as ``folder:`` training data is read),
then clustered the way the run predicts (see :mod:`deepclust.saved_run` for the clusters and
the confidence). Unreadable files are skipped and listed in one warning at the end. The CSV is
written to a temporary file and renamed at the end, so a half-written file never looks done.

A run trained with ``--features`` (``data.features``) embeds the images with the run's encoder
instead (through the embedding cache under the run's ``data.cache_dir``; a folder is read at
the encoder's resize size, unreadable files skipped) and clusters the embeddings; if the
encoder's weights file no longer hashes to what the run recorded, it stops with one line.

Columns: ``path`` (relative to the folder; for in-memory datasets the image's position),
``cluster`` (0..K-1), ``confidence`` (0..1).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepclust.data import load_dataset
from deepclust.data.base import FeatureData
from deepclust.data.folder import decode_image, list_image_files
from deepclust.engine.device import amp_dtype
from deepclust.engine.evaluate import infer_images
from deepclust.errors import ConfigError, DataError
from deepclust.saved_run import kmeans_centers, load_run, run_encoder, soft_assign

log = logging.getLogger(__name__)

__all__ = ["PredictSummary", "predict_to_csv"]


@dataclass
class PredictSummary:
    """What ``predict_to_csv`` wrote."""

    out: Path
    n_images: int
    n_clusters: int
    cluster_sizes: list[int]
    confidence: str  # "head_probability" or "kmeans_softmax_distance"
    skipped: list[str] = field(default_factory=list)


def _folder_chunks(
    root: Path, files: list[Path], mode: str, size: int, chunk_size: int, workers: int
) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
    """(relative paths, uint8 images (n, C, size, size), unreadable relative paths) per chunk."""
    c = 1 if mode == "L" else 3
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), chunk_size):
            part = files[start : start + chunk_size]
            arrays = list(pool.map(lambda f: decode_image(f, mode, (size, size)), part))
            rel = [f.relative_to(root).as_posix() for f in part]
            ok = [i for i, a in enumerate(arrays) if a is not None]
            bad = [rel[i] for i, a in enumerate(arrays) if a is None]
            x = (
                np.stack([a.reshape(size, size, c) for a in arrays if a is not None])
                if ok
                else np.empty((0, size, size, c), np.uint8)
            )
            yield [rel[i] for i in ok], torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), bad


def _dataset_chunks(name: str, split: str, data_dir: str | None, mode: str, chunk_size: int):
    """The same chunks for a registered / npz dataset, read into memory first (the eval
    transform resizes them to the run's size); an npz of feature vectors gives its rows."""
    data = load_dataset(name, split, data_dir)
    images = data.images
    if isinstance(data, FeatureData):  # an npz of feature vectors: rows as they are (the run checks D)
        pass
    elif images.shape[1] != (1 if mode == "L" else 3):
        # Match the run's channels: gray -> RGB by repetition, RGB -> gray by ITU-R 601 luma (as Pillow's "L").
        if mode == "L":
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            images = images.expand(-1, 3, -1, -1).contiguous()
    names = data.paths if data.paths is not None else [str(i) for i in range(data.n_samples)]
    for start in range(0, data.n_samples, chunk_size):
        yield names[start : start + chunk_size], images[start : start + chunk_size], []


def _embedding_chunks(
    run_dir: str | Path,
    cfg,
    data: str,
    split: str | None,
    data_dir: str | None,
    dev: torch.device,
    chunk_size: int,
    progress: bool,
):
    """A ``--features`` run: the embeddings of ``data`` by the run's encoder as the chunks of
    :func:`_folder_chunks` (names, (n, D) features, unreadable files), and the row count."""
    from deepclust.data.open import open_dataset
    from deepclust.pretrained import embed

    enc = run_encoder(run_dir, cfg)  # the weights the run was trained with, or one line
    folder = data.startswith("folder:")
    if split is None:
        split = cfg.data.eval_split if data == cfg.data.name else ("train" if folder else "test")
    images = open_dataset(
        data,
        split,
        data_dir or cfg.data.data_dir,
        image_size=enc.preprocess.resize_size if folder else None,
        stream="auto",
    )
    emb = embed(images, enc, cfg.data.cache_dir, device=dev, amp=cfg.train.amp, progress=progress)
    names = emb.paths if emb.paths is not None else [str(i) for i in range(emb.n_samples)]
    skipped: list[str] = []
    if folder:
        root = Path(data[len("folder:") :].strip()).expanduser().absolute()
        kept = set(names)
        skipped = [
            f.relative_to(root).as_posix() for f in list_image_files(root) if f.relative_to(root).as_posix() not in kept
        ]
    feats = torch.from_numpy(np.array(emb.features, dtype=np.float32))

    def chunks():
        for start in range(0, emb.n_samples, chunk_size):
            yield names[start : start + chunk_size], feats[start : start + chunk_size], skipped if start == 0 else []

    return chunks(), emb.n_samples + len(skipped)


def predict_to_csv(
    run_dir: str | Path,
    data: str,
    out: str | Path,
    device: str = "auto",
    batch_size: int | None = None,
    chunk_size: int = 1024,
    data_dir: str | None = None,
    split: str | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Cluster every image of ``data`` with the run in ``run_dir`` and write ``out`` (CSV).

    ``folder:PATH`` is streamed (every image in it); any other dataset name is read into memory:
    ``split`` of it, by default the run's eval split for the run's own dataset, else ``test``.
    """
    if chunk_size < 1:
        raise ConfigError(f"the chunk size (--chunk-size) must be at least 1, got {chunk_size}")
    cfg, method, info, ckpt, dev = load_run(run_dir, device)
    bs = batch_size or cfg.eval.batch_size
    if bs < 1:
        raise ConfigError(f"batch size must be at least 1, got {bs}")
    amp = amp_dtype(cfg.train.amp, dev)
    centers, tau = (None, 1.0)
    if method.prediction != "head_argmax":
        centers, tau = kmeans_centers(run_dir, cfg, method, info, ckpt, dev)
    mode = "L" if info.n_channels == 1 else "RGB"
    size = int(info.image_size)
    if cfg.data.features:
        chunks, total = _embedding_chunks(run_dir, cfg, data, split, data_dir, dev, chunk_size, progress)
    elif data.startswith("folder:"):
        root = Path(data[len("folder:") :].strip()).expanduser().absolute()
        files = list_image_files(root)
        total = len(files)
        chunks = _folder_chunks(root, files, mode, size, chunk_size, workers=max(1, min(4, os.cpu_count() or 1)))
    else:
        total = None
        if split is None:
            split = cfg.data.eval_split if data == cfg.data.name else "test"
        chunks = _dataset_chunks(data, split, data_dir or cfg.data.data_dir, mode, chunk_size)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    sizes = np.zeros(info.n_clusters, dtype=np.int64)
    skipped: list[str] = []
    n = 0
    try:
        with (
            open(tmp, "w", newline="") as fh,
            tqdm(total=total, desc="predict", unit="img", disable=not progress) as bar,
        ):
            writer = csv.writer(fh)
            writer.writerow(["path", "cluster", "confidence"])
            for names, images, bad in chunks:
                skipped += bad
                if len(names):
                    feats, probs = infer_images(method, images, bs, dev, amp)
                    labels, conf = soft_assign(feats, probs, centers, tau)
                    labels_np, conf_np = labels.cpu().numpy(), conf.float().cpu().numpy()
                    writer.writerows((p, int(k), f"{c:.6f}") for p, k, c in zip(names, labels_np, conf_np, strict=True))
                    sizes += np.bincount(labels_np, minlength=info.n_clusters)[: info.n_clusters]
                    n += len(names)
                bar.update(len(names) + len(bad))
        if skipped:
            shown = ", ".join(skipped[:20]) + (f", ... and {len(skipped) - 20} more" if len(skipped) > 20 else "")
            log.warning("skipped %d unreadable image file(s): %s", len(skipped), shown)
        if n == 0:
            raise DataError(f"none of the images in {data} could be read; check the files")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    kind = "head_probability" if centers is None else "kmeans_softmax_distance"
    log.info(
        "wrote %d predictions to %s (confidence: %s%s)", n, out, kind, "" if centers is None else f", tau={tau:.4g}"
    )
    return PredictSummary(out, n, info.n_clusters, sizes.tolist(), kind, skipped)
