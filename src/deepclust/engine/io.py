"""Run-directory files, written atomically so a crash never destroys the last good copy.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per
evaluation), ``results.json`` (the final record) and ``checkpoint.pt`` (the latest state).

Every file is written to a temporary name in the same directory, flushed and fsynced, renamed
over the old one and the directory is fsynced, so the old file stays whole until the new one
is complete and durable. Files get the user's umask default (0644 under umask 022). A failed
write (disk full, quota, permissions; torch reports a full disk as a ``RuntimeError``) is one
:class:`StorageError` line and leaves the old file as it was.

Checkpoints carry a SHA-256 over their content (every tensor's bytes, dtype and shape, and
every other value), checked on load: a file damaged after it was written is reported as
corrupt instead of loading garbage weights.

A file from elsewhere is data, never code: checkpoints are read with ``torch.load(...,
weights_only=True)``, which rebuilds tensors and plain containers only. The few NumPy types that
checkpoints written before deepclust stored its RNG states as tensors hold are allowed by name
(:data:`LEGACY_GLOBALS`); a file that needs any other type is refused with one line naming it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import pickletools
import re
import secrets
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from deepclust.errors import CheckpointError, StorageError

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CHECKSUM_KEY = "checksum"
_CHECKSUM_ALGO = "sha256-content-v1"

# torch's zip writer reports a failed write (a full disk) as RuntimeError with these texts.
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")


def _write_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _TORCH_WRITE_FAILURES)


def storage_error(path: Path, exc: BaseException, kept: bool) -> StorageError:
    """The one line for a failed write of ``path``."""
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = os.strerror(exc.errno)
    else:
        reason = "the write failed (disk full, quota or I/O error)"
    fixes: dict[int | None, str] = {
        errno.ENOSPC: "free disk space",
        errno.EDQUOT: "free quota",
        errno.EACCES: "fix the permissions",
        errno.EPERM: "fix the permissions",
        errno.EROFS: "use a writable disk",
    }
    what = fixes.get(getattr(exc, "errno", None), "free space or fix the disk")
    state = f"the previous '{path.name}' is unchanged" if kept else "nothing was written"
    return StorageError(f"cannot write '{path}': {reason}; {state}: {what} (or choose another --out) and try again")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(fh)`` to a temporary file, fsync, rename, fsync the directory."""
    path = Path(path)
    kept = path.exists()
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL with mode 0666: the umask applies, as for any file the user creates (mkstemp: 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: the old file stays until this line
        fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _write_failure(exc) and not isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
            raise storage_error(path, exc, kept) from None
        raise


def write_text(text: str, path: str | Path) -> None:
    atomic_write(Path(path), lambda fh: fh.write(text.encode()))


# ----- checkpoints ----------------------------------------------------------------------------------
def content_hash(obj: Any) -> str:
    """SHA-256 over a nested state: tensors and arrays by dtype, shape and bytes, the rest by repr."""
    h = hashlib.sha256()

    def visit(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # .data: the array's memoryview, no copy
        elif isinstance(o, np.ndarray):
            a = np.ascontiguousarray(o)
            h.update(f"A{a.dtype}{a.shape}".encode())
            h.update(a.tobytes() if a.dtype == object else a.view(np.uint8).reshape(-1).data)
        elif isinstance(o, dict):
            h.update(f"D{len(o)}".encode())
            for k, v in o.items():
                h.update(repr(k).encode())
                visit(v)
        elif isinstance(o, (list, tuple)):
            h.update(f"L{type(o).__name__}{len(o)}".encode())
            for v in o:
                visit(v)
        else:
            h.update(f"V{type(o).__name__}:{o!r}".encode())

    visit(obj)
    return h.hexdigest()


def with_checksum(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` plus its content checksum (``obj`` itself is not changed)."""
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    return {**body, CHECKSUM_KEY: {"algo": _CHECKSUM_ALGO, "sha256": content_hash(body)}}


def verify_checksum(obj: dict[str, Any], where: Path) -> None:
    """CheckpointError when ``obj`` does not match the checksum stored in it (none stored: accepted)."""
    stored = obj.get(CHECKSUM_KEY)
    if not isinstance(stored, dict) or stored.get("algo") != _CHECKSUM_ALGO:
        return  # written before checksums existed
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    if content_hash(body) != stored.get("sha256"):
        raise CheckpointError(
            f"checkpoint corrupt: '{where}' does not match the checksum written with it (the file was damaged after it "
            "was saved); restore a copy, or start the run again with 'deepclust train ... --overwrite'"
        )


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` (with a content checksum) to a temporary file, then an atomic rename over ``path``."""
    state = with_checksum(obj)
    atomic_write(Path(path), lambda fh: torch.save(state, fh))


def _legacy_globals() -> list[Any]:
    """NumPy's array, dtype and scalar constructors, under the names NumPy 1.x and 2.x pickle
    them as: the RNG state of ``np.random.get_state()`` in checkpoints of deepclust <= dd4f959
    (and any NumPy scalar a statistic left in them). They build arrays from bytes; no code runs."""
    try:
        from numpy._core import multiarray  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]  # the same module, NumPy 1.x's path
    names: list[Any] = [np.ndarray, np.dtype]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        names += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25 pickles some dtypes by their class
    names += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n[0].isupper()] if dtypes else []
    return names


LEGACY_GLOBALS: list[Any] = _legacy_globals()
_REFUSED = re.compile(r"GLOBAL ([\w.]+)")


def _pickle_globals(path: Path) -> list[str]:
    """The module.name of every global a (torch zip or plain) pickle file refers to, read with
    pickletools (which parses the opcodes and runs nothing)."""
    if zipfile.is_zipfile(path):
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    found: list[str] = []
    strings: list[Any] = []  # the strings pushed so far, memo gets included (STACK_GLOBAL pops two)
    memo: dict[Any, Any] = {}  # keys: the int memo index of MEMOIZE, PUT and GET
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                    strings.append(arg)
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = strings[-1] if strings else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(arg))
                elif op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - a damaged file: name what was found before the damage
        pass
    return found


def _torch_allowed() -> set[str]:
    """The globals ``weights_only`` loads by default (tensor rebuilds, OrderedDict, ...)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - a private helper: without it, name the first global found
        return set()


def _refused_type(path: Path, exc: BaseException, allowed: list[str]) -> str | None:
    """The first type ``path`` needs beyond what ``weights_only`` loads and ``allowed`` (None:
    the file names none; it is damaged or not a pickle)."""
    named = _REFUSED.search(str(exc))
    if named:
        return named.group(1)
    known = {*allowed, *_torch_allowed()}
    extra = [g for g in _pickle_globals(path) if g not in known]
    extra.sort(key=lambda g: g.startswith("torch."))  # name a foreign type before torch's own helpers
    return extra[0] if extra else None


def _global_name(g: Any) -> str:
    return g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"


def read_torch_file(path: Path, what: str, allowed: Sequence[Any] = (), map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with ``allowed`` types admitted by name: never a
    full unpickling, so a crafted file cannot run code. A file that needs another type is one
    :class:`CheckpointError` line naming the type and the file."""
    try:
        with torch.serialization.safe_globals(list(allowed)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # torch's note on protocol 4 files
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        kind = _refused_type(path, exc, [_global_name(g) for g in allowed])
        if kind is None:
            raise CheckpointError(
                f"{what} '{path}' cannot be read (UnpicklingError); it may be truncated or not a torch file"
            ) from None
        raise CheckpointError(
            f"{what} '{path}' needs the Python type '{kind}' to load; deepclust reads only tensors and plain data "
            "from a file (never code): pass a file of weights, e.g. saved as a state dict or .safetensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure means a damaged file or not a torch file
        raise CheckpointError(
            f"{what} '{path}' cannot be read ({type(exc).__name__}); it may be truncated or not a torch file"
        ) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at '{p}'; pass a run directory written by 'deepclust train'")
    ckpt = read_torch_file(p, "checkpoint", LEGACY_GLOBALS, map_location)
    if not isinstance(ckpt, dict) or "method" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"'{p}' is not a deepclust checkpoint")
    verify_checksum(ckpt, p)
    ckpt.pop(CHECKSUM_KEY, None)
    return ckpt


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ----- JSON -------------------------------------------------------------------------------------------
def write_json(obj: Any, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable), path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The whole lines of a JSON-lines file; a last line cut by a crash (no newline, bad JSON) is dropped."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # cut mid-line by a crash
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def write_jsonl(rows: list[Any], path: str | Path) -> None:
    """Replace a JSON-lines file atomically."""
    write_text("".join(json.dumps(r, default=_jsonable) + "\n" for r in rows), path)


def _cut_partial_tail(path: Path) -> None:
    """Truncate a last line left without its newline by a crash, so the next line starts clean."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        pos = size
        while pos > 0:
            step = min(pos, 1 << 16)
            fh.seek(pos - step)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                fh.truncate(pos - step + nl + 1)
                return
            pos -= step
        fh.truncate(0)


def append_jsonl(obj: Any, path: str | Path) -> None:
    """Append one line, in one write, fsynced; a partial last line from a crash is cut first."""
    p = Path(path)
    line = (json.dumps(obj, default=_jsonable) + "\n").encode()
    try:
        if p.is_file():
            _cut_partial_tail(p)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            view = memoryview(line)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise storage_error(p, exc, kept=True) from None


def _jsonable(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)
