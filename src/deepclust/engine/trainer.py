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

from deepclust.config import Config, config_yaml
from deepclust.config_rules import validate
from deepclust.data import ImageData, StreamData, open_dataset
from deepclust.data.base import FeatureData
from deepclust.data.crops import ViewSpec
from deepclust.engine import io, rundir
from deepclust.engine.device import amp_dtype, autocast, resolve_device, rng_state, seed_everything, set_rng_state
from deepclust.engine.distributed import (
    average_batchnorm_stats,
    average_gradients,
    broadcast_state,
    close_distributed,
    convert_sync_batchnorm,
    init_distributed,
)
from deepclust.engine.fastpath import apply_fast_paths, make_optimizer
from deepclust.engine.lars import LARS
from deepclust.engine.loader import BatchStream
from deepclust.engine.stream_loader import StreamLoader
from deepclust.engine.evaluate import Prediction, add_extras, make_record, predict
from deepclust.engine.schedule import lr_factor
from deepclust.errors import CheckpointError, ConfigError, DataError, DeepClustError
from deepclust.methods import ClusteringMethod, DataInfo, create_method
from deepclust.models import auto_backbone
from deepclust.models.init import check_source, init_backbone

log = logging.getLogger(__name__)


def default_run_dir(cfg: Config) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.data.name.replace("npz:", "").replace("folder:", ""))
    return Path("runs") / f"{cfg.method}_{Path(name).stem or 'data'}_s{cfg.train.seed}"


def open_split(cfg: Config, split: str) -> ImageData | StreamData:
    """One split of ``cfg.data``: in memory at its stored size, or streamed (data/open.py)."""
    d = cfg.data
    return open_dataset(
        d.name, split, d.data_dir, d.image_size, stored_size=d.stored_size, stream=d.stream,
        memory_budget_gb=d.memory_budget_gb, eval_crop=d.eval_crop, decoder=d.decoder, workers=d.workers,
    )


def load_data(
    cfg: Config, data: ImageData | tuple[ImageData, ImageData] | None = None
) -> tuple[ImageData | StreamData, ImageData | StreamData]:
    """The training and the evaluated images (the same object under train+test).

    ``data``: in-memory data from the caller (e.g. the estimator) used instead of reading
    ``cfg.data.name``: one :class:`ImageData` / :class:`FeatureData` (trained and evaluated)
    or a (train, eval) pair. ``cfg.data.name`` then only names the data in the records.
    """
    d = cfg.data
    if data is not None:
        train, evald = (data, data) if isinstance(data, ImageData) else data
        if not (isinstance(train, ImageData) and isinstance(evald, ImageData)):
            raise DataError("in-memory data must be an ImageData or FeatureData, or a (train, eval) pair of them")
    else:
        train = open_split(cfg, d.train_split)
        evald = train if d.eval_split == d.train_split else open_split(cfg, d.eval_split)
    if train.n_samples == 0:
        raise DataError(f"dataset '{d.name}' split '{d.train_split}' holds no images")
    return train, evald


def data_info(cfg: Config, train: ImageData, evald: ImageData) -> DataInfo:
    """Image size, channel statistics and the number of clusters, checked against the data."""
    if isinstance(train, FeatureData) or isinstance(evald, FeatureData):
        return _feature_info(cfg, train, evald)
    size = cfg.data.image_size or int(train.images.shape[-1])
    c = train.n_channels
    if isinstance(train, StreamData) and (cfg.data.mean is None or cfg.data.std is None):
        mean, std = train.channel_stats(seed=cfg.train.seed)  # a seeded sample of files, decoded
    elif cfg.data.mean is None or cfg.data.std is None:
        # Statistics of the training images, on a sample to keep this cheap for big sets.
        sample = train.images[torch.randperm(train.n_samples, generator=torch.Generator().manual_seed(0))[:10000]]
        x = sample.float().div_(255).transpose(0, 1).reshape(c, -1)
        mean, std = x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()
    else:
        mean, std = list(cfg.data.mean), list(cfg.data.std)
    if len(mean) != c or len(std) != c:
        raise ConfigError(f"data.mean/std have {len(mean)} values but the images have {c} channel(s)")
    k = _n_clusters(cfg, train, evald)
    return DataInfo(n_samples=train.n_samples, n_channels=c, image_size=size, mean=mean, std=std, n_clusters=k)


def _feature_info(cfg: Config, train: ImageData, evald: ImageData) -> DataInfo:
    """Feature mode: per-dimension mean/std of the training features (``data.mean``/``std``
    override them with D values each). The std is floored at 1% of its mean over dimensions,
    so near-constant dimensions are not blown up into noise."""
    if not (isinstance(train, FeatureData) and isinstance(evald, FeatureData)) or train.n_features != evald.n_features:
        raise DataError("the trained and the evaluated data must both be feature vectors of the same length D")
    dim = train.n_features
    if cfg.data.mean is None or cfg.data.std is None:
        sample = train.images[torch.randperm(train.n_samples, generator=torch.Generator().manual_seed(0))[:10000]]
        x = sample.double()
        std = x.std(0) if len(x) > 1 else torch.ones(dim, dtype=torch.float64)
        mean, std = x.mean(0).tolist(), std.clamp_min(max(1e-2 * float(std.mean()), 1e-6)).tolist()
    else:
        mean, std = list(cfg.data.mean), list(cfg.data.std)
    if len(mean) != dim or len(std) != dim:
        raise ConfigError(f"data.mean/std have {len(mean)} values but the feature vectors have {dim} dimensions")
    k = _n_clusters(cfg, train, evald)
    return DataInfo(
        n_samples=train.n_samples, n_channels=1, image_size=1, mean=[0.0], std=[1.0], n_clusters=k,
        n_features=dim, feature_mean=mean, feature_std=std,
    )


def _n_clusters(cfg: Config, train: ImageData, evald: ImageData) -> int:
    """``cfg.n_clusters``, or the number of classes of the evaluated data; checked against N."""
    k = cfg.n_clusters
    if k is None:
        if not evald.has_labels:
            raise ConfigError("the data has no labels, so the number of clusters is unknown: pass --n-clusters K")
        k = evald.n_classes
    if k > train.n_samples:
        raise DataError(f"n_clusters={k} is larger than the number of training images ({train.n_samples}); choose fewer clusters")
    if k < 2:
        raise ConfigError(f"n_clusters must be at least 2, got {k}")
    return k


def build_optimizer(cfg: Config, method: ClusteringMethod, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The configured optimiser over ``method.param_groups()``, fused where ``optim.fused`` allows
    (``device``: where the parameters live; default: that of the first parameter)."""
    o = cfg.optim
    groups = method.param_groups()
    for g in groups:
        g.setdefault("lr", o.lr)
        g["base_lr"] = g["lr"]
    if device is None:
        device = next((p.device for g in groups for p in g["params"]), torch.device("cpu"))
    if o.name == "sgd":
        kwargs = {"momentum": o.momentum, "weight_decay": o.weight_decay, "nesterov": o.nesterov}
        return make_optimizer("sgd", groups, device, o.fused, lr=o.lr, **kwargs)
    if o.name == "lars":  # no fused kernel: optim.fused=true fails in apply_fast_paths
        return LARS(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, trust_coefficient=o.trust_coefficient)
    return make_optimizer(o.name, groups, device, o.fused, lr=o.lr, weight_decay=o.weight_decay)


def resolve_auto_model(cfg: Config, info: DataInfo) -> None:
    """Replace ``auto`` backbone/stem by the concrete choice, so the saved config says it."""
    name, stem = auto_backbone(info.image_size, info.n_channels, info.n_features)
    if cfg.model.backbone == "auto":
        cfg.model.backbone = name
    if cfg.model.stem == "auto":
        cfg.model.stem = stem


class Trainer:
    """Train ``cfg.method`` on ``cfg.data`` and write the run directory."""

    def __init__(
        self, cfg: Config, resume: bool = False, data: ImageData | tuple[ImageData, ImageData] | None = None,
        overwrite: bool = False,
    ) -> None:
        validate(cfg)  # a hand-built Config too: before any data is read
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite and not resume  # --overwrite: start again in a directory that holds a run
        self.saved_epoch: int | None = None  # the epoch of the checkpoint in the run directory
        self.last_logs: dict[str, float] = {}  # the training logs of the last finished epoch
        self.out = Path(cfg.train.out) if cfg.train.out else default_run_dir(cfg)
        self._check_run_dir()
        if cfg.model.init and not resume:
            check_source(cfg.model.init)  # a missing file fails now, not after loading the data
        seed_everything(cfg.train.seed)
        # torchrun: join the process group; the device becomes cuda:LOCAL_RANK (no-op otherwise)
        self.dist, self.device = init_distributed(resolve_device(cfg.train.device))
        self.amp = amp_dtype(cfg.train.amp, self.device)
        self.train_data, self.eval_data = load_data(cfg, data)  # data: in-memory, instead of cfg.data.name
        self.info = data_info(cfg, self.train_data, self.eval_data)
        resolve_auto_model(cfg, self.info)
        self.method = create_method(cfg, self.info)
        # Where the initial weights came from (results.json, checkpoints); on resume: the checkpoint's.
        self.init_record: dict[str, str] | None = None
        if cfg.model.init and not resume:
            self.init_record = init_backbone(self.method.backbone, cfg.model.init, cfg.model.backbone, cfg.model.stem)
        self.method.to(self.device)
        self._setup_distributed()  # before the fast paths: SyncBatchNorm goes in before torch.compile
        streamed = isinstance(self.train_data, StreamData)  # only the file list is in memory
        self.fast = apply_fast_paths(self.method, cfg, self.device, self.train_data.n_samples,
                                     0 if streamed else self.train_data.images.nbytes)
        self.optimizer = build_optimizer(cfg, self.method)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.start_epoch = 0
        # The final evaluation's prediction (features, labels, centres), for callers that need
        # more than the record; None before fit() ends and on torchrun ranks other than 0.
        self.prediction: Prediction | None = None
        # on the CPU: load_state_dict copies onto this run's device, whichever wrote it (resume --device)
        ckpt = io.load_checkpoint(self.out / io.CHECKPOINT, map_location="cpu") if resume else None
        if ckpt is not None:
            self._load(ckpt)
        self._seed_rank(ckpt)

    # ----- torchrun ------------------------------------------------------------------------------
    def _setup_distributed(self) -> None:
        """Under torchrun: check the global batch splits evenly, optionally synchronise
        BatchNorm and give the method its gather handle."""
        d, cfg = self.dist, self.cfg
        if not d.enabled:
            return
        bs = cfg.train.batch_size
        if bs % d.world:
            raise ConfigError(
                f"train.batch_size={bs} is the global batch and must split evenly over the {d.world} processes; "
                f"use a multiple of {d.world}"
            )
        if cfg.train.sync_bn:
            convert_sync_batchnorm(self.method, d)
        self.method.dist = d
        log.info("distributed: %d processes (%s), global batch %d = %d per process, sync_bn=%s",
                 d.world, d.backend, bs, bs // d.world, cfg.train.sync_bn)

    def _seed_rank(self, ckpt: dict[str, Any] | None) -> None:
        """Under torchrun every process draws its own augmentations: its stream from the
        checkpoint when it was written by as many processes, else one derived from the seed, the
        rank and the epoch (rank 0 keeps the single-process stream)."""
        d = self.dist
        if not d.enabled:
            return
        states = (ckpt or {}).get("rng_ranks")
        if states is not None and len(states) == d.world:
            set_rng_state(states[d.rank])
        elif d.rank > 0:
            seed_everything(self.cfg.train.seed * 1_000_003 + 7919 * d.rank + 104_729 * self.start_epoch)

    # ----- run directory and checkpoints ----------------------------------------------------
    def _check_run_dir(self) -> None:
        rundir.check(self.out, resume=self.resume, overwrite=self.overwrite)

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
            "train_logs": dict(self.last_logs),  # the metrics line of this epoch, if a resume must write it again
            "init": self.init_record,
            **(extra or {}),
        }

    def _save(self, epoch: int, extra: dict[str, Any] | None = None) -> None:
        """Rank 0 writes the checkpoint. Under torchrun every process calls this: the RNG states
        of all processes are stored too, so a resume with as many processes is exact; the rest
        of the state is replicated, so any number of processes can resume it."""
        d = self.dist
        rngs = d.gather_object(rng_state()) if d.enabled else None
        if not d.is_main:
            return
        if rngs is not None:
            extra = {**(extra or {}), "rng_ranks": rngs, "world_size": d.world}
        io.save_checkpoint(self._state(epoch, extra), self.out / io.CHECKPOINT)
        self.saved_epoch = epoch

    def _load(self, ckpt: dict[str, Any]) -> None:
        if ckpt["method"] != self.cfg.method:
            raise CheckpointError(
                f"the checkpoint in '{self.out}' is from method '{ckpt['method']}', not '{self.cfg.method}'; "
                f"resume it with method={ckpt['method']}, or train a new run with another --out"
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
        self.init_record = ckpt.get("init")
        self.start_epoch = self.saved_epoch = int(ckpt["epoch"])
        self.last_logs = dict(ckpt.get("train_logs") or {})
        if self.start_epoch > self.cfg.train.epochs:
            raise ConfigError(
                f"'{self.out}' has already trained {self.start_epoch} epochs, more than train.epochs={self.cfg.train.epochs}; "
                f"resume with train.epochs={self.start_epoch} or more (or train a new run with another --out)"
            )
        log.info("resuming %s from epoch %d", self.out, self.start_epoch)

    # ----- evaluation ------------------------------------------------------------------------
    def evaluate(self, epoch: int) -> tuple[dict[str, Any] | None, Prediction | None]:
        """The result record and prediction. Under torchrun every process infers its shard of the
        images and rank 0 clusters and scores them; the other processes get (None, None)."""
        pred = predict(
            self.method, self.cfg, self.info.n_clusters, self.train_data, self.eval_data, self.device, self.amp,
            dist=self.dist,
        )
        if pred is None:
            return None, None
        record = make_record(self.cfg, pred, self.eval_data, self.info.n_clusters, epoch, self.device)
        if self.dist.enabled:
            record["distributed"] = {"world_size": self.dist.world, "backend": self.dist.backend, "sync_bn": self.cfg.train.sync_bn}
        return add_extras(record, self.method, pred, self.eval_data), pred

    def place_data(self) -> Any:
        """The training images where the loop reads them, and ``self.stream`` (None: resident):
        streamed from disk (engine/stream_loader.py), resident on the device, or gathered from
        host memory (engine/loader.py). Returns what :meth:`ClusteringMethod.setup` sees."""
        cfg, method = self.cfg, self.method
        if isinstance(self.train_data, StreamData):  # decoded from disk by workers (engine/stream_loader.py)
            images = self.train_data.view(ViewSpec("plain"))  # what setup() sees: the whole images, resized
            self.stream = StreamLoader(self.train_data, method.stream_views(), self.device, cfg.train.seed,
                                       workers=cfg.data.workers, gpu_decode=cfg.data.gpu_decode)
        elif self.fast.data_on_device:
            images, self.stream = self.train_data.images.to(self.device), None
        else:  # too big for the device: batches stream from host memory (engine/loader.py)
            images = self.train_data.images
            self.stream = BatchStream(images, self.device, max(1, cfg.train.batch_size // self.dist.world))
        return images

    # ----- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, method, main = self.cfg, self.method, self.dist.is_main
        if main:  # under torchrun only rank 0 writes the run directory
            self.out.mkdir(parents=True, exist_ok=True)
            if self.overwrite:
                rundir.clear(self.out)
            if self.resume:  # the lines of epochs after the checkpoint belong to a run that died
                rundir.truncate_metrics(self.out, self.start_epoch)
            io.write_text(config_yaml(self.cfg), self.out / io.CONFIG)
        images = self.place_data()
        n, bs, epochs = self.train_data.n_samples, cfg.train.batch_size, cfg.train.epochs
        iters = n // bs if cfg.train.drop_last else math.ceil(n / bs)
        if iters == 0:
            raise DataError(f"batch size {bs} is larger than the {n} training images with drop_last; lower train.batch_size")
        if self.start_epoch == 0:
            method.setup(images)
        broadcast_state(method, self.dist)  # torchrun: one model on every process (no-op otherwise)
        t0 = time.time()
        record: dict[str, Any] | None = None
        bar = tqdm(range(self.start_epoch, epochs), desc=f"{cfg.method}", disable=not (cfg.train.progress and main), initial=self.start_epoch, total=epochs)
        done = self.start_epoch
        boundary: dict[str, Any] | None = None
        logs: dict[str, float] = dict(self.last_logs)
        try:
            with logging_redirect_tqdm():
                for epoch in bar:
                    logs = self._train_epoch(images, epoch, iters)
                    self.last_logs = logs
                    done = epoch + 1
                    msg = " ".join(f"{k}={v:.4f}" for k, v in logs.items())
                    log.info("epoch %d/%d %s", done, epochs, msg)
                    bar.set_postfix_str(msg)
                    if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < epochs:
                        record, _ = self.evaluate(done)
                        if record is not None:
                            rundir.log_metrics(self.out, {**_short(record), "train": logs})
                            log.info("epoch %d: %s", done, _fmt(record))
                    elif main and done < epochs:  # training curves: one line per epoch
                        rundir.log_metrics(self.out, {"epoch": done, "train": logs})
                    if done % cfg.train.checkpoint_every == 0 or done == epochs:
                        self._save(done)
                        boundary = None
                    elif main:
                        # Keep the epoch-boundary state in host memory, so that Ctrl-C during the
                        # next epoch saves a checkpoint that resumes exactly (not a half epoch).
                        boundary = _to_cpu(self._state(done))
        except KeyboardInterrupt:
            if boundary is not None and main:
                io.save_checkpoint(boundary, self.out / io.CHECKPOINT)
                self.saved_epoch = int(boundary["epoch"])
            raise self._interrupted(f"during epoch {done + 1}") from None
        try:
            record, pred = self.evaluate(done)
        except KeyboardInterrupt:
            raise self._interrupted("during the final evaluation") from None
        self.prediction = pred
        if record is not None and pred is not None:
            record["wall_time_s"] = round(time.time() - t0, 2)
            record["train_images_per_s"] = round((done - self.start_epoch) * n / max(record["wall_time_s"], 1e-9), 1)
            rundir.log_metrics(self.out, {**_short(record), **({"train": logs} if logs else {})})
        self._save(done, {"centers": pred.centers, "n_clusters": self.info.n_clusters} if pred is not None else None)
        if record is not None:
            record["checkpoint_hash"] = io.file_hash(self.out / io.CHECKPOINT)
            record["init"] = self.init_record
            io.write_json(record, self.out / io.RESULTS)
            log.info("done: %s -> %s", _fmt(record), self.out)
        return self.dist.broadcast_object(record)  # every process returns rank 0's record

    def _interrupted(self, when: str) -> DeepClustError:
        """The Ctrl-C line: where the last checkpoint is, or that nothing was saved."""
        if self.saved_epoch is None:
            if self.dist.is_main and not self.resume:
                rundir.forget_unsaved(self.out)
            return DeepClustError(
                f"interrupted {when}, before the first checkpoint: nothing was saved; "
                "start again with the same 'deepclust train' command"
            )
        return DeepClustError(
            f"interrupted {when}; the checkpoint of epoch {self.saved_epoch} is in '{self.out}': "
            f"continue with 'deepclust resume {self.out}'"
        )

    def _train_epoch(self, images: torch.Tensor, epoch: int, iters: int) -> dict[str, float]:
        cfg, method, opt, d = self.cfg, self.method, self.optimizer, self.dist
        n, bs = len(images), cfg.train.batch_size
        params = [p for p in method.parameters() if p.requires_grad]
        # Under torchrun each process takes its rows of every global batch; BatchNorm needs two
        # rows per process unless it is synchronised (a too-small last batch is skipped by all).
        min_rows = 1 if cfg.train.sync_bn else 2
        method.train()
        method.on_epoch_start(epoch)
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        stream = getattr(self, "stream", None)
        perm = torch.randperm(n, generator=g).to(images.device if stream is not None else self.device)
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        # The plan of the epoch: (step, global batch size, this process's indices).
        plan: list[tuple[int, int, torch.Tensor]] = []
        for it in range(iters):
            idx = perm[it * bs : (it + 1) * bs]
            if len(idx) < 2:  # BatchNorm cannot train on one sample
                continue
            if d.enabled:
                rows = d.split(len(idx))
                if min(d.batch_sizes or [0]) < min_rows:
                    log.debug("skipping a last batch of %d images: too few for %d processes", len(idx), d.world)
                    continue
                idx = idx[rows]
            plan.append((it, len(perm[it * bs : (it + 1) * bs]), idx))
        if isinstance(stream, StreamLoader):
            stream.set_epoch(epoch)  # crops of this epoch: per-sample generators of (seed, epoch, index)
        batches = stream.batches_of([p[2] for p in plan]) if stream is not None else ((images[p[2]], p[2]) for p in plan)
        for (it, n_global, _), (batch, idx) in zip(plan, batches):
            if d.enabled:
                d.split(n_global)  # sets d.loss_weight / batch sizes for this step (uneven last batch)
            f = method.lr_scale(epoch, it, iters, lr_factor(cfg.optim, epoch, it, iters, cfg.train.epochs))
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * (f if group.get("scheduled", True) else 1.0)
            with autocast(self.device, self.amp):
                out = method.training_step(batch, idx, epoch)
            loss = out.loss if d.loss_weight == 1.0 else out.loss * d.loss_weight
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            average_gradients(params, d)  # torchrun: the mean over the processes, as DDP (no-op otherwise)
            self.scaler.step(opt)
            self.scaler.update()
            method.after_optimizer_step(out)
            # Accumulate on the device: no host synchronisation inside the step.
            for k, v in {"loss": out.loss.detach(), **out.logs}.items():
                sums[k] = sums.get(k, 0) + v.float()
            steps += 1
        if d.enabled:
            # Epoch means over the processes; one set of BatchNorm statistics for evaluation.
            keys = sorted(sums)
            if keys:
                total = d.all_reduce(torch.stack([torch.as_tensor(sums[k], device=self.device).float().reshape(()) for k in keys]), "mean")
                sums = dict(zip(keys, total.unbind()))
            average_batchnorm_stats(method, d)
        logs = {k: float(v) / max(steps, 1) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in logs.values()):
            kept = (f"the checkpoint of epoch {self.saved_epoch} stays in '{self.out}'" if self.saved_epoch is not None
                    else "no checkpoint was saved")
            raise DeepClustError(
                f"the loss became {logs.get('loss')} in epoch {epoch + 1}; lower optim.lr or use train.amp=off ({kept})"
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


def _short(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("epoch", "acc", "nmi", "ari", "ami", "protocol", "split", "cluster_sizes", "extras")
    return {k: record[k] for k in keys if k in record}


def _fmt(record: dict[str, Any]) -> str:
    if "acc" in record:
        return f"ACC {record['acc']:.4f} NMI {record['nmi']:.4f} ARI {record['ari']:.4f}"
    return f"{record['n_clusters']} clusters (no labels to score)"


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate; returns the final result record (under torchrun: on every process).
    ``overwrite``: start again in a run directory that already holds a run (its files are removed)."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        close_distributed(trainer.dist)
