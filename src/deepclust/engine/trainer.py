"""The training loop shared by every method.

Device chosen automatically (``train.device`` overrides), bf16 autocast on CUDA, one seed for
everything, a progress bar, evaluation every ``train.eval_every`` epochs and at the end,
atomic checkpoints every ``train.checkpoint_every`` epochs, and exact resume: the batch order
of every epoch is drawn from a generator seeded by (seed, epoch), and the global RNG states
(which drive augmentation) are saved with each checkpoint, so a resumed run continues exactly
as an uninterrupted one would.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deepclust.config import Config, save_config
from deepclust.data import ImageData, load_dataset
from deepclust.engine import io
from deepclust.engine.device import amp_dtype, autocast, resolve_device, rng_state, seed_everything, set_rng_state
from deepclust.engine.evaluate import Prediction, add_extras, make_record, predict
from deepclust.engine.schedule import lr_factor
from deepclust.errors import CheckpointError, ConfigError, DataError, DeepClustError
from deepclust.methods import ClusteringMethod, DataInfo, create_method
from deepclust.models import auto_backbone

log = logging.getLogger(__name__)


def default_run_dir(cfg: Config) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.data.name.replace("npz:", "").replace("folder:", ""))
    return Path("runs") / f"{cfg.method}_{Path(name).stem or 'data'}_s{cfg.train.seed}"


def load_data(cfg: Config) -> tuple[ImageData, ImageData]:
    """The training and the evaluated images (the same object under train+test)."""
    d = cfg.data
    train = load_dataset(d.name, d.train_split, d.data_dir, d.image_size)
    evald = train if d.eval_split == d.train_split else load_dataset(d.name, d.eval_split, d.data_dir, d.image_size)
    if train.n_samples == 0:
        raise DataError(f"dataset '{d.name}' split '{d.train_split}' holds no images")
    return train, evald


def data_info(cfg: Config, train: ImageData, evald: ImageData) -> DataInfo:
    """Image size, channel statistics and the number of clusters, checked against the data."""
    size = cfg.data.image_size or int(train.images.shape[-1])
    c = train.n_channels
    if cfg.data.mean is None or cfg.data.std is None:
        # Statistics of the training images, on a sample to keep this cheap for big sets.
        sample = train.images[torch.randperm(train.n_samples, generator=torch.Generator().manual_seed(0))[:10000]]
        x = sample.float().div_(255).transpose(0, 1).reshape(c, -1)
        mean, std = x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()
    else:
        mean, std = list(cfg.data.mean), list(cfg.data.std)
    if len(mean) != c or len(std) != c:
        raise ConfigError(f"data.mean/std have {len(mean)} values but the images have {c} channel(s)")
    k = cfg.n_clusters
    if k is None:
        if not evald.has_labels:
            raise ConfigError("the data has no labels, so the number of clusters is unknown: pass --n-clusters K")
        k = evald.n_classes
    if k > train.n_samples:
        raise DataError(f"n_clusters={k} is larger than the number of training images ({train.n_samples}); choose fewer clusters")
    if k < 2:
        raise ConfigError(f"n_clusters must be at least 2, got {k}")
    return DataInfo(n_samples=train.n_samples, n_channels=c, image_size=size, mean=mean, std=std, n_clusters=k)


def build_optimizer(cfg: Config, method: ClusteringMethod) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = method.param_groups()
    for g in groups:
        g.setdefault("lr", o.lr)
        g["base_lr"] = g["lr"]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, weight_decay=o.weight_decay)


def resolve_auto_model(cfg: Config, info: DataInfo) -> None:
    """Replace ``auto`` backbone/stem by the concrete choice, so the saved config says it."""
    name, stem = auto_backbone(info.image_size, info.n_channels)
    if cfg.model.backbone == "auto":
        cfg.model.backbone = name
    if cfg.model.stem == "auto":
        cfg.model.stem = stem


def load_backbone(method: ClusteringMethod, source: str) -> None:
    """Initialise ``method.backbone`` from another deepclust run or checkpoint (any method)."""
    ckpt = io.load_checkpoint(source)
    prefix = "backbone."
    weights = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"'{source}' holds no backbone weights")
    own = method.backbone.state_dict()
    bad = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in weights]
    if bad or missing:
        first = (bad or missing)[0]
        raise CheckpointError(
            f"the backbone in '{source}' ({ckpt['config']['model']['backbone']}) does not match this model's "
            f"({method.cfg.model.backbone}): first mismatch at '{first}'; use the same model.backbone and stem"
        )
    method.backbone.load_state_dict(weights)
    log.info("backbone initialised from %s (%s, epoch %s)", source, ckpt["method"], ckpt.get("epoch"))


class Trainer:
    """Train ``cfg.method`` on ``cfg.data`` and write the run directory."""

    def __init__(self, cfg: Config, resume: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        self.out = Path(cfg.train.out) if cfg.train.out else default_run_dir(cfg)
        self._check_run_dir()
        seed_everything(cfg.train.seed)
        self.device = resolve_device(cfg.train.device)
        self.amp = amp_dtype(cfg.train.amp, self.device)
        self.train_data, self.eval_data = load_data(cfg)
        self.info = data_info(cfg, self.train_data, self.eval_data)
        resolve_auto_model(cfg, self.info)
        self.method = create_method(cfg, self.info)
        if cfg.model.init and not resume:
            load_backbone(self.method, cfg.model.init)
        self.method.to(self.device)
        self.optimizer = build_optimizer(cfg, self.method)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.start_epoch = 0
        if resume:
            self._load(io.load_checkpoint(self.out / io.CHECKPOINT, map_location=self.device))

    # ----- run directory and checkpoints ----------------------------------------------------
    def _check_run_dir(self) -> None:
        ckpt = self.out / io.CHECKPOINT
        if self.resume and not ckpt.is_file():
            raise CheckpointError(f"nothing to resume: no checkpoint in '{self.out}'")
        if not self.resume and (ckpt.is_file() or (self.out / io.RESULTS).is_file()):
            raise CheckpointError(
                f"'{self.out}' already holds a run; pass --resume to continue it, or choose another --out"
            )

    def _state(self, epoch: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "method": self.cfg.method,
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "data_info": dataclasses.asdict(self.info),
            **(extra or {}),
        }

    def _save(self, epoch: int, extra: dict[str, Any] | None = None) -> None:
        io.save_checkpoint(self._state(epoch, extra), self.out / io.CHECKPOINT)

    def _load(self, ckpt: dict[str, Any]) -> None:
        if ckpt["method"] != self.cfg.method:
            raise CheckpointError(
                f"the checkpoint in '{self.out}' is from method '{ckpt['method']}', not '{self.cfg.method}'"
            )
        try:
            self.method.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise CheckpointError(
                f"the checkpoint in '{self.out}' does not fit this model (different backbone, data size or options)"
            ) from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.start_epoch = int(ckpt["epoch"])
        log.info("resuming %s from epoch %d", self.out, self.start_epoch)

    # ----- evaluation ------------------------------------------------------------------------
    def evaluate(self, epoch: int) -> tuple[dict[str, Any], Prediction]:
        pred = predict(
            self.method, self.cfg, self.info.n_clusters, self.train_data, self.eval_data, self.device, self.amp
        )
        record = make_record(self.cfg, pred, self.eval_data, self.info.n_clusters, epoch, self.device)
        return add_extras(record, self.method, pred, self.eval_data), pred

    # ----- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, method, opt = self.cfg, self.method, self.optimizer
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out / io.CONFIG)
        images = self.train_data.images.to(self.device)
        n, bs, epochs = self.train_data.n_samples, cfg.train.batch_size, cfg.train.epochs
        iters = n // bs if cfg.train.drop_last else math.ceil(n / bs)
        if iters == 0:
            raise DataError(f"batch size {bs} is larger than the {n} training images with drop_last; lower train.batch_size")
        if self.start_epoch == 0:
            method.setup(images)
        t0 = time.time()
        record: dict[str, Any] | None = None
        bar = tqdm(range(self.start_epoch, epochs), desc=f"{cfg.method}", disable=not cfg.train.progress, initial=self.start_epoch, total=epochs)
        done = self.start_epoch
        boundary: dict[str, Any] | None = None
        try:
            with logging_redirect_tqdm():
                for epoch in bar:
                    logs = self._train_epoch(images, epoch, iters)
                    done = epoch + 1
                    msg = " ".join(f"{k}={v:.4f}" for k, v in logs.items())
                    log.info("epoch %d/%d %s", done, epochs, msg)
                    bar.set_postfix_str(msg)
                    if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < epochs:
                        record, _ = self.evaluate(done)
                        io.append_jsonl({**_short(record), "train": logs}, self.out / io.METRICS)
                        log.info("epoch %d: %s", done, _fmt(record))
                    if done % cfg.train.checkpoint_every == 0 or done == epochs:
                        self._save(done)
                        boundary = None
                    else:
                        # Keep the epoch-boundary state in host memory, so that Ctrl-C during the
                        # next epoch saves a checkpoint that resumes exactly (not a half epoch).
                        boundary = _to_cpu(self._state(done))
        except KeyboardInterrupt:
            if boundary is not None:
                io.save_checkpoint(boundary, self.out / io.CHECKPOINT)
            raise DeepClustError(
                f"interrupted during epoch {done + 1}; the checkpoint of epoch {_saved_epoch(self.out)} is in "
                f"'{self.out}': continue with 'deepclust resume {self.out}'"
            ) from None
        record, pred = self.evaluate(done)
        record["wall_time_s"] = round(time.time() - t0, 2)
        record["train_images_per_s"] = round((done - self.start_epoch) * n / max(record["wall_time_s"], 1e-9), 1)
        io.append_jsonl(_short(record), self.out / io.METRICS)
        self._save(done, {"centers": pred.centers, "n_clusters": self.info.n_clusters})
        record["checkpoint_hash"] = io.file_hash(self.out / io.CHECKPOINT)
        io.write_json(record, self.out / io.RESULTS)
        log.info("done: %s -> %s", _fmt(record), self.out)
        return record

    def _train_epoch(self, images: torch.Tensor, epoch: int, iters: int) -> dict[str, float]:
        cfg, method, opt = self.cfg, self.method, self.optimizer
        n, bs = len(images), cfg.train.batch_size
        method.train()
        method.on_epoch_start(epoch)
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g).to(self.device)
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        for it in range(iters):
            idx = perm[it * bs : (it + 1) * bs]
            if len(idx) < 2:  # BatchNorm cannot train on one sample
                continue
            f = method.lr_scale(epoch, it, iters, lr_factor(cfg.optim, epoch, it, iters, cfg.train.epochs))
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * (f if group.get("scheduled", True) else 1.0)
            with autocast(self.device, self.amp):
                out = method.training_step(images[idx], idx, epoch)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
            method.after_optimizer_step(out)
            # Accumulate on the device: no host synchronisation inside the step.
            for k, v in {"loss": out.loss.detach(), **out.logs}.items():
                sums[k] = sums.get(k, 0) + v.float()
            steps += 1
        logs = {k: float(v) / max(steps, 1) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in logs.values()):
            raise DeepClustError(
                f"the loss became {logs.get('loss')} in epoch {epoch + 1}; lower optim.lr or use train.amp=off "
                f"(the last good checkpoint stays in '{self.out}')"
            )
        return logs


def _to_cpu(state: Any) -> Any:
    """A deep copy of a (nested) state with every tensor cloned to host memory."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return copy.deepcopy(state)


def _saved_epoch(out: Path) -> int | str:
    try:
        return int(torch.load(out / io.CHECKPOINT, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # noqa: BLE001
        return "none"


def _short(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("epoch", "acc", "nmi", "ari", "protocol", "split", "cluster_sizes")
    return {k: record[k] for k in keys if k in record}


def _fmt(record: dict[str, Any]) -> str:
    if "acc" in record:
        return f"ACC {record['acc']:.4f} NMI {record['nmi']:.4f} ARI {record['ari']:.4f}"
    return f"{record['n_clusters']} clusters (no labels to score)"


def train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate; returns the final result record."""
    return Trainer(cfg, resume=resume).fit()
