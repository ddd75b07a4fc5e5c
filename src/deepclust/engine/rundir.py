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
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from deepclust.engine import io
from deepclust.errors import CheckpointError

log = logging.getLogger(__name__)

RUN_FILES = (io.CHECKPOINT, io.METRICS, io.RESULTS, io.CONFIG)  # what a run writes (and --overwrite removes)


def check(out: Path, resume: bool, overwrite: bool = False) -> None:
    """Refuse a start that would mix two runs, or a resume with nothing to resume."""
    ckpt = out / io.CHECKPOINT
    logs = [n for n in (io.METRICS, io.CONFIG) if (out / n).is_file()]
    if resume:
        if not ckpt.is_file():
            why = " (a run that stopped before its first checkpoint)" if logs else ""
            raise CheckpointError(
                f"nothing to resume: no checkpoint in '{out}'{why}; start it again with 'deepclust train ... --overwrite'"
            )
        return
    if overwrite:
        return
    if ckpt.is_file() or (out / io.RESULTS).is_file():
        raise CheckpointError(
            f"'{out}' already holds a run; pass --resume to continue it, --overwrite to start it again, or choose another --out"
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
