"""The rules of a run directory: when a run may start, resume or overwrite, and keeping
``metrics.jsonl`` consistent with the checkpoint.

- ``train`` into a directory that holds a checkpoint or results: refused (``--resume`` or
  ``--overwrite``); one that holds only logs (a run that stopped before its first checkpoint):
  refused too, with ``--overwrite`` as the way to start it again, so lines of a dead run are
  never mixed with a new one.
- ``resume``: needs a checkpoint; ``metrics.jsonl`` is cut back to the checkpoint's epoch, so it
  never holds an epoch twice (a run killed after epoch 3 with a checkpoint at 2 keeps 1, 2).
- one line per epoch: a line for an epoch that is already the last one is merged into it (the
  final evaluation of a resumed run that had already trained all its epochs).

:class:`RunDir` is one run's directory with these rules applied: checked when the trainer is
built, started (created, cleared or cut back, ``config.yaml`` written) when training begins, and
every file written atomically through :mod:`deepclust.engine.io`. Only the main process writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from deepclust.engine import io
from deepclust.errors import CheckpointError

log = logging.getLogger(__name__)

RUN_FILES = (io.CHECKPOINT, io.METRICS, io.RESULTS, io.CONFIG)  # what a run writes (and --overwrite removes)


def default_dir(prefix: str, data_name: str, suffix: str = "", whole_path: bool = True) -> Path:
    """``runs/PREFIX_DATA[SUFFIX]``: the default folder of a run or a sweep. DATA is the data
    name without ``npz:``/``folder:``, made safe for a file name; ``whole_path``: the separators
    of a path become ``_`` (a run), else only its file stem is kept (a sweep)."""
    name = data_name.replace("npz:", "").replace("folder:", "")
    unsafe = r"[^A-Za-z0-9_.-]+"
    part = Path(re.sub(unsafe, "_", name)).stem if whole_path else re.sub(unsafe, "_", Path(name).stem or "data")
    return Path("runs") / f"{prefix}_{part or 'data'}{suffix}"


def default_run_dir(cfg: Any) -> Path:
    """``runs/METHOD_DATA_sSEED``, where a run goes without ``train.out``."""
    return default_dir(cfg.method, cfg.data.name, f"_s{cfg.train.seed}")


class RunDir:
    """One run's directory: the checks of :func:`check` at construction, then the writes."""

    def __init__(self, path: Path, resume: bool, overwrite: bool = False) -> None:
        self.path = path
        self.resume = resume
        self.overwrite = overwrite and not resume  # --overwrite: start again in a directory that holds a run
        self.is_main = True  # under torchrun only rank 0 writes (set by the trainer)
        self.saved_epoch: int | None = None  # the epoch of the checkpoint in the directory
        check(path, resume=resume, overwrite=self.overwrite)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume (on the CPU: load_state_dict copies onto this run's device)."""
        return io.load_checkpoint(self.path / io.CHECKPOINT, map_location="cpu") if self.resume else None

    def start(self, config_text: str, start_epoch: int) -> None:
        """Before the first epoch: create, clear (--overwrite) or cut back (resume) the directory
        and write ``config.yaml``."""
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if self.overwrite:
            clear(self.path)
        if self.resume:  # the lines of epochs after the checkpoint belong to a run that died
            truncate_metrics(self.path, start_epoch)
        io.write_text(config_text, self.path / io.CONFIG)

    def log(self, row: dict[str, Any]) -> None:
        if self.is_main:
            log_metrics(self.path, row)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        io.save_checkpoint(state, self.path / io.CHECKPOINT)
        self.saved_epoch = int(state["epoch"])

    def checkpoint_hash(self) -> str:
        """The hash of the checkpoint (``results.json`` names the checkpoint it belongs to)."""
        return io.file_hash(self.path / io.CHECKPOINT)

    def write_results(self, record: dict[str, Any]) -> None:
        io.write_json(record, self.path / io.RESULTS)

    def forget_unsaved(self) -> None:
        if self.is_main and not self.resume:
            forget_unsaved(self.path)


def check(out: Path, resume: bool, overwrite: bool = False) -> None:
    """Refuse a start that would mix two runs, or a resume with nothing to resume."""
    ckpt = out / io.CHECKPOINT
    logs = [n for n in (io.METRICS, io.CONFIG) if (out / n).is_file()]
    if resume:
        if not ckpt.is_file():
            why = " (a run that stopped before its first checkpoint)" if logs else ""
            raise CheckpointError(
                f"nothing to resume: no checkpoint in '{out}'{why}; "
                "start it again with 'deepclust train ... --overwrite'"
            )
        return
    if overwrite:
        return
    if ckpt.is_file() or (out / io.RESULTS).is_file():
        raise CheckpointError(
            f"'{out}' already holds a run; pass --resume to continue it, "
            "--overwrite to start it again, or choose another --out"
        )
    if logs:
        raise CheckpointError(
            f"'{out}' holds a run that stopped before its first checkpoint ({', '.join(logs)}, no {io.CHECKPOINT}); "
            "start it again with --overwrite, or choose another --out"
        )


def clear(out: Path) -> None:
    """Remove the files of an earlier run in ``out`` (``--overwrite``); nothing else in the folder."""
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    log.info("--overwrite: removed the earlier run's files in %s", out)


def forget_unsaved(out: Path) -> None:
    """After a stop before the first checkpoint: remove the logs this run wrote, so the same
    ``train`` command starts it again."""
    if not (out / io.CHECKPOINT).is_file():
        for name in (io.METRICS, io.CONFIG):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()


def truncate_metrics(out: Path, epoch: int) -> int:
    """Keep the whole lines of ``metrics.jsonl`` up to ``epoch`` (the checkpoint's); return how many were cut."""
    path = out / io.METRICS
    if not path.is_file():
        return 0
    raw = path.read_text()
    rows = io.read_jsonl(path)
    keep = [r for r in rows if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch]
    cut = raw.count("\n") + (0 if raw.endswith("\n") or not raw else 1) - len(keep)
    if cut:
        io.write_jsonl(keep, path)
        log.info("metrics.jsonl: cut %d line(s) after the checkpoint's epoch %d", cut, epoch)
    return cut


def log_metrics(out: Path, row: dict[str, Any]) -> None:
    """Append one epoch's line; a line for the epoch already last in the file is merged into it."""
    path = out / io.METRICS
    last = _last_row(path)
    if last is not None and last.get("epoch") == row.get("epoch"):
        rows = io.read_jsonl(path)  # rare (once per resume at most): rewrite the file
        merged = {**rows[-1], **row}
        if "train" in rows[-1] and "train" not in row:
            merged["train"] = rows[-1]["train"]
        io.write_jsonl([*rows[:-1], merged], path)
        return
    io.append_jsonl(row, path)


def _last_row(path: Path, tail: int = 1 << 16) -> dict[str, Any] | None:
    """The last whole line of a JSON-lines file, reading only its end (None when there is none)."""
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - tail))
        chunk = fh.read()
    lines = chunk.split(b"\n")[:-1]  # the part after the last newline is empty or cut by a crash
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            return row if isinstance(row, dict) else None
    return None
