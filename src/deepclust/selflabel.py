"""Self-labelling: a second stage any finished run can take (``deepclust selflabel RUN_DIR``).

SCAN's self-labelling settings (Van Gansbeke et al., ECCV 2020), as used after SeCu
(spec/secu.md section 12):

- the model is the run's feature map followed by a cosine classifier,
  logits = normalize(f(x)) normalize(W)^T / temperature, and everything is fine-tuned;
- per batch, the weak view is the eval transform (no augmentation); a sample is confident
  when its maximum softmax probability exceeds ``threshold`` (0.99), and its pseudo-label is
  that argmax (no gradient through the weak view);
- the loss is cross entropy on a strong view (:class:`deepclust.augment.StrongAugment`) of
  the confident samples, weighted per class by w_c = n_conf / count_c over the batch's
  confident pseudo-labels (:func:`confidence_cross_entropy`);
- Adam, lr 1e-4, weight decay 1e-4, batch 1000 (the last partial batch dropped, as SCAN's
  loader), constant rate; 100 epochs on STL-10, 200 elsewhere (:func:`default_epochs`).

Precision: the confidence softmax, the mask and the loss run in float32 with autocast
disabled, whatever the caller's autocast (the 0.99 threshold is meaningless in bf16, whose
step near 1 is 2^-8).

The temperature decides which samples can pass the threshold: with K unit-norm centres the
largest attainable probability is 1 / (1 + (K - 1) exp(-2 / t)) (one cosine 1, the others -1),
so SeCu's STL-10 t_w = 1.0 caps it at 0.45 for K = 10 and nothing would ever be selected (the
loss always 0, Adam's weight decay alone shrinking the weights). The default is therefore
min(t_w, 0.1) for SeCu and 0.1 otherwise (the argmax, hence the starting prediction, does not
depend on it); a temperature at which the threshold cannot be reached is an error, and so is
a stage whose first weak-view pass selects no sample.

How the classifier is initialised (library choices):

- ``head_argmax`` methods with centres (SeCu): the evaluated head's centres (default
  temperature min(``temperature_w``, 0.1)), so the stage starts from exactly the run's
  predictions;
- other ``head_argmax`` methods: the probability-weighted means of the training features
  (soft centroids of the method's own head);
- ``kmeans`` methods: the k-means centres stored in the final checkpoint (``centers``).

f(x) is the method module's ``forward`` (normalised features, as :meth:`infer` returns them).
The stage trains on the run's training split and scores its evaluation split; it writes
``RUN_DIR/selflabel/`` (config.yaml of the run, metrics.jsonl, results.json, checkpoint.pt).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from deepclust.augment import StrongAugment
from deepclust.config import config_yaml
from deepclust.data import load_dataset
from deepclust.engine import io
from deepclust.engine.device import seed_everything
from deepclust.engine.evaluate import Prediction, infer_images, make_record
from deepclust.errors import CheckpointError, ConfigError
from deepclust.evaluation import load_run
from deepclust.methods import ClusteringMethod
from deepclust.precision import fp32, full

log = logging.getLogger(__name__)


def confidence_cross_entropy(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """SCAN's confidence-based, class-balanced cross entropy.

    p = softmax(weak_logits) (held constant), M = {i : max_k p_ik > threshold},
    y_i = argmax_k p_ik, w_c = |M| / #{i in M : y_i = c} (0 for absent classes):

        L = sum_{i in M} w_{y_i} (-log softmax(strong_logits_i)[y_i]) / sum_{i in M} w_{y_i}

    Returns (L, |M|); L is 0 (with gradient graph) when no sample is confident. Runs in
    float32 with autocast disabled (fp64 inputs stay fp64).
    """
    with fp32(weak_logits):
        with torch.no_grad():
            prob = F.softmax(full(weak_logits), dim=1)
            conf, target = prob.max(dim=1)
            mask = conf > threshold
        n = int(mask.sum())
        if n == 0:
            return strong_logits.sum() * 0.0, mask.sum()
        k = strong_logits.shape[1]
        counts = torch.bincount(target[mask], minlength=k).float()
        weight = torch.where(counts > 0, n / counts.clamp_min(1), torch.zeros_like(counts))
        logits = full(strong_logits[mask])
        loss = F.cross_entropy(logits, target[mask], weight=weight.to(logits.dtype))
    return loss, mask.sum()


def default_epochs(dataset: str) -> int:
    """SCAN's self-labelling length: 100 epochs on STL-10, 200 on CIFAR-10/100-20 (and elsewhere)."""
    return 100 if dataset.lower().startswith("stl10") else 200


def max_attainable_confidence(n_classes: int, temperature: float) -> float:
    """The largest softmax probability cosine logits / t can give: 1 / (1 + (K-1) e^(-2/t))."""
    return 1.0 / (1.0 + (n_classes - 1) * math.exp(-2.0 / temperature))


class CosineClassifier(nn.Module):
    """logits = normalize(features(x)) normalize(W)^T / temperature."""

    def __init__(self, features: ClusteringMethod, weight: torch.Tensor, temperature: float) -> None:
        super().__init__()
        self.features = features
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.temperature = float(temperature)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if not isinstance(f, torch.Tensor) or f.ndim != 2:
            raise ConfigError("self-labelling needs a method whose forward(x) returns (B, D) features")
        return F.normalize(f.float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x) @ F.normalize(self.weight, dim=1).t() / self.temperature


def _initial_classifier(method: ClusteringMethod, ckpt: dict[str, Any], images: torch.Tensor, batch: int, device: torch.device) -> tuple[torch.Tensor, float | None, str]:
    """(W, default temperature or None, description) for the cosine classifier."""
    if method.prediction == "head_argmax":
        head = method.head_centers()
        if head is not None:
            w, t_w = head
            return w, min(t_w, DEFAULT_TEMPERATURE), f"head {method.eval_head} centres"
        feats, probs = infer_images(method, images, batch, device)
        if probs is None:
            raise CheckpointError("this head_argmax method returned no probabilities")
        w = probs.t() @ F.normalize(feats, dim=1)  # soft centroids of the method's own head
        return w, None, "soft centroids of the method's head"
    centers = ckpt.get("centers")
    if centers is None:
        raise CheckpointError("the checkpoint holds no k-means centres; self-label from a finished run (its final checkpoint)")
    return torch.as_tensor(centers).to(device), None, "k-means centres of the run"


#: default temperature of the cosine classifier (reaches 0.99 for K up to about 10^7)
DEFAULT_TEMPERATURE = 0.1


def selflabel(
    run_dir: str | Path,
    epochs: int | None = None,
    threshold: float = 0.99,
    batch_size: int = 1000,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    temperature: float | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    seed: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune a finished run by self-labelling and score it; returns the result record.

    ``epochs`` None: :func:`default_epochs` of the run's dataset (100 STL-10, 200 otherwise).
    ``temperature`` None: min(``temperature_w``, 0.1) for SeCu runs, else 0.1 (it decides which
    samples pass the threshold). ``out`` None: ``RUN_DIR/selflabel``. ``seed`` None: the run's.
    Every epoch's line in ``metrics.jsonl`` records ``confident`` (samples above the threshold)
    and ``confident_fraction``; an epoch that selects none logs a warning.
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if (epochs is not None and epochs < 1) or batch_size < 2:
        raise ConfigError("epochs must be >= 1 and batch_size >= 2")
    cfg, method, info, ckpt, dev = load_run(run_dir, device)
    if info.n_features:  # its strong view is an image augmentation (RandAugment, Cutout)
        raise ConfigError(
            f"'{run_dir}' clusters feature vectors: self-labelling trains on strong image augmentations and "
            "applies to runs on images only"
        )
    if epochs is None:
        epochs = default_epochs(cfg.data.name)
    seed_everything(cfg.train.seed if seed is None else seed)
    d = cfg.data
    train_data = load_dataset(d.name, d.train_split, d.data_dir, d.image_size)
    eval_data = train_data if d.eval_split == d.train_split else load_dataset(d.name, d.eval_split, d.data_dir, d.image_size)
    images = train_data.images.to(dev)
    w, t_default, init = _initial_classifier(method, ckpt, images, cfg.eval.batch_size, dev)
    t = temperature if temperature is not None else (t_default if t_default is not None else DEFAULT_TEMPERATURE)
    k = int(w.shape[0])
    reach = max_attainable_confidence(k, t)
    if reach <= threshold:
        raise ConfigError(
            f"at temperature {t:g} no sample can pass the threshold {threshold:g} (with {k} unit-norm centres the "
            f"softmax never exceeds {reach:.3f}); lower --temperature (e.g. {DEFAULT_TEMPERATURE:g})"
        )
    model = CosineClassifier(method, w, t).to(dev)
    strong = StrongAugment(info.image_size, info.mean, info.std).to(dev)
    weak = method.eval_transform
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    run_out = Path(out) if out is not None else Path(run_dir) / "selflabel"
    run_out.mkdir(parents=True, exist_ok=True)
    io.write_text(config_yaml(cfg), run_out / io.CONFIG)
    n = len(images)
    # SCAN drops the last partial batch; a training set smaller than one batch is one batch.
    batch_size = min(batch_size, n)
    n_before = _count_confident(model, weak, images, batch_size, threshold)
    if n_before == 0:
        raise ConfigError(
            f"no training image's weak-view confidence exceeds {threshold:g} at temperature {t:g}: self-labelling "
            "would train on nothing; lower --temperature or --threshold"
        )
    log.info("selflabel: %d of %d images pass %.2f at temperature %g before training", n_before, n, threshold, t)
    t0 = time.time()
    g_seed = cfg.train.seed if seed is None else seed
    for epoch in tqdm(range(epochs), desc="selflabel", disable=not progress):
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(g_seed * 1_000_003 + epoch)).to(dev)
        total, confident, steps = 0.0, 0, 0
        for start in range(0, n - batch_size + 1, batch_size):  # drop_last, as SCAN
            idx = perm[start : start + batch_size]
            batch = images[idx]
            with torch.no_grad():
                weak_logits = model(weak(batch))
            loss, n_conf = confidence_cross_entropy(weak_logits, model(strong(batch)), threshold)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            confident += int(n_conf)
            steps += 1
        seen = steps * batch_size
        logs = {"loss": total / max(steps, 1), "confident": confident, "confident_fraction": confident / max(seen, 1)}
        if not math.isfinite(logs["loss"]):
            raise ConfigError(f"self-labelling diverged in epoch {epoch + 1}; lower lr")
        if confident == 0:
            log.warning("selflabel epoch %d: no sample passed the threshold %.2f (0 of %d); the loss was 0", epoch + 1, threshold, seen)
        io.append_jsonl({"epoch": epoch + 1, "train": logs}, run_out / io.METRICS)
        log.info("selflabel epoch %d/%d loss=%.4f confident=%d (%.3f)", epoch + 1, epochs, logs["loss"], confident, logs["confident_fraction"])

    record = _evaluate(model, cfg, info.n_clusters, eval_data, dev, epochs)
    record.update({
        "stage": "selflabel",
        "source_run": str(run_dir),
        "source_epoch": int(ckpt["epoch"]),
        "selflabel": {"epochs": epochs, "threshold": threshold, "batch_size": batch_size, "lr": lr,
                      "weight_decay": weight_decay, "temperature": t, "init": init, "optimizer": "adam",
                      "confident_before": n_before, "drop_last": True},
        "wall_time_s": round(time.time() - t0, 2),
    })
    io.save_checkpoint({"stage": "selflabel", "method": cfg.method, "config": cfg.to_dict(), "epoch": epochs,
                        "model": model.state_dict(), "temperature": t}, run_out / io.CHECKPOINT)
    record["checkpoint_hash"] = io.file_hash(run_out / io.CHECKPOINT)
    io.write_json(record, run_out / io.RESULTS)
    return record


@torch.no_grad()
def _count_confident(model: CosineClassifier, weak: nn.Module, images: torch.Tensor, batch: int, threshold: float) -> int:
    """How many images' weak-view max softmax exceeds the threshold (train-mode BN, as the stage
    sees them; the model's state is unchanged: BN running statistics are restored)."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    n = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        if len(x) < 2:
            continue
        logits = model(weak(x))
        with fp32(logits):
            n += int((F.softmax(full(logits), dim=1).max(dim=1).values > threshold).sum())
    model.load_state_dict(saved)
    return n


@torch.no_grad()
def _evaluate(model: CosineClassifier, cfg, n_clusters: int, eval_data, dev: torch.device, epoch: int) -> dict[str, Any]:
    model.eval()
    weak = model.features.eval_transform
    logits, feats = [], []
    for start in range(0, len(eval_data.images), cfg.eval.batch_size):
        x = weak(eval_data.images[start : start + cfg.eval.batch_size].to(dev))
        e = model.embed(x)
        feats.append(e)
        logits.append(e @ F.normalize(model.weight, dim=1).t() / model.temperature)
    probs = F.softmax(torch.cat(logits), dim=1)
    conf, labels = probs.max(dim=1)
    info = {"type": "selflabel_head_argmax", "k": probs.shape[1]}
    pred = Prediction(labels.cpu(), conf.cpu(), None, torch.cat(feats), info)
    return make_record(cfg, pred, eval_data, n_clusters, epoch, dev)


__all__ = ["CosineClassifier", "confidence_cross_entropy", "default_epochs", "max_attainable_confidence", "selflabel"]
