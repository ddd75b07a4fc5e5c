"""A saved run directory, reloaded: its config, model, data, k-means centres and predictions
(``deepclust eval``, and the shared loading code of ``predict``, ``report``, ``sweep-k`` and
``selflabel``).

Where evaluation lives: :mod:`deepclust.metrics` scores labels (ACC, NMI, ARI; pure functions),
:mod:`deepclust.engine.evaluate` runs a model over images to predict clusters and builds the
result record, and this module reloads a run from its directory to feed those two.

A run predicts the way it was evaluated: head methods take the argmax of their head;
k-means methods assign features to the k-means centres stored in the final checkpoint
(``centers``), or, for a run without them (interrupted before its final evaluation), to
centres fitted again on the run's training features with the run's k-means settings.

Confidence (what ``predict`` writes and the report shows):

- head methods: the head's probability of the predicted cluster, ``max_k p_k``;
- k-means methods: a softmax over negative squared distances to the centres,
  ``p_k = exp(-||f - c_k||^2 / tau) / sum_j exp(-||f - c_j||^2 / tau)``, at the nearest centre,
  with ``tau`` the mean squared distance of the features k-means was fitted on to their own
  centre (``inertia / n``, from ``results.json``): a point as close to its centre as a typical
  member, and much closer than to any other, scores near 1. ``tau`` is fixed per run, so the
  score of an image never depends on which other images are predicted with it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepclust.cluster import assign_to_centers, kmeans
from deepclust.config import Config, build_dataclass, resolve_config
from deepclust.data import ImageData, StreamData
from deepclust.engine import io
from deepclust.engine.data_stage import create_run_encoder, open_split  # the same storage/streaming choice as training
from deepclust.engine.device import amp_dtype, resolve_device
from deepclust.engine.evaluate import add_extras, infer_images, make_record, predict
from deepclust.errors import CheckpointError, ConfigError, DeepClustError
from deepclust.methods import ClusteringMethod, DataInfo, create_method

log = logging.getLogger(__name__)


def load_run(run_dir: str | Path, device: str = "auto"):
    """(config, method in eval mode, data info, checkpoint, device) of a run directory."""
    run = Path(run_dir)
    if not run.exists():
        raise CheckpointError(f"run directory '{run}' does not exist; pass the --out of a 'deepclust train' run")
    ckpt = io.load_checkpoint(run / io.CHECKPOINT)
    if ckpt.get("stage") == "selflabel":
        raise CheckpointError(
            f"'{run}' holds a self-labelling checkpoint, not a method run; pass the run it was made from"
        )
    if "config" not in ckpt or "data_info" not in ckpt:
        raise CheckpointError(
            f"the checkpoint in '{run}' lacks its config or data info; it was not written by 'deepclust train'"
        )
    try:
        cfg = resolve_config(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(
            f"the config stored in '{run}' is not valid for this version of deepclust ({exc})"
        ) from None
    if cfg.method != ckpt["method"]:
        raise CheckpointError(
            f"the checkpoint in '{run}' is from method '{ckpt['method']}' "
            f"but its config says '{cfg.method}'; was it edited?"
        )
    dev = resolve_device(device)
    info = build_dataclass(DataInfo, ckpt["data_info"])
    method = create_method(cfg, info)
    try:
        method.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise CheckpointError(f"the checkpoint in '{run}' does not match its own config; was it edited?") from None
    return cfg, method.to(dev).eval(), info, ckpt, dev


def load_run_data(
    cfg: Config, split: str | None = None, device: torch.device | None = None, encoder: Any = None
) -> tuple[ImageData | StreamData, ImageData | StreamData]:
    """The run's training images and its evaluated images (``split`` overrides the eval split);
    a ``--features`` run's embeddings of them (from the cache, by ``encoder`` or the run's own
    ``data.features``, on ``device``)."""
    d = cfg.data
    eval_split = split or d.eval_split
    enc = encoder if encoder is not None or not d.features else create_run_encoder(cfg)
    train = open_split(cfg, d.train_split, device, enc)
    evald = train if eval_split == d.train_split else open_split(cfg, eval_split, device, enc)
    return train, evald


def run_encoder(run_dir: str | Path, cfg: Config) -> Any:
    """The encoder of a ``--features`` run (None for other runs), checked against the weights the
    run was trained with: a weights file whose hash differs from the one in ``results.json``
    raises :class:`CheckpointError` (one line)."""
    if not cfg.data.features:
        return None
    enc = create_run_encoder(cfg)
    recorded = (_results(run_dir).get("embedding") or {}).get("weights_hash")
    if recorded is None:
        log.warning("%s records no encoder weights hash (no results.json); the weights are not checked", run_dir)
    elif recorded != enc.weights_hash:
        raise CheckpointError(
            f"the encoder weights changed since '{run_dir}' was trained: {cfg.data.features} now hashes to "
            f"{enc.weights_hash}, the run used {recorded}; restore that weights file or train the run again"
        )
    return enc


def kmeans_centers(
    run_dir: str | Path,
    cfg: Config,
    method: ClusteringMethod,
    info: DataInfo,
    ckpt: dict[str, Any],
    device: torch.device,
    progress: bool = False,
) -> tuple[torch.Tensor, float]:
    """The run's k-means centres (K, D) on ``device`` and ``tau``, the mean squared distance of the
    fitted features to their centre (see the module docstring)."""
    centers = ckpt.get("centers")
    if centers is not None:
        inertia = _results(run_dir).get("prediction", {}).get("inertia")
        tau = float(inertia) / max(info.n_samples, 1) if inertia is not None else 1.0
        if inertia is None:
            log.warning("%s has no results.json with the k-means inertia; confidences use tau = 1", run_dir)
        return centers.float().to(device), max(tau, 1e-12)
    log.warning(
        "the checkpoint in %s has no k-means centres (unfinished run); fitting k-means on its training features",
        run_dir,
    )
    train, _ = load_run_data(cfg, device=device)
    feats, _ = infer_images(
        method, train.images, cfg.eval.batch_size, device, amp_dtype(cfg.train.amp, device), progress
    )
    km = kmeans(feats, info.n_clusters, n_init=cfg.eval.n_init, seed=cfg.eval.kmeans_seed)
    return km.centers.float(), max(km.inertia / max(len(feats), 1), 1e-12)


def soft_assign(
    features: torch.Tensor, probs: torch.Tensor | None, centers: torch.Tensor | None, tau: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster (N,), confidence (N,)): head argmax when ``centers`` is None, else nearest centre
    with the softmax-over-distances confidence of the module docstring."""
    if centers is None:
        if probs is None:
            raise DeepClustError("this run has neither a cluster head nor k-means centres; it cannot predict")
        conf, labels = probs.max(dim=1)
        return labels, conf
    if not bool(torch.isfinite(features).all()):
        raise DeepClustError(
            "the model produced NaN or infinite features; the run diverged: retrain with a lower optim.lr"
        )
    labels, _ = assign_to_centers(features, centers)
    d2 = torch.cdist(features.float(), centers.float().to(features.device)).pow(2)
    conf = torch.softmax(-d2 / tau, dim=1).gather(1, labels[:, None]).squeeze(1)
    return labels, conf


@dataclass
class RunPrediction:
    """A reloaded run and its predictions on its evaluated images."""

    cfg: Config
    method: ClusteringMethod
    info: DataInfo
    ckpt: dict[str, Any]
    device: torch.device
    data: ImageData | StreamData
    features: torch.Tensor  # (N, D) on the CPU
    labels: torch.Tensor  # (N,) int64 on the CPU
    confidence: torch.Tensor  # (N,) on the CPU
    centers: torch.Tensor | None  # k-means centres (K, D) on the CPU, None for head methods


def predict_run(
    run_dir: str | Path, device: str = "auto", split: str | None = None, progress: bool = False
) -> RunPrediction:
    """Reload a run and predict its evaluated images (k-means runs: the stored centres)."""
    cfg, method, info, ckpt, dev = load_run(run_dir, device)
    _, data = load_run_data(cfg, split, dev, run_encoder(run_dir, cfg))
    feats, probs = infer_images(method, data.images, cfg.eval.batch_size, dev, amp_dtype(cfg.train.amp, dev), progress)
    centers, tau = (None, 1.0)
    if method.prediction != "head_argmax" or probs is None:
        centers, tau = kmeans_centers(run_dir, cfg, method, info, ckpt, dev, progress)
    labels, conf = soft_assign(feats, probs, centers, tau)
    return RunPrediction(
        cfg,
        method,
        info,
        ckpt,
        dev,
        data,
        feats.cpu(),
        labels.cpu(),
        conf.cpu(),
        None if centers is None else centers.cpu(),
    )


def _results(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / io.RESULTS
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def evaluate_run(
    run_dir: str | Path, features: str | None = None, split: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Re-run the evaluation of a run's latest checkpoint; writes ``eval_<split>_<features>.json``."""
    cfg, method, info, ckpt, dev = load_run(run_dir, device)
    if features:
        cfg.eval.features = features
    if split:
        cfg.data.eval_split = split
    train, evald = load_run_data(cfg, device=dev, encoder=run_encoder(run_dir, cfg))
    pred = predict(method, cfg, info.n_clusters, train, evald, dev, amp_dtype(cfg.train.amp, dev))
    assert pred is not None  # one process: only torchrun's ranks > 0 get None
    record = make_record(
        cfg, pred, evald, info.n_clusters, int(ckpt["epoch"]), dev, io.file_hash(Path(run_dir) / io.CHECKPOINT)
    )
    record = add_extras(record, method, pred, evald)
    name = re.sub(r"[^A-Za-z0-9]+", "-", f"{cfg.data.eval_split}_{cfg.eval.features}")
    io.write_json(record, Path(run_dir) / f"eval_{name}.json")
    return record


__all__ = [
    "RunPrediction",
    "evaluate_run",
    "kmeans_centers",
    "load_run",
    "load_run_data",
    "predict_run",
    "run_encoder",
    "soft_assign",
]
