"""The method and optimiser of a run: the concrete model names, the method built and moved to
its device, its initial weights, the torchrun set-up and the configured optimiser."""

from __future__ import annotations

import dataclasses
import logging

import torch

from deepclust.collectives import Collectives
from deepclust.config import Config
from deepclust.engine.batchnorm import convert_sync_batchnorm
from deepclust.engine.fastpath import make_optimizer
from deepclust.engine.lars import LARS
from deepclust.errors import ConfigError
from deepclust.methods import ClusteringMethod, DataInfo, create_method
from deepclust.models import resolve_model
from deepclust.models.init import init_backbone

__all__ = ["build_method", "build_optimizer", "resolve_auto_model"]

log = logging.getLogger(__name__)


def resolve_auto_model(cfg: Config, info: DataInfo) -> Config:
    """A copy of ``cfg`` with ``auto`` backbone/stem replaced by the concrete choice for the
    data, so the saved config says it (``cfg`` itself is not changed)."""
    backbone, stem = resolve_model(cfg.model, info)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone=backbone, stem=stem))


def build_method(
    cfg: Config, info: DataInfo, device: torch.device, dist: Collectives, init: bool
) -> tuple[ClusteringMethod, dict[str, str] | None]:
    """The method on ``device`` and where its initial weights came from (``init``: load
    ``model.init``; None when not loaded). Under torchrun: SyncBatchNorm and the gather handle,
    before the fast paths (SyncBatchNorm goes in before torch.compile)."""
    method = create_method(cfg, info)
    record = None
    if cfg.model.init and init:
        record = init_backbone(method.backbone, cfg.model.init, cfg.model.backbone, cfg.model.stem)
    method.to(device)
    setup_distributed(method, cfg, dist)
    return method, record


def setup_distributed(method: ClusteringMethod, cfg: Config, d: Collectives) -> None:
    """Under torchrun: check the global batch splits evenly, optionally synchronise BatchNorm
    and give the method its gather handle."""
    if not d.enabled:
        return
    bs = cfg.train.batch_size
    if bs % d.world:
        raise ConfigError(
            f"train.batch_size={bs} is the global batch and must split evenly over the {d.world} processes; "
            f"use a multiple of {d.world}"
        )
    if cfg.train.sync_bn:
        convert_sync_batchnorm(method, d)
    method.dist = d
    log.info(
        "distributed: %d processes (%s), global batch %d = %d per process, sync_bn=%s",
        d.world,
        d.backend,
        bs,
        bs // d.world,
        cfg.train.sync_bn,
    )


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
        return LARS(
            groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, trust_coefficient=o.trust_coefficient
        )
    return make_optimizer(o.name, groups, device, o.fused, lr=o.lr, weight_decay=o.weight_decay)
