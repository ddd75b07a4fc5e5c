"""What ``train.amp`` becomes on a device: the autocast dtype of training, evaluation,
``predict``, ``embed`` and ``bench``.

- ``off``: float32. ``bf16``: bf16 autocast on any device (on a CPU without bf16 units it is
  emulated and slower: one warning says so).
- ``auto``: bf16 on CUDA. On the CPU, bf16 where the processor has AMX-BF16 matrix units and
  torch has oneDNN to use them, else float32 (:func:`cpu_bf16_units`). Float32 on MPS.
- ``fp16``: fp16 (with a gradient scaler) on CUDA and MPS, which have fast fp16. A CPU has none:
  there fp16 autocast is emulated and many times slower than float32 (issue #28, docs/speed.md),
  so a *config's* ``fp16`` (SeCu's paper configs, written for GPUs, or a GPU run resumed on a
  CPU) runs as ``auto`` there, with one info line saying so and
  why. ``train.amp=fp16`` typed on the command line (``keep_fp16``) still runs fp16, with a
  warning that it is emulated and slow.

The CPU rule reads the processor's facts as torch reports them (``torch.cpu.get_capabilities``:
``amx_bf16`` on Intel Xeons since Sapphire Rapids) rather than timing a probe matmul at start-up:
the facts cost nothing, give the same answer every run, and a probe on a loaded 2-core machine
would flip with the load. Measured with oneDNN limited by ``ONEDNN_MAX_CPU_ISA`` to what other
processors have (docs/speed.md, records in benchmarks/results/cpu_precision/), bf16 autocast is
faster than float32 with AMX-BF16 and slower with AVX512-BF16 alone or without bf16 instructions.

So AVX512-BF16 alone does not make bf16 faster, and only AMX-BF16 turns it on (a real Zen 4
is unmeasured; ``train.amp=bf16`` tries it). Other architectures (arm64) stay float32:
unmeasured. ``DEEPCLUST_CPU_BF16=1`` / ``0`` overrides the facts (tests pin ``0`` so the suite
runs the same on every machine).

Whatever the choice, the losses, Sinkhorn, k-means and the assignments run in float32 inside
their own autocast-off blocks (:mod:`deepclust.precision`). Each decision is logged once per
process; the trainer saves the resolved value as ``train.amp`` in the run's ``config.yaml``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from deepclust.config import parse_override
from deepclust.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["CPU_BF16_ENV", "Precision", "cpu_bf16_units", "cpu_capabilities", "resolve_amp", "typed_fp16"]

CPU_BF16_ENV = "DEEPCLUST_CPU_BF16"
#: the capability (torch.cpu.get_capabilities) of the bf16 units that make oneDNN's bf16
#: convolutions and matmuls faster than float32: AMX tiles with bf16 (AVX512-BF16 alone was
#: slower than float32, see the module docstring)
BF16_UNITS = ("amx_bf16",)
_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_said: set[str] = set()  # messages already logged by this process (each decision once)


@dataclass(frozen=True)
class Precision:
    """A resolved ``train.amp``: ``name`` (``bf16``, ``fp16`` or ``off``, the value a run's
    config.yaml keeps), the autocast ``dtype`` (None: float32) and why."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]


def cpu_capabilities() -> Mapping[str, Any]:
    """The processor's features as torch detected them (``{}`` where torch cannot say)."""
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is None:
        return {}
    try:
        return get()
    except (RuntimeError, AttributeError):  # a torch built without cpuinfo
        return {}


def cpu_bf16_units() -> tuple[bool, str]:
    """Whether bf16 autocast is faster than float32 on this CPU, and why (see the module doc):
    the processor has AMX-BF16 and torch has oneDNN; ``$DEEPCLUST_CPU_BF16``
    (1 / 0) overrides the facts."""
    env = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True, f"{CPU_BF16_ENV}={env} says this CPU has bf16 units"
    if env in ("0", "false", "no", "off"):
        return False, f"{CPU_BF16_ENV}={env} says this CPU has no bf16 units"
    if env not in ("", "auto"):
        raise ConfigError(f"{CPU_BF16_ENV} must be 1, 0 or auto, got {env!r}")
    caps = cpu_capabilities()
    units = [u for u in BF16_UNITS if caps.get(u)]
    arch = str(caps.get("architecture", ""))
    if not units:
        if arch and "x86" not in arch:  # arm64's bf16 instructions: not measured here
            return False, f"bf16 on {arch} processors is unmeasured"
        extra = " (avx512_bf16 alone is slower than float32)" if caps.get("avx512_bf16") else ""
        return False, f"the processor has no AMX-BF16 matrix units{extra}, where bf16 is slower than float32"
    if not torch.backends.mkldnn.is_available():
        return False, f"the processor has {', '.join(units)} but this torch has no oneDNN to use them"
    return True, f"the processor has bf16 units: {', '.join(units)}"


def typed_fp16(overrides: Sequence[str]) -> bool:
    """Whether the last ``train.amp=VALUE`` among ``key=value`` items typed on a command line says
    fp16 (then it runs even on a CPU, where it is emulated; a config file's fp16 does not)."""
    typed = [
        parse_override(o)["train"]["amp"] for o in overrides if "=" in o and o.split("=", 1)[0].strip() == "train.amp"
    ]
    return bool(typed) and str(typed[-1]).strip().lower() == "fp16"


def _once(level: int, message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.log(level, "%s", message)


def _auto_cpu(method_bf16: bool = True) -> Precision:
    fast, why = cpu_bf16_units()
    if fast and not method_bf16:
        return Precision("off", f"{why}, but this method keeps float32: its bf16 quality left the 2-point band")
    return Precision("bf16" if fast else "off", why)


def resolve_amp(setting: Any, device: torch.device, keep_fp16: bool = False, method_bf16: bool = True) -> Precision:
    """``train.amp`` (auto | bf16 | fp16 | off) on ``device``; ``keep_fp16``: fp16 was typed on
    the command line, so it runs even where it is emulated; ``method_bf16``: the method's
    ``cpu_auto_bf16`` (False: ``auto`` and a config's fp16 stay float32 on the CPU for it).
    Logs the decision once per process."""
    text = "off" if setting is False else str(setting).strip().lower()  # YAML 1.1 reads off as false
    kind = device.type
    if text == "off":
        return Precision("off", "train.amp=off")
    if text == "bf16":
        if kind == "cpu":
            fast, why = cpu_bf16_units()
            if not fast:
                _once(
                    logging.WARNING,
                    f"train.amp=bf16 on the CPU: bf16 autocast is emulated here ({why}); "
                    "train.amp=off (float32) is faster on this processor",
                )
        return Precision("bf16", "train.amp=bf16")
    if text == "fp16":
        if kind in ("cuda", "mps"):
            return Precision("fp16", "train.amp=fp16")
        if keep_fp16:
            _once(
                logging.WARNING,
                f"train.amp=fp16 on the {kind.upper()}: fp16 autocast is emulated there and slow "
                "(about 70x float32 for SeCu on digits); kept because it was given on the command line",
            )
            return Precision("fp16", "train.amp=fp16 given on the command line")
        chosen = _auto_cpu(method_bf16) if kind == "cpu" else Precision("off", f"{kind} has no fast fp16")
        what = "bf16 autocast" if chosen.name == "bf16" else "float32"
        _once(
            logging.INFO,
            f"the config says train.amp=fp16 (written for GPUs), but the {kind.upper()} has no fast fp16 "
            f"(emulated, about 70x slower): running {what} instead ({chosen.reason}); train.amp=fp16 on the "
            "command line keeps fp16",
        )
        return Precision(chosen.name, f"config fp16 on the {kind}: {chosen.reason}")
    if text != "auto":
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, got {setting!r}")
    if kind == "cuda":
        return Precision("bf16", "auto on CUDA")
    if kind != "cpu":
        return Precision("off", f"auto on {kind}")
    chosen = _auto_cpu(method_bf16)
    what = "bf16 autocast" if chosen.name == "bf16" else "float32"
    _once(
        logging.INFO,
        f"train.amp=auto on the CPU: {what} ({chosen.reason}; losses, Sinkhorn and k-means stay "
        f"float32); train.amp=off or bf16 overrides it",
    )
    return Precision(chosen.name, f"auto on the CPU: {chosen.reason}")
