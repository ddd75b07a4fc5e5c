"""``deepclust bench``: training throughput against a published-style loop, and k-means speed.

Throughput (``deepclust bench --method idfd --data cifar10``). Both sides train the same
method (same model, batch size, loss math and optimiser) on the same images and device:

- **deepclust**: the real :class:`~deepclust.engine.trainer.Trainer` step path (its
  ``_train_epoch``: device-resident uint8 images gathered by index, batched on-device
  augmentation, autocast per ``train.amp``, the fast paths of ``train.*`` / ``optim.fused``,
  logs accumulated on the device);
- **reference**, in the style of the published codes: a ``Dataset`` that turns every image
  into a PIL image and applies torchvision v1 transforms per image (RandomResizedCrop,
  ColorJitter, RandomGrayscale, blur / solarize where the method has them,
  RandomHorizontalFlip, ToTensor, Normalize) for each of the method's views, a
  ``DataLoader`` with one worker per core, fp32, a plain optimiser and ``loss.item()`` every
  step. The method's own augmentation modules are swapped for a feeder that hands over these
  views in the order the method asks for them, so the loss math is the method's own.

Each side: warm-up steps, then ``windows`` timed windows of ``steps`` steps, the sides taking
turns for ``rounds`` rounds (so a change of background load hits both); images/s is the median
over all windows of a side (training images, not views). Peak memory: ``max_memory_allocated`` on
CUDA; on the CPU the peak PSS (proportional set size, so pages shared by fork count once)
summed over the process and its DataLoader workers, sampled every 0.1 s during the windows.

k-means (``deepclust bench --kmeans``): :func:`deepclust.cluster.kmeans` against
scikit-learn's ``KMeans(algorithm="lloyd")`` (and faiss when installed) with the same
n_init, max_iter, tol and seed on the same float32 features; wall time (median of
``--repeats``, the libraries taking turns) and inertia, both reported and recomputed in float64.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepclust.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = [
    "add_bench_parser",
    "bench_kmeans",
    "bench_throughput",
    "bench_config",
    "kmeans_features",
    "machine_info",
    "print_kmeans",
    "print_throughput",
    "run_bench",
    "write_record",
]


# ----------------------------------------------------------------------------- the machine


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Device name, library versions, CPU and thread counts, load average (1, 5, 15 min)."""
    import sklearn
    import torchvision

    import deepclust

    dev = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_model(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "sklearn": sklearn.__version__,
        "deepclust": getattr(deepclust, "__version__", "unknown"),
        "loadavg": _loadavg(),
    }
    try:
        import faiss  # noqa: F401

        info["faiss"] = getattr(faiss, "__version__", "unknown")
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def stamp_record(record: dict[str, Any], start: dict[str, Any], script: str, argv: list[str], date: str,
                 **machine_extra: Any) -> None:
    """Add the machine (``start`` = :func:`machine_info` before the run, with the load average at
    start and now), the command line and the date to a benchmark record, in place."""
    start = dict(start)
    load_start = start.pop("loadavg")
    record["machine"] = {**start, **machine_extra, "loadavg_start": load_start, "loadavg_end": machine_info()["loadavg"]}
    record["command"] = " ".join(["python", script, *argv])
    record["date"] = date


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """Write a result record as indented JSON (atomically: a temporary file, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(p)
    return p


# ----------------------------------------------------------------------------- memory


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
def _peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yields a dict that holds ``peak_mem_mb`` (and what was measured) once the block ends."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["peak_mem_kind"] = "cuda max_memory_allocated"  # type: ignore[assignment]
        return
    with _MemoryPeak() as mem:
        yield out
    out["peak_mem_mb"] = round(mem.peak_mb, 1)
    out["peak_mem_kind"] = "host PSS, process + DataLoader workers"  # type: ignore[assignment]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _windows(run: Callable[[int], None], device: torch.device, windows: int, steps: int,
             batch_size: int) -> dict[str, Any]:
    """Time ``windows`` calls of ``run(window)`` (``steps`` steps each): images/s per window and
    their median, with the peak memory over all windows."""
    rates: list[float] = []
    with _peak_memory(device) as mem:
        for w in range(windows):
            _sync(device)
            t0 = time.perf_counter()
            run(w)
            _sync(device)
            rates.append(steps * batch_size / (time.perf_counter() - t0))
    return {"images_per_s": round(statistics.median(rates), 2), "window_images_per_s": [round(r, 2) for r in rates],
            **mem}


# ----------------------------------------------------------------------------- configs


def bench_config(method: str, data: str, data_dir: str | None = None, backbone: str | None = None,
                 batch_size: int | None = None, device: str = "auto",
                 overrides: list[str] | None = None) -> Any:
    """The resolved config of a throughput run: the packaged ``<method>/<data>`` config when
    there is one (the paper's model, views and batch size), else the method's defaults."""
    from deepclust.cli import packaged_config
    from deepclust.config import deep_merge, load_yaml, parse_override, resolve_config

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
    return resolve_config(raw)


# ----------------------------------------------------------------------------- the reference loop


class _Feeder(nn.Module):
    """Stands in for one of the method's augmentation modules.

    ``record`` mode: runs the real module and notes its name (to learn the order in which a
    training step asks for views). ``feed`` mode: returns the next precomputed view.
    """

    def __init__(self, name: str, real: nn.Module, shared: dict[str, Any]) -> None:
        super().__init__()
        self.name = name
        self.real = real
        self.shared = shared

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.shared["mode"] == "record":
            self.shared["order"].append(self.name)
            return self.real(x, *args, **kwargs)
        return self.shared["views"].pop(0)


def _install_feeders(method: nn.Module) -> dict[str, Any]:
    """Swap every Augment / EvalTransform child of ``method`` for a :class:`_Feeder`."""
    from deepclust.augment import Augment, EvalTransform

    shared: dict[str, Any] = {"mode": "record", "order": [], "views": [], "modules": {}}
    for name, child in list(method.named_children()):
        if isinstance(child, (Augment, EvalTransform)):
            shared["modules"][name] = child
            setattr(method, name, _Feeder(name, child, shared))
    if not shared["modules"]:
        raise ConfigError(f"method '{getattr(method, 'name', '?')}' has no image augmentation to compare against")
    return shared


def torchvision_transform(module: nn.Module, channels: int) -> Callable[[Any], torch.Tensor]:
    """The torchvision v1 (PIL) per-image equivalent of an Augment or EvalTransform module."""
    from torchvision import transforms as T

    from deepclust.augment import Augment, EvalTransform, gaussian_kernel_size

    mean = None if module.mean is None else module.mean.tolist()
    std = None if module.std is None else module.std.tolist()
    ops: list[Any] = []
    if isinstance(module, Augment):
        c = module.cfg
        ops.append(T.RandomResizedCrop(module.size, scale=c.crop_scale, ratio=c.crop_ratio))
        b, ct, s, h = c.jitter
        if channels == 1:
            s = h = 0.0  # as the library: grayscale images get brightness and contrast only
        if c.jitter_p > 0 and any((b, ct, s, h)):
            jitter = T.ColorJitter(b, ct, s, h)
            ops.append(jitter if c.jitter_p >= 1 else T.RandomApply([jitter], p=c.jitter_p))
        if c.grayscale_p > 0 and channels == 3:
            ops.append(T.RandomGrayscale(c.grayscale_p))
        if c.blur_p > 0:
            k = c.blur_kernel or gaussian_kernel_size(c.blur_sigma[1])
            k = min(k, 2 * ((module.size - 1) // 2) + 1)  # the library caps it to the image too
            ops.append(T.RandomApply([T.GaussianBlur(k, sigma=c.blur_sigma)], p=c.blur_p))
        if c.solarize_p > 0:
            ops.append(T.RandomSolarize(round(255 * c.solarize_threshold), p=c.solarize_p))
        if c.flip_p > 0:
            ops.append(T.RandomHorizontalFlip(c.flip_p))
    elif isinstance(module, EvalTransform):
        ops.append(T.Resize((module.size, module.size)))
    else:
        raise ConfigError(f"no torchvision equivalent for {type(module).__name__}")
    ops.append(T.ToTensor())
    if mean is not None and std is not None:
        ops.append(T.Normalize(mean, std))
    return T.Compose(ops)


class ReferenceDataset(torch.utils.data.Dataset):
    """Published-code style: one PIL image per item, each view's torchvision transform applied.

    ``images`` uint8 (N, C, H, W) are kept as an (N, H, W[, C]) numpy array, as torchvision's
    CIFAR10 dataset keeps them. Item i is ``(tuple of views, i)``.
    """

    def __init__(self, images: torch.Tensor, transforms: list[Callable[[Any], torch.Tensor]]) -> None:
        arr = images.permute(0, 2, 3, 1).cpu().numpy()
        self.array = arr[..., 0] if arr.shape[-1] == 1 else arr
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], int]:
        from PIL import Image

        img = Image.fromarray(self.array[i])
        return tuple(t(img) for t in self.transforms), i


def _reference_optimizer(cfg: Any, method: nn.Module) -> torch.optim.Optimizer:
    """The optimiser as published code builds it: default constructor, no fused / foreach flags."""
    o = cfg.optim
    groups = method.param_groups()
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, weight_decay=o.weight_decay)


def _setup_images(images: torch.Tensor, k: int) -> torch.Tensor:
    """A small, fixed subset for ``method.setup`` (AnchorCL's k-means init): its quality does not
    matter for speed, and the full set would cost minutes of inference."""
    n = min(len(images), max(512, 8 * k))
    return images[:n]


class _ReferenceSide:
    """The published-style loop: a fresh method fed torchvision views from DataLoader workers."""

    def __init__(self, cfg: Any, info: Any, images: torch.Tensor, device: torch.device, workers: int) -> None:
        from deepclust.engine.device import seed_everything
        from deepclust.methods import create_method

        self.cfg, self.device, self.workers, self.images = cfg, device, workers, images
        bs = cfg.train.batch_size
        seed_everything(cfg.train.seed)
        method = create_method(cfg, info).to(device)
        method.setup(_setup_images(images, info.n_clusters).to(device))
        shared = _install_feeders(method)
        # Learn the order of the views from one real step (no gradient, on a few images).
        with torch.no_grad():
            small = images[: min(len(images), 16)].to(device)
            method.train()
            method.training_step(small, torch.arange(len(small), device=device), 0)
        self.views = list(shared["order"])
        self.transforms = [torchvision_transform(shared["modules"][n], info.n_channels) for n in self.views]
        self.method = create_method(cfg, info).to(device)  # fresh state after the recording step
        self.method.setup(_setup_images(images, info.n_clusters).to(device))
        self.feed = _install_feeders(self.method)
        self.feed["mode"] = "feed"
        self.optimizer = _reference_optimizer(cfg, self.method)
        self.placeholder = torch.zeros((bs, info.n_channels, info.image_size, info.image_size), dtype=torch.uint8,
                                       device=device)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.loader: torch.utils.data.DataLoader | None = None
        self.batches: Iterator[Any] | None = None
        self.loss_sum, self.loss_steps = 0.0, 0

    def start(self) -> None:
        """Start the workers (they run only while this side is timed)."""
        self.loader = torch.utils.data.DataLoader(
            ReferenceDataset(self.images, self.transforms), batch_size=self.cfg.train.batch_size, shuffle=True,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=True,
            persistent_workers=self.workers > 0, generator=self.generator,
        )
        self.batches = iter(self.loader)
        self.method.train()

    def stop(self) -> None:
        self.batches = self.loader = None  # the workers exit with their iterator

    def step(self, epoch: int) -> None:
        assert self.loader is not None and self.batches is not None
        try:
            views, idx = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            views, idx = next(self.batches)
        self.feed["views"] = [v.to(self.device, non_blocking=True) for v in views]
        idx = idx.to(self.device, non_blocking=True)
        out = self.method.training_step(self.placeholder, idx, epoch)
        self.optimizer.zero_grad()
        out.loss.backward()
        self.optimizer.step()
        self.method.after_optimizer_step(out)
        self.loss_sum += out.loss.item()  # published code logs every step (AverageMeter)
        self.loss_steps += 1

    def info(self) -> dict[str, Any]:
        return {"views": self.views, "workers": self.workers, "precision": "fp32",
                "pipeline": "PIL + torchvision v1 transforms per image in DataLoader workers",
                "mean_loss": self.loss_sum / max(self.loss_steps, 1)}


class _DeepclustSide:
    """The real trainer's step path (``Trainer._train_epoch`` on device-resident images)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.images = trainer.train_data.images.to(trainer.device)
        trainer.method.setup(_setup_images(self.images, trainer.info.n_clusters))
        self.logs: dict[str, float] = {}
        self.epoch = 0

    def steps(self, n: int) -> None:
        # one "epoch" of n steps; it ends with one host sync (the epoch's logs)
        self.epoch += 1
        self.logs = self.trainer._train_epoch(self.images, self.epoch, n)

    def info(self) -> dict[str, Any]:
        t = self.trainer
        fast = getattr(t, "fast", None)
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[t.amp]
        return {"precision": amp, "fast_paths": fast.as_dict() if fast is not None else {},
                "pipeline": "device-resident uint8, batched on-device augmentation", "mean_loss": self.logs.get("loss")}


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Windows of several rounds: the median over all of them, the largest peak memory."""
    rates = [r for p in parts for r in p["window_images_per_s"]]
    return {"images_per_s": round(statistics.median(rates), 2), "window_images_per_s": rates,
            "peak_mem_mb": max(p["peak_mem_mb"] for p in parts), "peak_mem_kind": parts[0]["peak_mem_kind"]}


def bench_throughput(cfg: Any, warmup: int = 3, windows: int = 5, steps: int = 5, workers: int | None = None,
                     reference: bool = True, rounds: int = 1) -> dict[str, Any]:
    """Training images/s of deepclust and of the published-style reference on ``cfg``'s data.

    ``rounds`` alternates the sides (deepclust, reference, deepclust, ...), each round with
    ``warmup`` untimed steps and ``windows`` timed windows of ``steps`` steps per side, so a
    change of background load hits both; the median is over all windows of a side. Returns a
    record with ``deepclust`` and ``reference`` entries (images_per_s, the windows, peak_mem_mb,
    ...) and ``speedup`` = deepclust / reference images/s.
    """
    from deepclust.engine.trainer import Trainer

    if warmup < 0 or windows < 1 or steps < 1 or rounds < 1:
        raise ConfigError("bench needs --warmup >= 0, --windows >= 1, --steps >= 1 and --rounds >= 1")
    with tempfile.TemporaryDirectory(prefix="deepclust-bench-") as tmp:
        cfg.train.out = str(Path(tmp) / "run")
        trainer = Trainer(cfg)
        device, info = trainer.device, trainer.info
        if info.n_features:
            raise DataError("bench compares image pipelines; the data holds feature vectors")
        bs = cfg.train.batch_size
        n_workers = (os.cpu_count() or 1) if workers is None else workers
        record: dict[str, Any] = {
            "benchmark": "throughput",
            "method": cfg.method,
            "dataset": trainer.train_data.name,
            "split": cfg.data.train_split,
            "n_images": trainer.train_data.n_samples,
            "backbone": cfg.model.backbone,
            "stem": cfg.model.stem,
            "image_size": info.image_size,
            "channels": info.n_channels,
            "batch_size": bs,
            "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
            "warmup_steps": warmup,
            "windows": windows,
            "steps_per_window": steps,
            "rounds": rounds,
        }
        log.info("bench %s on %s (%s, %d px, batch %d) on %s", cfg.method, record["dataset"],
                 cfg.model.backbone, info.image_size, bs, device)
        ours = _DeepclustSide(trainer)
        ref = _ReferenceSide(cfg, info, trainer.train_data.images, device, n_workers) if reference else None
        ours_parts, ref_parts = [], []
        for r in range(rounds):
            log.info("bench round %d/%d: deepclust", r + 1, rounds)
            if warmup:
                ours.steps(warmup)
            ours_parts.append(_windows(lambda w: ours.steps(steps), device, windows, steps, bs))
            if ref is not None:
                log.info("bench round %d/%d: reference loop (%d workers)", r + 1, rounds, n_workers)
                ref.start()
                for _ in range(warmup):
                    ref.step(0)
                ref_parts.append(_windows(lambda w: [ref.step(w + 1) for _ in range(steps)], device, windows, steps, bs))
                ref.stop()
        record["deepclust"] = {**_merge(ours_parts), **ours.info()}
        if ref is not None:
            record["reference"] = {**_merge(ref_parts), **ref.info()}
            record["speedup"] = round(record["deepclust"]["images_per_s"] / record["reference"]["images_per_s"], 3)
    return record


# ----------------------------------------------------------------------------- k-means


def kmeans_features(kind: str, n: int, dim: int, k: int, seed: int, data_dir: str | None = None) -> tuple[np.ndarray, str]:
    """float32 (n, dim) features and their description.

    ``blobs``: k Gaussian clusters with centres in [-10, 10]^dim and std 25 (overlapping, so
    Lloyd runs tens of iterations, as on learned features); ``fashion-mnist``: the 60,000
    training images' pixels projected on their first ``dim`` principal components; a path to
    a ``.npy`` file: that (n, dim) array.
    """
    if kind == "blobs":
        from sklearn.datasets import make_blobs

        x, _ = make_blobs(n_samples=n, n_features=dim, centers=k, cluster_std=25.0, center_box=(-10.0, 10.0),
                          random_state=seed)
        return x.astype(np.float32), f"make_blobs(n={n}, d={dim}, centers={k}, std=25, box=+-10, seed={seed})"
    if kind == "fashion-mnist":
        from deepclust.data import load_dataset

        data = load_dataset("fashion-mnist", "train", data_dir)
        x = data.images.flatten(1).float().div_(255)
        x = x - x.mean(0)
        _, _, v = torch.linalg.svd(x[:: max(1, len(x) // 10000)], full_matrices=False)
        feats = (x @ v[:dim].t()).numpy().astype(np.float32)
        return feats[:n], f"fashion-mnist train pixels, PCA to {dim} dims ({min(n, len(feats))} images)"
    p = Path(kind)
    if p.suffix == ".npy" and p.is_file():
        arr = np.load(p).astype(np.float32)
        if arr.ndim != 2:
            raise DataError(f"{p} must hold a 2-D (n, dim) array, got shape {arr.shape}")
        return arr, f"features from {p}"
    raise ConfigError(f"unknown k-means features '{kind}'; use blobs, fashion-mnist or a .npy file")


def _inertia64(x: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> float:
    """Sum of squared distances to the assigned centres, in float64."""
    diff = x.astype(np.float64) - centers.astype(np.float64)[labels]
    return float(np.einsum("ij,ij->", diff, diff))


def bench_kmeans(x: np.ndarray, k: int, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4, seed: int = 0,
                 repeats: int = 3, device: str = "cpu", faiss_too: bool = True) -> dict[str, Any]:
    """Wall time (median of ``repeats``, the libraries taking turns) and inertia of deepclust's,
    scikit-learn's and faiss's k-means on the same float32 features, with the same n_init,
    max_iter, tol and seed (faiss: its own random init and fixed iterations)."""
    from sklearn.cluster import KMeans

    from deepclust.cluster import kmeans

    x = np.ascontiguousarray(x, dtype=np.float32)
    dev = torch.device(device)
    xt = torch.from_numpy(x).to(dev)

    def ours() -> tuple[np.ndarray, np.ndarray, float, int]:
        r = kmeans(xt, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed)
        _sync(dev)
        return r.labels.cpu().numpy(), r.centers.cpu().numpy(), r.inertia, r.n_iter

    def sklearn() -> tuple[np.ndarray, np.ndarray, float, int]:
        s = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=tol, algorithm="lloyd",
                   random_state=seed).fit(x)
        return s.labels_, s.cluster_centers_, float(s.inertia_), int(s.n_iter_)

    libs: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, float, int]]] = {"deepclust": ours, "sklearn": sklearn}
    if faiss_too:
        with contextlib.suppress(ImportError):
            import faiss

            def run_faiss() -> tuple[np.ndarray, np.ndarray, float, int]:
                km = faiss.Kmeans(x.shape[1], k, niter=max_iter, nredo=n_init, seed=seed, verbose=False)
                km.train(x)
                _, lab = km.index.search(x, 1)
                return lab[:, 0], km.centroids, float(km.obj[-1]), max_iter

            libs["faiss"] = run_faiss
    ours()  # warm-up (allocator, kernels, thread pool); not timed
    times: dict[str, list[float]] = {name: [] for name in libs}
    last: dict[str, tuple[np.ndarray, np.ndarray, float, int]] = {}
    for _ in range(repeats):
        for name, fn in libs.items():
            t0 = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"n": int(x.shape[0]), "dim": int(x.shape[1]), "k": k, "n_init": n_init,
                           "max_iter": max_iter, "tol": tol, "seed": seed, "repeats": repeats}
    for name in libs:
        labels, centers, inertia, n_iter = last[name]
        out[name] = {"time_s": round(statistics.median(times[name]), 3), "times_s": [round(t, 3) for t in times[name]],
                     "inertia": inertia, "inertia_f64": _inertia64(x, labels, centers), "n_iter_best": n_iter}
    out["deepclust"]["device"] = dev.type
    out["sklearn"]["algorithm"] = "lloyd"
    if "faiss" in out:
        out["faiss"]["init"] = "random (faiss has no k-means++); fixed niter, no tolerance"
    out["inertia_ratio"] = round(out["deepclust"]["inertia_f64"] / out["sklearn"]["inertia_f64"], 6)
    out["speedup_vs_sklearn"] = round(out["sklearn"]["time_s"] / out["deepclust"]["time_s"], 3)
    return out


# ----------------------------------------------------------------------------- command line


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the CLI's subparsers; the handler is :func:`run_bench`."""
    b = subparsers.add_parser(
        "bench",
        help="training images/s against a published-style loop, or k-means against scikit-learn",
        description="Throughput: deepclust's training step against a reference loop written like the published "
        "codes (per-image torchvision transforms in DataLoader workers, fp32), same model, batch and loss. "
        "With --kmeans: deepclust's k-means against scikit-learn's (and faiss's) on the same features.",
    )
    b.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. train.amp=off)")
    b.add_argument("--method", default="idfd", help="idfd | secu | cdc | anchorcl (default idfd)")
    b.add_argument("--data", default="cifar10", help="dataset (default cifar10); its packaged config is the base")
    b.add_argument("--data-dir", default=None, help="data directory (default: $DEEPCLUST_DATA)")
    b.add_argument("--split", default=None, help="training split (default: the config's)")
    b.add_argument("--backbone", default=None, help="backbone (default: the config's)")
    b.add_argument("--batch-size", type=int, default=None, help="batch size (default: the config's)")
    b.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    b.add_argument("--windows", type=int, default=5, help="timed windows; the median is reported (default 5)")
    b.add_argument("--steps", type=int, default=5, help="steps per window (default 5)")
    b.add_argument("--rounds", type=int, default=1, help="alternate the sides this many times (default 1)")
    b.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default: CPU count)")
    b.add_argument("--no-reference", action="store_true", help="time deepclust only")
    b.add_argument("--kmeans", action="store_true", help="benchmark k-means instead of training")
    b.add_argument("--features", default="blobs", help="k-means features: blobs | fashion-mnist | FILE.npy")
    b.add_argument("--n", type=int, default=60000, help="k-means: rows (default 60000)")
    b.add_argument("--dim", type=int, default=128, help="k-means: dimensions (default 128)")
    b.add_argument("--k", type=int, default=10, help="k-means: clusters (default 10)")
    b.add_argument("--n-init", type=int, default=10, help="k-means: restarts, the same for every library (default 10)")
    b.add_argument("--max-iter", type=int, default=300)
    b.add_argument("--tol", type=float, default=1e-4)
    b.add_argument("--repeats", type=int, default=3, help="k-means: timed runs per library (median reported)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=None, help="write the record as JSON to this file")
    b.set_defaults(func=run_bench)
    return b


def print_throughput(r: dict[str, Any]) -> None:
    d = r["deepclust"]
    head = f"{r['method']} on {r['dataset']} ({r['backbone']}, {r['image_size']} px, batch {r['batch_size']}, {r['machine']['device']})"
    print(head)
    print(f"  deepclust  {d['images_per_s']:9.1f} images/s   peak {d['peak_mem_mb']:.0f} MB   ({d['precision']}, "
          + ", ".join(f"{k}={v}" for k, v in d["fast_paths"].items()) + ")")
    if "reference" in r:
        ref = r["reference"]
        print(f"  reference  {ref['images_per_s']:9.1f} images/s   peak {ref['peak_mem_mb']:.0f} MB   "
              f"(fp32, {ref['workers']} workers, views: {', '.join(ref['views'])})")
        print(f"  speed-up   {r['speedup']:.2f}x")


def print_kmeans(r: dict[str, Any]) -> None:
    print(f"k-means on {r['features']}: n={r['n']} d={r['dim']} k={r['k']} n_init={r['n_init']} ({r['machine']['device']})")
    for lib in ("deepclust", "sklearn", "faiss"):
        if lib in r:
            e = r[lib]
            print(f"  {lib:9s}  {e['time_s']:8.2f} s   inertia {e['inertia_f64']:.6g}")
    print(f"  speed-up vs scikit-learn {r['speedup_vs_sklearn']:.2f}x at inertia ratio {r['inertia_ratio']:.4f}")


def run_bench(args: argparse.Namespace) -> int:
    """The ``deepclust bench`` command; prints a summary and writes ``--out`` when given."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "deepclust bench"
    start = machine_info(None if args.device == "auto" else torch.device(args.device))
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if args.kmeans:
        if args.overrides:
            raise ConfigError("key=value overrides apply to training benchmarks, not to --kmeans")
        x, desc = kmeans_features(args.features, args.n, args.dim, args.k, args.seed, args.data_dir)
        dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
        record = {"benchmark": "kmeans", "features": desc,
                  **bench_kmeans(x, args.k, args.n_init, args.max_iter, args.tol, args.seed, args.repeats, dev)}
    else:
        over = list(args.overrides)
        if args.split:
            over += [f"data.train_split={args.split}", f"data.eval_split={args.split}"]
        over.append(f"train.seed={args.seed}")
        cfg = bench_config(args.method, args.data, args.data_dir, args.backbone, args.batch_size, args.device, over)
        record = bench_throughput(cfg, args.warmup, args.windows, args.steps, args.workers, not args.no_reference,
                                  args.rounds)
    load_start = start.pop("loadavg")
    record["machine"] = {**start, "loadavg_start": load_start, "loadavg_end": _loadavg()}
    record["command"] = command
    record["date"] = date
    (print_kmeans if args.kmeans else print_throughput)(record)
    if args.out:
        print(f"  written to {write_record(record, args.out)}")
    return 0
