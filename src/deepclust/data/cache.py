"""An on-disk cache of decoded image arrays (.npy), keyed by the source file's size and mtime."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["cache_dir", "cached_array"]


def cache_dir() -> Path:
    """``$DEEPCLUST_CACHE``, else ``~/.cache/deepclust``."""
    env = os.environ.get("DEEPCLUST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deepclust"


def _cache_path(source: Path, variant: str) -> tuple[Path, str]:
    st = source.stat()
    src = str(source.resolve())
    tag = hashlib.sha1(src.encode()).hexdigest()[:12]
    prefix = f"{source.name.replace('.', '_')}-{tag}-{variant}-"
    return cache_dir() / "decoded" / f"{prefix}{st.st_size}-{st.st_mtime_ns}.npy", prefix


def cached_array(source: Path, variant: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load the array cached for ``source`` (same size and mtime), or compute and cache it.

    The cache file is written atomically (temporary file + os.replace); entries for older
    versions of the same source are removed. An unwritable cache only logs a warning.
    """
    path, prefix = _cache_path(source, variant)
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            logger.debug("loaded cached decode %s", path)
            return arr
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable cache file %s (%s); decoding again", path, exc)
    arr = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex}.npy"
        try:
            with open(tmp, "xb") as fh:
                np.save(fh, arr, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for old in path.parent.glob(prefix + "*.npy"):
            if old != path:
                old.unlink(missing_ok=True)
        logger.info("cached decoded images of %s in %s", source, path)
    except OSError as exc:
        logger.warning("could not write the decode cache %s (%s); set DEEPCLUST_CACHE to a writable folder", path, exc)
    return arr
