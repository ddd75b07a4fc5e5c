"""What a checkpoint holds and how a run is restored from one: the state dict of every part of
a run (model, optimiser, scaler, RNG streams, data statistics, the last training logs, where the
initial weights came from), its write under torchrun, and the checks of a resume."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch

from deepclust.collectives import Collectives
from deepclust.config import Config
from deepclust.engine.device import rng_state, seed_everything, set_rng_state
from deepclust.engine.rundir import RunDir
from deepclust.errors import CheckpointError, ConfigError
from deepclust.methods import ClusteringMethod, DataInfo

__all__ = ["RunState", "seed_rank", "to_cpu"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunState:
    """The parts of a run a checkpoint saves and restores."""

    cfg: Config
    info: DataInfo
    method: ClusteringMethod
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    init_record: dict[str, str] | None = None  # where the initial weights came from
    last_logs: dict[str, float] = dataclasses.field(default_factory=dict)  # of the last finished epoch
    #: keys saved beside the state in every checkpoint; ``"stage"`` marks a run that is not a
    #: method's training (self-labelling), which only the same stage may resume
    tags: dict[str, Any] = dataclasses.field(default_factory=dict)

    def state(self, epoch: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
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
            **self.tags,
            **(extra or {}),
        }

    def save(self, run: RunDir, dist: Collectives, epoch: int, extra: dict[str, Any] | None = None) -> None:
        """Rank 0 writes the checkpoint. Under torchrun every process calls this: the RNG states
        of all processes are stored too, so a resume with as many processes is exact; the rest
        of the state is replicated, so any number of processes can resume it."""
        rngs = dist.gather_object(rng_state()) if dist.enabled else None
        if not dist.is_main:
            return
        if rngs is not None:
            extra = {**(extra or {}), "rng_ranks": rngs, "world_size": dist.world}
        run.save_checkpoint(self.state(epoch, extra))

    def load(self, ckpt: dict[str, Any], run: RunDir) -> int:
        """Restore every part from ``ckpt``; returns its epoch (where training continues)."""
        cfg, out = self.cfg, run.path
        if ckpt["method"] != cfg.method:
            raise CheckpointError(
                f"the checkpoint in '{out}' is from method '{ckpt['method']}', not '{cfg.method}'; "
                f"resume it with method={ckpt['method']}, or train a new run with another --out"
            )
        if ckpt.get("stage") != self.tags.get("stage"):
            raise CheckpointError(_stage_mismatch(ckpt, out, self.tags.get("stage")))
        try:
            self.method.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise CheckpointError(
                f"the checkpoint in '{out}' does not fit this model (different backbone, data size or options)"
            ) from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        else:  # saved without fp16, resumed with it: the scaler has no history to restore
            log.info("the run was saved without fp16; the fp16 gradient scaler starts at its initial scale")
        set_rng_state(ckpt["rng"])
        self.init_record = ckpt.get("init")
        epoch = run.saved_epoch = int(ckpt["epoch"])
        self.last_logs = dict(ckpt.get("train_logs") or {})
        if epoch > cfg.train.epochs:
            raise ConfigError(
                f"'{out}' has already trained {epoch} epochs, more than train.epochs={cfg.train.epochs}; "
                f"resume with train.epochs={epoch} or more (or train a new run with another --out)"
            )
        log.info("resuming %s from epoch %d", out, epoch)
        return epoch


def _stage_mismatch(ckpt: dict[str, Any], out: Any, wanted: str | None) -> str:
    if ckpt.get("stage") == "selflabel":
        source = ckpt.get("source_run", "RUN_DIR")
        return (
            f"'{out}' holds a self-labelling stage, not a training run; continue it with "
            f"'deepclust selflabel {source} --out {out} --resume'"
        )
    return f"'{out}' holds a training run of method '{ckpt['method']}', not a {wanted} stage"


def seed_rank(dist: Collectives, seed: int, ckpt: dict[str, Any] | None, start_epoch: int) -> None:
    """Under torchrun every process draws its own augmentations: its stream from the checkpoint
    when it was written by as many processes, else one derived from the seed, the rank and the
    epoch (rank 0 keeps the single-process stream)."""
    if not dist.enabled:
        return
    states = (ckpt or {}).get("rng_ranks")
    if states is not None and len(states) == dist.world:
        set_rng_state(states[dist.rank])
    elif dist.rank > 0:
        seed_everything(seed * 1_000_003 + 7919 * dist.rank + 104_729 * start_epoch)


def to_cpu(state: Any) -> Any:
    """A deep copy of a (nested) state with every tensor cloned to host memory."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return copy.deepcopy(state)
