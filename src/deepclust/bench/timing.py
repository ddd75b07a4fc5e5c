"""Timing and memory of benchmark windows: peak memory (CUDA allocator or CPU PSS over the
process and its DataLoader workers) and timed windows of training steps."""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch


def _pss_kb(pid: int) -> int:
    """Proportional set size of one process in kB (RSS where smaps_rollup is missing), 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        key = "Pss:"
    except OSError:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
            key = "VmRSS:"
        except OSError:
            return 0
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


class _MemoryPeak:
    """Peak host memory (PSS of this process + its children) sampled by a thread, in MB."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pid = os.getpid()
        total = _pss_kb(pid) + sum(_pss_kb(c) for c in _children(pid))
        self.peak_kb = max(self.peak_kb, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> _MemoryPeak:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        if self.peak_kb == 0:  # no /proc: the lifetime peak of this process
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self.peak_kb / 1024


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float | str]]:
    """Yields a dict that holds ``peak_mem_mb`` (and what was measured) once the block ends."""
    out: dict[str, float | str] = {}  # peak_mem_mb, peak_mem_kind
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["peak_mem_kind"] = "cuda max_memory_allocated"
        return
    with _MemoryPeak() as mem:
        yield out
    out["peak_mem_mb"] = round(mem.peak_mb, 1)
    out["peak_mem_kind"] = "host PSS, process + DataLoader workers"


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_windows(
    run: Callable[[int], None], device: torch.device, windows: int, steps: int, batch_size: int
) -> dict[str, Any]:
    """Time ``windows`` calls of ``run(window)`` (``steps`` steps each): images/s per window and
    their median, with the peak memory over all windows."""
    rates: list[float] = []
    with _peak_memory(device) as mem:
        for w in range(windows):
            sync_device(device)
            t0 = time.perf_counter()
            run(w)
            sync_device(device)
            rates.append(steps * batch_size / (time.perf_counter() - t0))
    return {
        "images_per_s": round(statistics.median(rates), 2),
        "window_images_per_s": [round(r, 2) for r in rates],
        **mem,
    }
