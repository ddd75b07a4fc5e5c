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

The engine runs the stage (:class:`SelfLabelTrainer`, a :class:`~deepclust.engine.trainer.Trainer`
whose method is :class:`CosineClassifier`), so it has training's autocast, checkpoints every
``train.checkpoint_every`` epochs, exact resume (``--resume``), Ctrl-C handling and torchrun
(the confidence loss sees the global batch: weak and strong logits are gathered, and the strong
ones carry gradient). Its config is the run's with the stage's settings: ``optim`` Adam at a
constant rate, ``train.batch_size``, ``train.drop_last`` on, no periodic evaluation. The stage
trains on the run's training split and scores its evaluation split; it writes
``RUN_DIR/selflabel/`` (config.yaml of the stage, metrics.jsonl, results.json, checkpoint.pt;
every checkpoint is marked ``"stage": "selflabel"``, so ``predict`` and ``resume`` refuse it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from deepclust.augment import StrongAugment
from deepclust.config import Config
from deepclust.data import ImageData, load_dataset
from deepclust.data.stream import LazyImages
from deepclust.engine import io
from deepclust.engine.evaluate import Prediction, infer_images
from deepclust.engine.process_group import close_distributed
from deepclust.engine.setup import setup_distributed
from deepclust.engine.trainer import Trainer
from deepclust.errors import CheckpointError, ConfigError, DeepClustError
from deepclust.methods import ClusteringMethod, DataInfo, StepOutput
from deepclust.precision import fp32, full
from deepclust.saved_run import load_run

log = logging.getLogger(__name__)

#: the ``"stage"`` mark of a self-labelling checkpoint
STAGE = "selflabel"


def confidence_cross_entropy(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float = 0.99
) -> tuple[torch.Tensor, torch.Tensor]:
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


class CosineClassifier(ClusteringMethod):
    """logits = normalize(features(x)) normalize(W)^T / temperature, trained by
    :func:`confidence_cross_entropy` between the weak view (the eval transform, no gradient) and
    a strong view (:class:`StrongAugment`) of each batch. ``features``: the run's method (its
    ``forward``); ``cfg``/``info``: the stage's config and the run's data. The classifier's
    logits and softmax run in float32 with autocast off."""

    prediction = "head_argmax"

    def __init__(
        self,
        cfg: Config,
        info: DataInfo,
        features: ClusteringMethod,
        weight: torch.Tensor,
        temperature: float,
        threshold: float,
    ) -> None:
        super().__init__(dataclasses.replace(cfg, method_args={}), info)
        self.features = features
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.strong = StrongAugment(info.image_size, info.mean, info.std)

    @property
    def backbone(self) -> nn.Module:  # type: ignore[override]
        """The run's backbone: what the fast paths (channels-last, compile) apply to."""
        return self.features.backbone

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if not isinstance(f, torch.Tensor) or f.ndim != 2:
            raise ConfigError("self-labelling needs a method whose forward(x) returns (B, D) features")
        return F.normalize(f.float(), dim=1)

    def logits(self, e: torch.Tensor) -> torch.Tensor:
        with fp32(e):  # cosines / 0.1 against a 0.99 threshold: not in bf16
            return e @ F.normalize(self.weight.float(), dim=1).t() / self.temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.embed(x))

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> StepOutput:
        with torch.no_grad():  # pseudo-labels: no gradient through the weak view
            weak = self.dist.gather(self(self.eval_transform(images)))
        strong = self.dist.gather_with_grad(self(self.strong(images)))
        loss, n_conf = confidence_cross_entropy(weak, strong, self.threshold)
        n = n_conf.float()
        return StepOutput(loss, {"confident": n, "confident_fraction": n / weak.shape[0]})

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        e = self.embed(x)
        logits = self.logits(e)
        with fp32(logits):
            return e, F.softmax(logits, dim=1)


def _initial_classifier(
    method: ClusteringMethod, ckpt: dict[str, Any], images: torch.Tensor | LazyImages, batch: int, device: torch.device
) -> tuple[torch.Tensor, float | None, str]:
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
        raise CheckpointError(
            "the checkpoint holds no k-means centres; self-label from a finished run (its final checkpoint)"
        )
    return torch.as_tensor(centers).to(device), None, "k-means centres of the run"


#: default temperature of the cosine classifier (reaches 0.99 for K up to about 10^7)
DEFAULT_TEMPERATURE = 0.1


class SelfLabelTrainer(Trainer):
    """The engine's trainer with :class:`CosineClassifier` on top of a finished run as its method.

    ``source``: :func:`deepclust.saved_run.load_run` of the run (its method on the CPU);
    ``settings``: the stage's settings (threshold, temperature or None for the default, and on
    a resume everything the first start recorded)."""

    def __init__(
        self,
        cfg: Config,
        source: tuple[Any, ...],
        run_dir: str | Path,
        settings: dict[str, Any],
        data: tuple[ImageData, ImageData],
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.source, self.source_dir, self.settings = source, str(run_dir), dict(settings)
        super().__init__(cfg, resume=resume, data=data, overwrite=overwrite)

    def build_method(self, cfg: Config, resume: bool) -> tuple[ClusteringMethod, dict[str, str] | None]:
        src_cfg, method, info, ckpt, _ = self.source
        st, dev = self.settings, self.device
        method.to(dev)
        w, t_default, init = _initial_classifier(method, ckpt, self.train_data.images, src_cfg.eval.batch_size, dev)
        t = (
            st["temperature"]
            if st.get("temperature") is not None
            else (t_default if t_default is not None else DEFAULT_TEMPERATURE)
        )
        k, threshold = int(w.shape[0]), float(st["threshold"])
        reach = max_attainable_confidence(k, t)
        if reach <= threshold:
            raise ConfigError(
                f"at temperature {t:g} no sample can pass the threshold {threshold:g} (with {k} unit-norm centres the "
                f"softmax never exceeds {reach:.3f}); lower --temperature (e.g. {DEFAULT_TEMPERATURE:g})"
            )
        model = CosineClassifier(cfg, info, method, w, t, threshold).to(dev)
        st.update(temperature=t, init=init)
        if not resume:
            n_before = _count_confident(model, self.train_data.images, cfg.train.batch_size, threshold, dev)
            if n_before == 0:
                raise ConfigError(
                    f"no training image's weak-view confidence exceeds {threshold:g} at temperature {t:g}: "
                    "self-labelling would train on nothing; lower --temperature or --threshold"
                )
            log.info(
                "selflabel: %d of %d images pass %.2f at temperature %g before training",
                n_before,
                self.train_data.n_samples,
                threshold,
                t,
            )
            st["confident_before"] = n_before
        setup_distributed(model, cfg, self.dist)
        return model, None

    def checkpoint_tags(self) -> dict[str, Any]:
        _, _, _, ckpt, _ = self.source
        return {
            "stage": STAGE,
            "temperature": self.settings["temperature"],
            "selflabel": dict(self.settings),
            "source_run": self.source_dir,
            "source_epoch": int(ckpt["epoch"]),
        }

    def _train_epoch(self, images: torch.Tensor, epoch: int, iters: int) -> dict[str, float]:
        logs = super()._train_epoch(images, epoch, iters)
        # every step sees a full batch (drop_last): the epoch's count is the mean times the steps
        logs["confident"] = float(round(logs.get("confident", 0.0) * iters))
        if logs["confident"] == 0:
            log.warning(
                "selflabel epoch %d: no sample passed the threshold %.2f; the loss was 0",
                epoch + 1,
                self.settings["threshold"],
            )
        return logs

    def _interrupted(self, when: str) -> DeepClustError:
        if self.saved_epoch is None:
            return super()._interrupted(when)
        return DeepClustError(
            f"interrupted {when}; the checkpoint of epoch {self.saved_epoch} is in '{self.out}': "
            f"continue with 'deepclust selflabel {self.source_dir} --out {self.out} --resume'"
        )

    def evaluate(self, epoch: int) -> tuple[dict[str, Any] | None, Prediction | None]:
        record, pred = super().evaluate(epoch)
        if record is None or pred is None:
            return record, pred
        pred.info["type"] = "selflabel_head_argmax"
        tags = self.checkpoint_tags()
        record.update(
            {
                "stage": STAGE,
                "source_run": tags["source_run"],
                "source_epoch": tags["source_epoch"],
                "selflabel": {
                    **tags["selflabel"],
                    "epochs": self.cfg.train.epochs,
                    "batch_size": self.cfg.train.batch_size,
                    "lr": self.cfg.optim.lr,
                    "weight_decay": self.cfg.optim.weight_decay,
                    "optimizer": self.cfg.optim.name,
                    "drop_last": True,
                },
            }
        )
        record["prediction"] = pred.info
        return record, pred


def stage_config(
    cfg: Config,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    out: Path,
    device: str,
    seed: int,
    progress: bool,
) -> Config:
    """The run's config with the stage's settings: Adam at a constant rate, full batches only, no
    periodic evaluation, no ``model.init`` (the weights come from the run)."""
    train = dataclasses.replace(
        cfg.train,
        epochs=epochs,
        batch_size=batch_size,
        drop_last=True,
        out=str(out),
        device=device,
        seed=seed,
        progress=progress,
        eval_every=0,
    )
    optim = dataclasses.replace(
        cfg.optim, name="adam", lr=lr, weight_decay=weight_decay, schedule="constant", warmup_epochs=0
    )
    return dataclasses.replace(cfg, train=train, optim=optim, model=dataclasses.replace(cfg.model, init=None))


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
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune a finished run by self-labelling and score it; returns the result record
    (under torchrun: rank 0's, on every process).

    ``epochs`` None: :func:`default_epochs` of the run's dataset (100 STL-10, 200 otherwise).
    ``temperature`` None: min(``temperature_w``, 0.1) for SeCu runs, else 0.1 (it decides which
    samples pass the threshold). ``out`` None: ``RUN_DIR/selflabel``. ``seed`` None: the run's.
    ``resume``: continue the stage in ``out`` from its checkpoint, with the settings it started
    with (``epochs`` may extend it); ``overwrite``: start again in an ``out`` that holds a stage.
    Every epoch's line in ``metrics.jsonl`` records ``confident`` (samples above the threshold)
    and ``confident_fraction``; an epoch that selects none logs a warning.
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if (epochs is not None and epochs < 1) or batch_size < 2:
        raise ConfigError("epochs must be >= 1 and batch_size >= 2")
    source = load_run(run_dir, "cpu")  # the trainer moves it to this process's device
    cfg, _, info, _, _ = source
    if info.n_features:  # its strong view is an image augmentation (RandAugment, Cutout)
        raise ConfigError(
            f"'{run_dir}' clusters feature vectors: self-labelling trains on strong image augmentations and "
            "applies to runs on images only"
        )
    run_out = Path(out) if out is not None else Path(run_dir) / "selflabel"
    settings: dict[str, Any] = {"threshold": threshold, "temperature": temperature}
    if resume and (run_out / io.CHECKPOINT).is_file():
        stage = io.load_checkpoint(run_out / io.CHECKPOINT, map_location="cpu")
        if stage.get("stage") == STAGE:  # the settings it started with; the trainer refuses anything else
            settings = dict(stage["selflabel"])
            saved = stage["config"]
            epochs = epochs or int(saved["train"]["epochs"])
            batch_size, seed = int(saved["train"]["batch_size"]), int(saved["train"]["seed"])
            lr, weight_decay = float(saved["optim"]["lr"]), float(saved["optim"]["weight_decay"])
    if epochs is None:
        epochs = default_epochs(cfg.data.name)
    d = cfg.data
    train_data = load_dataset(d.name, d.train_split, d.data_dir, d.image_size)
    eval_data = (
        train_data if d.eval_split == d.train_split else load_dataset(d.name, d.eval_split, d.data_dir, d.image_size)
    )
    # SCAN drops the last partial batch; a training set smaller than one batch is one batch.
    batch_size = min(batch_size, train_data.n_samples)
    stage_cfg = stage_config(
        cfg, epochs, batch_size, lr, weight_decay, run_out, device, cfg.train.seed if seed is None else seed, progress
    )
    trainer = SelfLabelTrainer(stage_cfg, source, run_dir, settings, (train_data, eval_data), resume, overwrite)
    try:
        return trainer.fit()
    finally:
        close_distributed(trainer.dist)


@torch.no_grad()
def _count_confident(
    model: CosineClassifier, images: torch.Tensor | LazyImages, batch: int, threshold: float, device: torch.device
) -> int:
    """How many images' weak-view max softmax exceeds the threshold (train-mode BN, as the stage
    sees them; the model's state is unchanged: BN running statistics are restored)."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    n = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device)
        if len(x) < 2:
            continue
        logits = model(model.eval_transform(x))
        with fp32(logits):
            n += int((F.softmax(full(logits), dim=1).max(dim=1).values > threshold).sum())
    model.load_state_dict(saved)
    return n


__all__ = [
    "CosineClassifier",
    "SelfLabelTrainer",
    "confidence_cross_entropy",
    "default_epochs",
    "max_attainable_confidence",
    "selflabel",
    "stage_config",
]
