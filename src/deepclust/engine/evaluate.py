"""Evaluation: predictions by k-means or head argmax, scored with the shared protocol.

Every record states its protocol, splits, prediction type (with n_init, k-means seed and the
split k-means was fitted on), seed and checkpoint epoch (spec/evaluation.md section 2.1).
Under ``train->test`` k-means is fitted on the training images' features and the evaluated
images are assigned to the nearest centre.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

import deepclust
from deepclust.cluster import assign_to_centers, kmeans
from deepclust.config import Config
from deepclust.data import ImageData
from deepclust.engine.device import autocast
from deepclust.errors import ConfigError
from deepclust.methods import ClusteringMethod
from deepclust.metrics import cluster_size_stats, evaluate


@dataclass
class Prediction:
    labels: torch.Tensor  # (N,) cluster per evaluated image
    confidence: torch.Tensor  # (N,) max probability, or a distance-based score for k-means
    centers: torch.Tensor | None  # k-means centres, None for head argmax
    features: torch.Tensor  # (N, D) evaluated images' features
    info: dict[str, Any]


@torch.no_grad()
def infer_images(
    method: ClusteringMethod,
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features (and probabilities, where the method has a head) for uint8 images, eval mode."""
    was_training = method.training
    method.eval()
    feats, probs = [], []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="features", leave=False, disable=not progress):
            x = method.eval_transform(images[start : start + batch_size].to(device, non_blocking=True))
            with autocast(device, amp):
                f, p = method.infer(x)
            feats.append(f.float())
            if p is not None:
                probs.append(p.float())
    finally:
        method.train(was_training)
    return torch.cat(feats), (torch.cat(probs) if probs else None)


def predict(
    method: ClusteringMethod,
    cfg: Config,
    n_clusters: int,
    train_data: ImageData,
    eval_data: ImageData,
    device: torch.device,
    amp: torch.dtype | None = None,
    progress: bool = False,
) -> Prediction:
    """Cluster the evaluated images the way the method and ``cfg.eval`` say."""
    bs = cfg.eval.batch_size
    same = cfg.protocol == "train+test"
    eval_feats, probs = infer_images(method, eval_data.images, bs, device, amp, progress)
    if method.prediction == "head_argmax" and probs is not None:
        conf, labels = probs.max(dim=1)
        info = {"type": "head_argmax", "head": getattr(method, "eval_head", 0), "k": probs.shape[1]}
        return Prediction(labels, conf, None, eval_feats, info)
    source = cfg.eval.features
    if source == "memory":
        if not same or not hasattr(method, "memory"):
            raise ConfigError("eval.features=memory needs the train+test protocol and a method with a memory bank (idfd)")
        fit_feats = method.memory.float()
    else:
        fit_feats = eval_feats if same else infer_images(method, train_data.images, bs, device, amp, progress)[0]
    km = kmeans(fit_feats, n_clusters, n_init=cfg.eval.n_init, seed=cfg.eval.kmeans_seed)
    if same and source == "memory":
        labels, d2 = km.labels, ((fit_feats - km.centers[km.labels]) ** 2).sum(1)
    else:
        labels, d2 = assign_to_centers(eval_feats, km.centers)
    info = {
        "type": "memory_bank" if source == "memory" else "kmeans",
        "features": "memory_bank" if source == "memory" else "clean (eval transform, eval mode), the method's infer() features",
        "n_init": cfg.eval.n_init,
        "kmeans_seed": cfg.eval.kmeans_seed,
        "fit_split": cfg.data.train_split,
        "inertia": km.inertia,
    }
    return Prediction(labels, torch.exp(-d2), km.centers, eval_feats, info)


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def make_record(
    cfg: Config,
    pred: Prediction,
    eval_data: ImageData,
    n_clusters: int,
    epoch: int,
    device: torch.device,
    checkpoint_hash: str | None = None,
) -> dict[str, Any]:
    """The result record of spec/evaluation.md 2.1, with acc/nmi/ari also at the top level."""
    y_pred = pred.labels.cpu().numpy()
    record: dict[str, Any] = {
        "method": cfg.method,
        "dataset": eval_data.name,
        "protocol": cfg.protocol,
        "split": cfg.data.eval_split,
        "train_split": cfg.data.train_split,
        "eval_split": cfg.data.eval_split,
        "seed": cfg.train.seed,
        "epoch": epoch,
        "checkpoint_epoch": epoch,
        "checkpoint_hash": checkpoint_hash,
        "n_init": pred.info.get("n_init"),
        "prediction": pred.info,
        "n_clusters": n_clusters,
        "n_classes": eval_data.n_classes if eval_data.has_labels else None,
        "backbone": cfg.model.backbone,
        "cluster_sizes": {k: v for k, v in cluster_size_stats(y_pred, n_clusters).items()},
        "library_version": deepclust.__version__,
        "device": str(device),
        "config_hash": config_hash(cfg),
    }
    if eval_data.has_labels:
        scores = evaluate(eval_data.labels.numpy(), y_pred)
        record.update({"acc": scores["acc"], "nmi": scores["nmi"], "ari": scores["ari"]})
        record["n_eval"] = scores.get("n_eval", len(y_pred))
        record["n_excluded"] = scores.get("n_excluded", 0)
        record["metrics"] = {k: scores[k] for k in ("acc", "nmi", "ari")}
        record["metric_defs"] = {"acc": "hungarian_one_to_one", "nmi_average": "arithmetic"}
    else:
        record["n_eval"] = len(y_pred)
    return record


def add_extras(record: dict[str, Any], method: ClusteringMethod, pred: Prediction, eval_data: ImageData) -> dict[str, Any]:
    """Attach the method's extra, explicitly named results (over-clustering heads, ...)."""
    y = eval_data.labels if eval_data.has_labels else None
    extras = method.evaluation_extras(pred.features, y)
    if extras:
        record["extras"] = extras
    return record
