"""The training loop shared by every method.

Device chosen automatically (``train.device`` overrides), bf16 autocast on CUDA and on CPUs with
bf16 units (engine/amp.py; the resolved ``train.amp`` is saved in config.yaml), one seed for
everything, a progress bar, evaluation every ``train.eval_every`` epochs and at the end,
atomic checkpoints every ``train.checkpoint_every`` epochs, and exact resume: the batch order
of every epoch is drawn from a generator seeded by (seed, epoch), and the global RNG states
(which drive augmentation) are saved with each checkpoint, so a resumed run continues exactly
as an uninterrupted one would.

The trainer composes the stages of a run: the run directory (engine/rundir.py), the data
(engine/data_stage.py), the method and optimiser (engine/setup.py) and the checkpointed state
(engine/checkpoint.py); this module holds the loop and the training step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deepclust.collectives import average_gradients, broadcast_state
from deepclust.config import Config, TrainConfig, config_yaml
from deepclust.config_rules import validate
from deepclust.data import ImageData, StreamData
from deepclust.engine import data_stage
from deepclust.engine.amp import resolve_amp
from deepclust.engine.batchnorm import average_batchnorm_stats
from deepclust.engine.checkpoint import RunState, seed_rank, to_cpu
from deepclust.engine.data_stage import data_info, load_data
from deepclust.engine.device import autocast, resolve_device, seed_everything
from deepclust.engine.evaluate import Prediction, add_extras, make_record, predict
from deepclust.engine.fastpath import apply_fast_paths
from deepclust.engine.process_group import close_distributed, init_distributed
from deepclust.engine.rundir import RunDir, default_run_dir
from deepclust.engine.schedule import lr_factor
from deepclust.engine.setup import build_method, build_optimizer, resolve_auto_model
from deepclust.engine.stream_loader import StreamLoader
from deepclust.errors import DataError, DeepClustError
from deepclust.methods import ClusteringMethod, DataInfo, get_method_class
from deepclust.models.init import check_source

__all__ = ["FitResult", "Trainer", "train"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FitResult:
    """What :meth:`Trainer.fit` produced. ``record``/``prediction``: the final evaluation's
    result record and prediction (features, labels, centres); None on torchrun ranks other
    than 0. ``config``: the run's config, with the concrete backbone and stem."""

    record: dict[str, Any] | None
    prediction: Prediction | None
    method: ClusteringMethod
    info: DataInfo
    out: Path
    config: Config


class Trainer:
    """Train ``cfg.method`` on ``cfg.data`` and write the run directory.

    ``data``: in-memory data instead of ``cfg.data.name`` (engine/data_stage.py load_data);
    ``overwrite``: start again in a directory that holds a run; ``keep_fp16``: ``train.amp=fp16``
    was typed on the command line, so it runs even on a CPU, where it is emulated (a config's
    fp16 runs as the CPU's fast precision there: engine/amp.py). After :meth:`fit`,
    :attr:`result` is its :class:`FitResult`."""

    def __init__(
        self,
        cfg: Config,
        resume: bool = False,
        data: ImageData | tuple[ImageData, ImageData] | None = None,
        overwrite: bool = False,
        keep_fp16: bool = False,
    ) -> None:
        validate(cfg)  # a hand-built Config too: before any data is read
        self.run = RunDir(Path(cfg.train.out) if cfg.train.out else default_run_dir(cfg), resume, overwrite)
        if cfg.model.init and not resume:
            check_source(cfg.model.init)  # a missing file fails now, not after loading the data
        seed_everything(cfg.train.seed)
        # torchrun: join the process group; the device becomes cuda:LOCAL_RANK (no-op otherwise)
        self.dist, self.device = init_distributed(resolve_device(cfg.train.device))
        self.run.is_main = self.dist.is_main  # under torchrun only rank 0 writes the run directory
        # auto (and a config's fp16 on a CPU) resolved for this device and processor; the copy of
        # the config says what ran (config.yaml), so resume, eval and predict use the same
        self.precision = resolve_amp(cfg.train.amp, self.device, keep_fp16, get_method_class(cfg.method).cpu_auto_bf16)
        self.amp = self.precision.dtype
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=self.precision.name))
        self.train_data, self.eval_data = load_data(cfg, data, self.device)
        self.info = data_info(cfg, self.train_data, self.eval_data)
        self.cfg = cfg = resolve_auto_model(cfg, self.info)  # a copy: the caller's config is not changed
        # On resume the initial weights come from the checkpoint (and its record of them).
        self.method, init_record = self.build_method(cfg, resume)
        streamed = isinstance(self.train_data, StreamData)  # only the file list is in memory
        self.fast = apply_fast_paths(
            self.method,
            cfg,
            self.device,
            self.train_data.n_samples,
            None if streamed else self.train_data.images.nbytes,
        )
        self.optimizer = build_optimizer(cfg, self.method)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.state = RunState(
            cfg, self.info, self.method, self.optimizer, self.scaler, init_record, tags=self.checkpoint_tags()
        )
        ckpt = self.run.load_checkpoint()
        self.start_epoch = self.state.load(ckpt, self.run) if ckpt is not None else 0
        seed_rank(self.dist, cfg.train.seed, ckpt, self.start_epoch)
        self.stream: Any = None  # how batches reach the step (place_data); None: indexed on the device
        self.result: FitResult | None = None

    # ----- what a stage other than training changes (selflabel.py) ----------------------------------
    def build_method(self, cfg: Config, resume: bool) -> tuple[ClusteringMethod, dict[str, str] | None]:
        """The method on the run's device and where its initial weights came from (None: not
        loaded); ``resume``: the checkpoint will overwrite them."""
        return build_method(cfg, self.info, self.device, self.dist, init=not resume)

    def checkpoint_tags(self) -> dict[str, Any]:
        """Keys every checkpoint of this run carries beside its state (a stage's ``"stage"``)."""
        return {}

    @property
    def out(self) -> Path:
        return self.run.path

    @property
    def saved_epoch(self) -> int | None:
        """The epoch of the checkpoint in the run directory (None: none yet)."""
        return self.run.saved_epoch

    @property
    def prediction(self) -> Prediction | None:
        return self.result.prediction if self.result is not None else None

    # ----- the run -------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluate, write the final checkpoint and ``results.json``.
        Returns the result record (under torchrun: rank 0's, on every process)."""
        cfg, method = self.cfg, self.method
        self.run.start(config_yaml(cfg), self.start_epoch)
        images = self.place_data()
        iters = _iters_per_epoch(self.train_data.n_samples, cfg.train)
        method.bind_views(images)  # feature mode: the neighbour table of the views (mined, not saved)
        method.bind_data(images)
        if self.start_epoch == 0:
            method.setup(images)
        broadcast_state(method, self.dist)  # torchrun: one model on every process (no-op otherwise)
        t0 = time.time()
        done, boundary = self._train_epochs(images, iters)
        method.release_views()  # the neighbour table and its copy of the features: not kept in the model
        record, pred = self._finish(done, boundary, t0)
        self.result = FitResult(record, pred, method, self.info, self.out, cfg)
        return self.dist.broadcast_object(record)  # every process returns rank 0's record

    def _train_epochs(self, images: Any, iters: int) -> tuple[int, dict[str, Any] | None]:
        """The epochs left; returns the last epoch done and, when its checkpoint is not written
        yet, its boundary state in host memory (rank 0)."""
        cfg, epochs = self.cfg, self.cfg.train.epochs
        bar = tqdm(
            range(self.start_epoch, epochs),
            desc=f"{cfg.method}",
            initial=self.start_epoch,
            total=epochs,
            disable=not (cfg.train.progress and self.dist.is_main),
        )
        done, boundary = self.start_epoch, None
        try:
            with logging_redirect_tqdm():
                for epoch in bar:
                    t_epoch = time.perf_counter()
                    logs = self.state.last_logs = self._train_epoch(images, epoch, iters)
                    if epoch == self.start_epoch:
                        self._cpu_hint(time.perf_counter() - t_epoch, epoch + 1)
                    done = epoch + 1
                    bar.set_postfix_str(self._log_epoch(done, logs))
                    boundary = self._checkpoint(done)
        except KeyboardInterrupt:
            self._save_boundary(boundary)
            raise self._interrupted(f"during epoch {done + 1}") from None
        return done, boundary

    def data_kind(self) -> str:
        """The run's data kind (presets.py): the one the config applied (``defaults``), else
        from the data: ``features`` for vectors, ``glyph`` for one channel at <= 32 px, else
        ``natural``."""
        from deepclust.data.base import FeatureData
        from deepclust.data.peek import DataShape
        from deepclust.presets import KINDS, data_kind

        if self.cfg.defaults in KINDS:
            return self.cfg.defaults
        data = self.train_data
        if isinstance(data, FeatureData):
            return "features"
        if isinstance(data, StreamData):
            shape = DataShape(channels=data.n_channels, size=int(data.size), n_samples=data.n_samples)
        else:
            shape = DataShape(channels=data.n_channels, size=min(data.image_size), n_samples=data.n_samples)
        return data_kind(shape)

    def _cpu_hint(self, seconds: float, epoch: int) -> None:
        """After the first epoch of a CNN trained from scratch on natural images on the CPU: one
        info line with the epoch's time, the estimate for every epoch, and the faster route."""
        cfg = self.cfg
        if self.device.type != "cpu" or cfg.model.init or not self.dist.is_main or self.data_kind() != "natural":
            return
        total = seconds * cfg.train.epochs
        log.info(
            "epoch %d took %s on the CPU: about %s for all %d epochs; training a CNN from scratch on natural "
            "images is slow on a CPU: --features timm:NAME (a pretrained encoder, e.g. timm:resnet50.a1_in1k) "
            "clusters its embedding in minutes (docs/pretrained.md)",
            epoch,
            _duration(seconds),
            _duration(total),
            cfg.train.epochs,
        )

    def _log_epoch(self, done: int, logs: dict[str, float]) -> str:
        """The epoch's line in the log and ``metrics.jsonl``, with an evaluation every
        ``train.eval_every`` epochs (the last epoch's line comes with the final evaluation)."""
        cfg, epochs = self.cfg, self.cfg.train.epochs
        msg = " ".join(f"{k}={v:.4f}" for k, v in logs.items())
        log.info("epoch %d/%d %s", done, epochs, msg)
        if done >= epochs:
            return msg
        if cfg.train.eval_every and done % cfg.train.eval_every == 0:
            record, _ = self.evaluate(done)  # every process: under torchrun the inference is sharded
            if record is not None:
                self.run.log({**_short(record), "train": logs})
                log.info("epoch %d: %s", done, _fmt(record))
        else:  # training curves: one line per epoch
            self.run.log({"epoch": done, "train": logs})
        return msg

    def _checkpoint(self, done: int) -> dict[str, Any] | None:
        """Write the checkpoint every ``train.checkpoint_every`` epochs. Otherwise (and after the
        last epoch, whose checkpoint is written once, with the final evaluation's centres) keep
        the epoch-boundary state in host memory, so that Ctrl-C during the next epoch or the
        final evaluation saves a checkpoint that resumes exactly (not a half epoch)."""
        if done % self.cfg.train.checkpoint_every == 0 and done < self.cfg.train.epochs:
            self.state.save(self.run, self.dist, done)
            return None
        return to_cpu(self.state.state(done)) if self.dist.is_main else None

    def _save_boundary(self, boundary: dict[str, Any] | None) -> None:
        if boundary is not None and self.dist.is_main:
            self.run.save_checkpoint(boundary)

    def _finish(
        self, done: int, boundary: dict[str, Any] | None, t0: float
    ) -> tuple[dict[str, Any] | None, Prediction | None]:
        """The final evaluation, its metrics line, the final checkpoint and ``results.json``."""
        try:
            record, pred = self.evaluate(done)
        except KeyboardInterrupt:
            self._save_boundary(boundary)
            raise self._interrupted("during the final evaluation") from None
        except BaseException:
            self._save_boundary(boundary)  # an evaluation that fails must not lose the trained epochs
            raise
        logs = self.state.last_logs
        if record is not None and pred is not None:
            record["wall_time_s"] = round(time.time() - t0, 2)
            n = self.train_data.n_samples
            record["train_images_per_s"] = round((done - self.start_epoch) * n / max(record["wall_time_s"], 1e-9), 1)
            self.run.log({**_short(record), **({"train": logs} if logs else {})})
        self.state.save(
            self.run,
            self.dist,
            done,
            {"centers": pred.centers, "n_clusters": self.info.n_clusters} if pred is not None else None,
        )
        if record is not None:
            record["checkpoint_hash"] = self.run.checkpoint_hash()
            record["init"] = self.state.init_record
            self.run.write_results(record)
            log.info("done: %s -> %s", _fmt(record), self.out)
        return record, pred

    def _interrupted(self, when: str) -> DeepClustError:
        """The Ctrl-C line: where the last checkpoint is, or that nothing was saved."""
        if self.saved_epoch is None:
            self.run.forget_unsaved()
            return DeepClustError(
                f"interrupted {when}, before the first checkpoint: nothing was saved; "
                "start again with the same 'deepclust train' command"
            )
        return DeepClustError(
            f"interrupted {when}; the checkpoint of epoch {self.saved_epoch} is in '{self.out}': "
            f"continue with 'deepclust resume {self.out}'"
        )

    # ----- data and evaluation -------------------------------------------------------------------
    def place_data(self) -> Any:
        """The training images where the loop reads them, and ``self.stream`` (None: resident);
        see engine/data_stage.py place_data. Returns what :meth:`ClusteringMethod.setup` sees."""
        images, self.stream = data_stage.place_data(
            self.train_data, self.method, self.cfg, self.device, self.fast, self.dist
        )
        return images

    def evaluate(self, epoch: int) -> tuple[dict[str, Any] | None, Prediction | None]:
        """The result record and prediction. Under torchrun every process infers its shard of the
        images and rank 0 clusters and scores them; the other processes get (None, None)."""
        pred = predict(
            self.method,
            self.cfg,
            self.info.n_clusters,
            self.train_data,
            self.eval_data,
            self.device,
            self.amp,
            dist=self.dist,
        )
        if pred is None:
            return None, None
        record = make_record(self.cfg, pred, self.eval_data, self.info.n_clusters, epoch, self.device)
        if self.dist.enabled:
            record["distributed"] = {
                "world_size": self.dist.world,
                "backend": self.dist.backend,
                "sync_bn": self.cfg.train.sync_bn,
            }
        return add_extras(record, self.method, pred, self.eval_data), pred

    # ----- one epoch -----------------------------------------------------------------------------
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
        stream = self.stream
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
        batches = (
            stream.batches_of([p[2] for p in plan]) if stream is not None else ((images[p[2]], p[2]) for p in plan)
        )
        # batches is built from plan (same length); not strict: zip never advances the stream past its end
        for (it, n_global, _), (batch, idx) in zip(plan, batches, strict=False):
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
                total = d.all_reduce(
                    torch.stack([torch.as_tensor(sums[k], device=self.device).float().reshape(()) for k in keys]),
                    "mean",
                )
                sums = dict(zip(keys, total.unbind(), strict=True))
            average_batchnorm_stats(method, d)
        logs = {k: float(v) / max(steps, 1) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in logs.values()):
            kept = (
                f"the checkpoint of epoch {self.saved_epoch} stays in '{self.out}'"
                if self.saved_epoch is not None
                else "no checkpoint was saved"
            )
            raise DeepClustError(
                f"the loss became {logs.get('loss')} in epoch {epoch + 1}; lower optim.lr or use train.amp=off ({kept})"
            )
        return logs


def _short(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("epoch", "acc", "nmi", "ari", "ami", "protocol", "split", "cluster_sizes", "extras")
    return {k: record[k] for k in keys if k in record}


def _fmt(record: dict[str, Any]) -> str:
    if "acc" in record:
        return f"ACC {record['acc']:.4f} NMI {record['nmi']:.4f} ARI {record['ari']:.4f}"
    return f"{record['n_clusters']} clusters (no labels to score)"


def _duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _iters_per_epoch(n: int, t: TrainConfig) -> int:
    bs = t.batch_size
    iters = n // bs if t.drop_last else math.ceil(n / bs)
    if iters == 0:
        raise DataError(
            f"batch size {bs} is larger than the {n} training images with drop_last; lower train.batch_size"
        )
    return iters


def train(cfg: Config, resume: bool = False, overwrite: bool = False, keep_fp16: bool = False) -> dict[str, Any]:
    """Train and evaluate one run.

    Parameters
    ----------
    cfg : the resolved :class:`deepclust.Config` (:func:`deepclust.resolve_config`).
    resume : continue the run in ``cfg.train.out`` from its last checkpoint.
    overwrite : start again in a run directory that already holds a run (its files are removed).
    keep_fp16 : run ``train.amp=fp16`` even where it is emulated (see :class:`Trainer`).

    Returns
    -------
    dict
        The final result record (spec/evaluation.md 2.1: acc, nmi, ari, ...), also written to the
        run directory; under torchrun on every process.
    """
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite, keep_fp16=keep_fp16)
    try:
        return trainer.fit()
    finally:
        close_distributed(trainer.dist)
