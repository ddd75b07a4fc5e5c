"""Benchmark records: the machine a figure was measured on, the stamp (command, date, load),
atomic writing, and the resolved config of a benchmark run."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Device name, library versions, CPU and thread counts, load average (1, 5, 15 min)."""
    import sklearn
    import torchvision

    from deepclust._version import __version__

    dev = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "cpu_auto_amp": _cpu_auto_amp(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "sklearn": sklearn.__version__,
        "deepclust": __version__,
        "loadavg": loadavg(),
    }
    try:
        import faiss

        info["faiss"] = getattr(faiss, "__version__", "unknown")
    except ImportError:
        pass
    return info


def _cpu_auto_amp() -> dict[str, str]:
    """What ``train.amp=auto`` picks on this CPU and why (engine/amp.py)."""
    from deepclust.engine.amp import cpu_bf16_units

    fast, why = cpu_bf16_units()
    return {"precision": "bf16" if fast else "fp32", "reason": why}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_flags() -> list[str]:
    """The processor's bf16 matrix/vector flags (amx_bf16, avx512_bf16) from /proc/cpuinfo: whether
    bf16 can be fast on this CPU, recorded beside every timing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f in ("amx_bf16", "avx512_bf16"))
    except OSError:
        pass
    return []


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def stamp_record(
    record: dict[str, Any], start: dict[str, Any], script: str, argv: list[str], date: str, **machine_extra: Any
) -> None:
    """Add the machine (``start`` = :func:`machine_info` before the run, with the load average at
    start and now), the command line and the date to a benchmark record, in place."""
    start = dict(start)
    load_start = start.pop("loadavg")
    record["machine"] = {
        **start,
        **machine_extra,
        "loadavg_start": load_start,
        "loadavg_end": machine_info()["loadavg"],
    }
    record["command"] = " ".join(["python", script, *argv])
    record["date"] = date


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """Write a result record as indented JSON (atomically: a temporary file, then rename)."""
    from deepclust.engine.io import write_text

    p = Path(path)
    write_text(json.dumps(record, indent=2) + "\n", p)  # fsynced temporary file, then rename
    return p


def bench_config(
    method: str,
    data: str,
    data_dir: str | None = None,
    backbone: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    overrides: list[str] | None = None,
    shape: Any = None,
) -> Any:
    """The resolved config of a throughput run: the packaged ``<method>/<data>`` config when
    there is one (the paper's model, views and batch size), else the method's defaults.
    ``shape`` (a :class:`deepclust.data.peek.DataShape`): the data a ``defaults: <kind>``
    config's preset is sized for (a subset's), instead of the dataset's headers."""
    from deepclust.config import deep_merge, load_yaml, packaged_config, parse_override, resolve_config

    path = packaged_config(f"{method}/{data}")
    raw: dict[str, Any] = load_yaml(path) if path is not None else {"method": method, "data": {"name": data}}
    over: dict[str, Any] = {"train": {"device": device, "progress": False, "eval_every": 0}}
    if data_dir is not None:
        over["data"] = {"data_dir": data_dir}
    if backbone is not None:
        over["model"] = {"backbone": backbone}
    if batch_size is not None:
        over["train"]["batch_size"] = batch_size
    raw = deep_merge(raw, over)
    for item in overrides or []:
        raw = deep_merge(raw, parse_override(item))
    return resolve_config(raw, shape=shape)
