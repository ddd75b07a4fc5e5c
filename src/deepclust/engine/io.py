"""Run-directory files, written atomically so a crash never destroys the last good copy.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per
evaluation), ``results.json`` (the final record) and ``checkpoint.pt`` (the latest state).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from deepclust.errors import CheckpointError

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RESULTS = "results.json"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: the old file stays until this line
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file, then an atomic rename over ``path``."""
    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at '{p}'; pass a run directory written by 'deepclust train'")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"checkpoint '{p}' cannot be read ({type(exc).__name__}); it may be truncated or not a deepclust checkpoint") from None
    if not isinstance(ckpt, dict) or "method" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"'{p}' is not a deepclust checkpoint")
    return ckpt


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def write_json(obj: Any, path: str | Path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable)
    _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def append_jsonl(obj: Any, path: str | Path) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(obj, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)
