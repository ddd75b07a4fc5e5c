"""The on-disk embedding cache: one folder per (model, weights, preprocessing, images).

Layout of ``<cache_root>/<key>/``:

- ``features.npy``: float32 (N, D), created with ``np.lib.format.open_memmap`` and filled in
  place, read back with ``np.load(mmap_mode="r", allow_pickle=False)``;
- ``manifest.json``: what the rows are (format, model spec, weights hash, preprocessing, image
  count and image-list hash, D, dtype, device and precision used, times, deepclust version) and
  whether they are ``complete``;
- ``progress.json`` (``progress.R.json`` for torchrun rank R > 0): the row intervals already
  written and flushed, so a killed run resumes from its last finished chunk.

``key`` is the first 16 hex digits of a SHA-256 over the inputs that decide the rows (model
spec without ``@PATH``, weights hash, preprocessing, image-list hash, image count): any change
gives another folder, so a cache is never reused for other inputs. A folder whose files are
unreadable or disagree with its key is rebuilt (one warning line). Only JSON and ``.npy`` are
read: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from deepclust.data.base import ImageData
from deepclust.data.stream import StreamData
from deepclust.engine.io import write_json

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "cache_key",
    "default_cache_root",
    "images_hash",
    "inspect",
    "create",
    "read_progress",
    "write_progress",
    "finish_progress",
    "remaining",
    "merge",
    "split_rows",
]

FORMAT = 1
FEATURES, MANIFEST, PROGRESS = "features.npy", "manifest.json", "progress.json"
KEY_FIELDS = ("format", "model", "weights_hash", "preprocess", "images_hash", "n_images", "source")
_CHUNK = 1 << 24  # bytes hashed at a time


def default_cache_root() -> Path:
    """``$DEEPCLUST_CACHE``, else ``~/.cache/deepclust/embeddings``."""
    env = os.environ.get("DEEPCLUST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deepclust" / "embeddings"


def images_hash(data: ImageData | StreamData) -> str:
    """SHA-256 of the images: pixel bytes and shape in memory; relative path, size and mtime (ns)
    of every file, in order, for streamed folders (the files are not read)."""
    h = hashlib.sha256()
    if isinstance(data, StreamData):
        root = data.files.root
        h.update(f"stream:{len(data.files)}\0".encode())
        for rel in data.files:
            st = os.stat(root / rel)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    imgs = data.images
    h.update(f"uint8{tuple(imgs.shape)}\0".encode())
    rows = max(1, _CHUNK // max(1, imgs[0].numel()))
    for s in range(0, imgs.shape[0], rows):
        h.update(imgs[s : s + rows].contiguous().numpy().reshape(-1).data)
    return h.hexdigest()


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _features(folder: Path) -> np.memmap | None:
    try:
        return np.load(folder / FEATURES, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def inspect(folder: Path, inputs: dict[str, Any], dim: int) -> tuple[str, str]:
    """``(state, why)``: state is ``missing``, ``complete``, ``partial`` or ``damaged``."""
    if not folder.exists():
        return "missing", ""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "damaged", f"no {MANIFEST}"
    except (OSError, ValueError):
        return "damaged", f"{MANIFEST} is not valid JSON"
    if not isinstance(manifest, dict):
        return "damaged", f"{MANIFEST} is not a JSON object"
    json_inputs = json.loads(json.dumps(inputs))
    for k in KEY_FIELDS:
        if manifest.get(k) != json_inputs[k]:
            return "damaged", f"{MANIFEST} disagrees with the folder's key on {k!r}"
    if manifest.get("dim") != dim or manifest.get("dtype") != "float32":
        return (
            "damaged",
            f"{MANIFEST} records dim {manifest.get('dim')} / {manifest.get('dtype')}, expected {dim} / float32",
        )
    feats = _features(folder)
    n = inputs["n_images"]
    if feats is None:
        return "damaged", f"{FEATURES} is missing or unreadable"
    if feats.shape != (n, dim) or feats.dtype != np.float32:
        return "damaged", f"{FEATURES} holds {feats.dtype} {feats.shape}, expected float32 {(n, dim)}"
    del feats
    return ("complete" if manifest.get("complete") is True else "partial"), ""


def create(folder: Path, n: int, dim: int, manifest: dict[str, Any]) -> None:
    """A fresh cache folder: zero features, the manifest (incomplete), no progress."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    feats = np.lib.format.open_memmap(folder / FEATURES, mode="w+", dtype=np.float32, shape=(n, dim))
    feats.flush()
    del feats
    write_json({**manifest, "complete": False}, folder / MANIFEST)
    write_json({"rows": []}, folder / PROGRESS)


def _progress_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("progress*.json"))


def read_progress(folder: Path) -> list[list[int]]:
    """The merged row intervals ``[start, end)`` recorded by every process (unreadable: none)."""
    rows: list[list[int]] = []
    for p in _progress_files(folder):
        try:
            got = json.loads(p.read_text()).get("rows", [])
            rows += [[int(a), int(b)] for a, b in got]
        except (OSError, ValueError, TypeError, AttributeError):
            logger.warning("embedding cache: %s is unreadable; its rows are computed again", p)
    return merge(rows)


def write_progress(folder: Path, rows: list[list[int]], rank: int = 0) -> None:
    name = PROGRESS if rank == 0 else f"progress.{rank}.json"
    write_json({"rows": merge(rows), "rows_done": sum(b - a for a, b in merge(rows))}, folder / name)


def finish_progress(folder: Path, n: int) -> None:
    """One ``progress.json`` covering every row; the per-rank files are removed."""
    for p in _progress_files(folder):
        if p.name != PROGRESS:
            p.unlink(missing_ok=True)
    write_progress(folder, [[0, n]])


def merge(rows: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted([int(a), int(b)] for a, b in rows if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def remaining(done: list[list[int]], n: int) -> list[list[int]]:
    """The intervals of ``[0, n)`` not in ``done``."""
    out, pos = [], 0
    for a, b in merge(done):
        if a > pos:
            out.append([pos, min(a, n)])
        pos = max(pos, b)
    if pos < n:
        out.append([pos, n])
    return [r for r in out if r[1] > r[0]]


def split_rows(todo: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """Rank ``rank``'s contiguous share (by row count) of the intervals ``todo``."""
    total = sum(b - a for a, b in todo)
    lo, hi = total * rank // world, total * (rank + 1) // world
    out, seen = [], 0
    for a, b in todo:
        s, e = max(a, a + lo - seen), min(b, a + hi - seen)
        if e > s:
            out.append([s, e])
        seen += b - a
    return out
