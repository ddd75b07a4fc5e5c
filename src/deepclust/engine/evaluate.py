"""Evaluation: a model run over images to predict clusters (k-means or head argmax), scored with
the shared protocol into the result record.

The scores themselves are :mod:`deepclust.metrics` (pure functions of labels); reloading a saved
run to evaluate it again is :mod:`deepclust.saved_run`.

Every record states its protocol, splits, prediction type (with n_init, k-means seed and the
split k-means was fitted on), seed and checkpoint epoch (spec/evaluation.md section 2.1).
Under ``train->test`` k-means is fitted on the training images' features and the evaluated
images are assigned to the nearest centre. Under torchrun every process infers its shard of the
images, rank 0 gathers the features and clusters them once (the others get None).

Feature-mode records (the data are (N, D) vectors: ``--features``, an npz of features, an
array given to the estimator) also carry ``kmeans_baseline``: k-means on the L2-normalised
input vectors of the evaluated data (not the learned features), with ``eval.n_init`` restarts
and ``eval.kmeans_seed``, scored like the run where labels exist: what the training added over
clustering the inputs directly. Runs on a pretrained embedding also record ``embedding`` (the
encoder's model, weights hash, preprocessing, D and the cache folder).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from deepclust._version import __version__
from deepclust.cluster import assign_to_centers, kmeans, kmeans_distributed
from deepclust.collectives import Collectives, split_sizes
from deepclust.config import Config
from deepclust.data import ImageData, StreamData
from deepclust.data.base import FeatureData
from deepclust.data.stream import LazyImages
from deepclust.engine.device import autocast
from deepclust.errors import ConfigError, DataError
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
    images: torch.Tensor | LazyImages,
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
        if isinstance(images, LazyImages):  # streamed (data/stream.py): decoded by workers
            chunks = images.batches(batch_size, device)
        else:
            chunks = (
                images[s : s + batch_size].to(device, non_blocking=True) for s in range(0, len(images), batch_size)
            )
        total = -(-len(images) // batch_size)
        for chunk in tqdm(chunks, total=total, desc="features", leave=False, disable=not progress):
            x = method.eval_transform(chunk)
            with autocast(device, amp):
                f, p = method.infer(x)
            feats.append(f.float())
            if p is not None:
                probs.append(p.float())
    finally:
        method.train(was_training)
    return torch.cat(feats), (torch.cat(probs) if probs else None)


def infer_sharded(
    method: ClusteringMethod,
    images: torch.Tensor | LazyImages,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
    progress: bool = False,
    dist: Collectives | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
    """:func:`infer_images` split over the torchrun processes: each infers its contiguous shard
    and rank 0 receives every row in order; the others get (None, None). The flag says whether
    the method returned probabilities (known on every process)."""
    if dist is None or not dist.enabled:
        feats, probs = infer_images(method, images, batch_size, device, amp, progress)
        return feats, probs, probs is not None
    if len(images) < dist.world:
        raise DataError(f"{len(images)} images cannot be split over {dist.world} processes; evaluate on more images")
    sizes = split_sizes(len(images), dist.world)
    lo = sum(sizes[: dist.rank])
    feats, probs = infer_images(
        method, images[lo : lo + sizes[dist.rank]], batch_size, device, amp, progress and dist.is_main
    )
    has_probs = probs is not None
    return dist.gather_rows(feats), (dist.gather_rows(probs) if probs is not None else None), has_probs


def predict(
    method: ClusteringMethod,
    cfg: Config,
    n_clusters: int,
    train_data: ImageData | StreamData,
    eval_data: ImageData | StreamData,
    device: torch.device,
    amp: torch.dtype | None = None,
    progress: bool = False,
    dist: Collectives | None = None,
) -> Prediction | None:
    """Cluster the evaluated images the way the method and ``cfg.eval`` say.

    ``dist`` (torchrun): features are inferred in shards and gathered on rank 0, which clusters
    them once; every other process returns None."""
    bs = cfg.eval.batch_size
    same = cfg.protocol == "train+test"
    if (
        dist is not None
        and dist.enabled
        and cfg.eval.distributed_kmeans
        and method.prediction == "kmeans"
        and cfg.eval.features == "clean"
    ):
        return _predict_distributed_kmeans(method, cfg, n_clusters, train_data, eval_data, device, amp, progress, dist)
    eval_feats, probs, has_probs = infer_sharded(method, eval_data.images, bs, device, amp, progress, dist)
    head = method.prediction == "head_argmax" and has_probs
    source = cfg.eval.features
    bank = method.memory_bank() if source == "memory" else None
    if not head and source == "memory" and (not same or bank is None):
        raise ConfigError("eval.features=memory needs the train+test protocol and a method with a memory bank (idfd)")
    train_feats = None
    if not head and source != "memory" and not same:  # every process takes part in the gather
        train_feats = infer_sharded(method, train_data.images, bs, device, amp, progress, dist)[0]
    if eval_feats is None:  # torchrun, rank > 0: rank 0 clusters
        return None
    if head:
        assert probs is not None
        conf, labels = probs.max(dim=1)
        info = {"type": "head_argmax", "head": method.eval_head, "k": probs.shape[1]}
        return Prediction(labels, conf, None, eval_feats, info)
    fit_feats: torch.Tensor | None
    if source == "memory":
        assert bank is not None
        fit_feats = bank.float()
    else:
        fit_feats = eval_feats if same else train_feats
    assert fit_feats is not None
    km = kmeans(fit_feats, n_clusters, n_init=cfg.eval.n_init, seed=cfg.eval.kmeans_seed)
    if same and source == "memory":
        labels, d2 = km.labels, ((fit_feats - km.centers[km.labels]) ** 2).sum(1)
    else:
        labels, d2 = assign_to_centers(eval_feats, km.centers)
    info = {
        "type": "memory_bank" if source == "memory" else "kmeans",
        "features": "memory_bank"
        if source == "memory"
        else "clean (eval transform, eval mode), the method's infer() features",
        "n_init": cfg.eval.n_init,
        "kmeans_seed": cfg.eval.kmeans_seed,
        "fit_split": cfg.data.train_split,
        "inertia": km.inertia,
    }
    return Prediction(labels, torch.exp(-d2), km.centers, eval_feats, info)


def _predict_distributed_kmeans(
    method: ClusteringMethod,
    cfg: Config,
    n_clusters: int,
    train_data: ImageData | StreamData,
    eval_data: ImageData | StreamData,
    device: torch.device,
    amp: torch.dtype | None,
    progress: bool,
    dist: Collectives,
) -> Prediction | None:
    """``eval.distributed_kmeans`` under torchrun: every process keeps its shard of the features,
    k-means runs over all shards (:func:`kmeans_distributed`: centres all-reduced), each process
    assigns its evaluated rows, and rank 0 gathers labels and features for the record."""

    def shard(images: torch.Tensor | LazyImages) -> torch.Tensor:
        if len(images) < dist.world:
            raise DataError(
                f"{len(images)} images cannot be split over {dist.world} processes; evaluate on more images"
            )
        sizes = split_sizes(len(images), dist.world)
        lo = sum(sizes[: dist.rank])
        return infer_images(
            method, images[lo : lo + sizes[dist.rank]], cfg.eval.batch_size, device, amp, progress and dist.is_main
        )[0]

    eval_local = shard(eval_data.images)
    fit_local = eval_local if cfg.protocol == "train+test" else shard(train_data.images)
    km = kmeans_distributed(fit_local, n_clusters, n_init=cfg.eval.n_init, seed=cfg.eval.kmeans_seed, group=dist.group)
    local_labels, local_d2 = assign_to_centers(eval_local, km.centers)
    labels, d2, feats = dist.gather_rows(local_labels), dist.gather_rows(local_d2), dist.gather_rows(eval_local)
    if labels is None or d2 is None or feats is None:
        return None
    info = {
        "type": "kmeans",
        "features": "clean (eval transform, eval mode), the method's infer() features",
        "n_init": cfg.eval.n_init,
        "kmeans_seed": cfg.eval.kmeans_seed,
        "fit_split": cfg.data.train_split,
        "inertia": km.inertia,
        "kmeans": f"distributed over {dist.world} processes (initialised from a gathered sample)",
    }
    return Prediction(labels, torch.exp(-d2), km.centers, feats, info)


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def make_record(
    cfg: Config,
    pred: Prediction,
    eval_data: ImageData | StreamData,
    n_clusters: int,
    epoch: int,
    device: torch.device,
    checkpoint_hash: str | None = None,
) -> dict[str, Any]:
    """The result record of spec/evaluation.md 2.1, with acc/nmi/ari/ami also at the top level
    (AMI: scikit-learn's adjusted mutual information, arithmetic normalisation, float64)."""
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
        "library_version": __version__,
        "device": str(device),
        "config_hash": config_hash(cfg),
    }
    if eval_data.has_labels:
        # extra=True: AMI beside ACC/NMI/ARI (anchor.md 7, cdc.md 4 and evaluation.md report it)
        scores = evaluate(eval_data.labels.numpy(), y_pred, extra=True)
        record.update({k: scores[k] for k in ("acc", "nmi", "ari", "ami")})
        record["n_eval"] = scores.get("n_eval", len(y_pred))
        record["n_excluded"] = scores.get("n_excluded", 0)
        record["metrics"] = {k: scores[k] for k in ("acc", "nmi", "ari", "ami")}
        record["metric_defs"] = {
            "acc": "hungarian_one_to_one",
            "nmi_average": "arithmetic",
            "ami_average": "arithmetic",
        }
    else:
        record["n_eval"] = len(y_pred)
    if isinstance(eval_data, FeatureData):
        record["kmeans_baseline"] = kmeans_baseline(
            eval_data, n_clusters, cfg.eval.n_init, cfg.eval.kmeans_seed, device
        )
        embedding = getattr(eval_data, "embedding", None)
        if embedding:
            record["embedding"] = dict(embedding)
    return record


BASELINE_INPUT = "l2-normalised features"


def kmeans_baseline(
    data: FeatureData, n_clusters: int, n_init: int, seed: int, device: torch.device | None = None
) -> dict[str, Any]:
    """k-means on the L2-normalised input vectors of ``data`` (on ``device`` when given): with
    labels ``{"acc", "nmi", "ari", "n_init", "input"}``, without ``{"n_init", "inertia", "input"}``."""
    x = data.features
    if device is not None:
        x = x.to(device)
    x = torch.nn.functional.normalize(x.float(), dim=1)
    km = kmeans(x, n_clusters, n_init=n_init, seed=seed)
    out: dict[str, Any] = {"n_init": n_init, "input": BASELINE_INPUT}
    if data.has_labels:
        scores = evaluate(data.labels.numpy(), km.labels.cpu().numpy())
        out.update({k: float(scores[k]) for k in ("acc", "nmi", "ari")})
    else:
        out["inertia"] = float(km.inertia)
    return out


def add_extras(
    record: dict[str, Any], method: ClusteringMethod, pred: Prediction, eval_data: ImageData | StreamData
) -> dict[str, Any]:
    """Attach the method's extra, explicitly named results (over-clustering heads, ...)."""
    y = eval_data.labels if eval_data.has_labels else None
    extras = method.evaluation_extras(pred.features, y)
    if extras:
        record["extras"] = extras
    return record
