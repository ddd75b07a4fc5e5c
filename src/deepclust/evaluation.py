"""Evaluate a finished (or interrupted) run again: ``deepclust eval RUN_DIR``."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from deepclust.config import build_dataclass, Config, resolve_config
from deepclust.data import load_dataset
from deepclust.engine import io
from deepclust.engine.device import amp_dtype, resolve_device
from deepclust.engine.evaluate import add_extras, make_record, predict
from deepclust.errors import CheckpointError
from deepclust.methods import DataInfo, create_method

log = logging.getLogger(__name__)


def load_run(run_dir: str | Path, device: str = "auto"):
    """(config, method in eval mode, data info, checkpoint) of a run directory."""
    run = Path(run_dir)
    if not run.exists():
        raise CheckpointError(f"run directory '{run}' does not exist; pass the --out of a 'deepclust train' run")
    ckpt = io.load_checkpoint(run / io.CHECKPOINT)
    cfg = resolve_config(ckpt["config"])
    dev = resolve_device(device)
    info = build_dataclass(DataInfo, ckpt["data_info"])
    method = create_method(cfg, info)
    try:
        method.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise CheckpointError(f"the checkpoint in '{run}' does not match its own config; was it edited?") from None
    return cfg, method.to(dev).eval(), info, ckpt, dev


def evaluate_run(run_dir: str | Path, features: str | None = None, split: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Re-run the evaluation of a run's latest checkpoint; writes ``eval_<split>_<features>.json``."""
    cfg, method, info, ckpt, dev = load_run(run_dir, device)
    if features:
        cfg.eval.features = features
    if split:
        cfg.data.eval_split = split
    d = cfg.data
    train = load_dataset(d.name, d.train_split, d.data_dir, d.image_size)
    evald = train if d.eval_split == d.train_split else load_dataset(d.name, d.eval_split, d.data_dir, d.image_size)
    pred = predict(method, cfg, info.n_clusters, train, evald, dev, amp_dtype(cfg.train.amp, dev))
    record = make_record(cfg, pred, evald, info.n_clusters, int(ckpt["epoch"]), dev, io.file_hash(Path(run_dir) / io.CHECKPOINT))
    record = add_extras(record, method, pred, evald)
    name = re.sub(r"[^A-Za-z0-9]+", "-", f"{cfg.data.eval_split}_{cfg.eval.features}")
    io.write_json(record, Path(run_dir) / f"eval_{name}.json")
    return record


__all__ = ["Config", "evaluate_run", "load_run"]
