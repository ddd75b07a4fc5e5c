"""Training throughput: deepclust's real trainer step against a published-style reference loop
(PIL + per-image torchvision transforms in DataLoader workers); see :mod:`deepclust.bench`."""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepclust.bench.records import cpu_bf16_flags, cpu_model
from deepclust.bench.timing import sync_device, timed_windows
from deepclust.errors import ConfigError, DataError

if TYPE_CHECKING:  # imported at run time inside the functions that need them
    from deepclust.augment import Augment, EvalTransform
    from deepclust.methods import ClusteringMethod

log = logging.getLogger(__name__)


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


def torchvision_transform(module: Augment | EvalTransform, channels: int) -> Callable[[Any], torch.Tensor]:
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


def _reference_optimizer(cfg: Any, method: ClusteringMethod) -> torch.optim.Optimizer:
    """The optimiser as published code builds it: default constructor, no fused / foreach flags."""
    o = cfg.optim
    groups = method.param_groups()
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    if o.name == "lars":  # torch has no LARS: both sides use the library's (engine/lars.py)
        from deepclust.engine.lars import LARS

        return LARS(
            groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, trust_coefficient=o.trust_coefficient
        )
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
        self.placeholder = torch.zeros(
            (bs, info.n_channels, info.image_size, info.image_size), dtype=torch.uint8, device=device
        )
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.loader: torch.utils.data.DataLoader | None = None
        self.batches: Iterator[Any] | None = None
        self.loss_sum, self.loss_steps = 0.0, 0

    def start(self) -> None:
        """Start the workers (they run only while this side is timed)."""
        self.loader = torch.utils.data.DataLoader(
            ReferenceDataset(self.images, self.transforms),
            batch_size=self.cfg.train.batch_size,
            shuffle=True,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=self.workers > 0,
            generator=self.generator,
        )
        self.batches = iter(self.loader)
        self.method.train()

    def stop(self) -> None:
        self.batches = self.loader = None  # the workers exit with their iterator

    def steps(self, epoch: int, n: int) -> None:
        """``n`` calls of :meth:`step` (one timed window)."""
        for _ in range(n):
            self.step(epoch)

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
        return {
            "views": self.views,
            "workers": self.workers,
            "precision": "fp32",
            "pipeline": "PIL + torchvision v1 transforms per image in DataLoader workers",
            "mean_loss": self.loss_sum / max(self.loss_steps, 1),
        }


class _DeepclustSide:
    """The real trainer's step path (``Trainer._train_epoch`` on device-resident images)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.images = trainer.train_data.images.to(trainer.device)
        trainer.method.setup(_setup_images(self.images, trainer.info.n_clusters))
        self.logs: dict[str, float] = {}
        self.epoch = 0
        self.warmup_s: float | None = None  # the first warm-up: torch.compile's compile time is in it

    def steps(self, n: int) -> None:
        # one "epoch" of n steps; it ends with one host sync (the epoch's logs)
        self.epoch += 1
        self.logs = self.trainer._train_epoch(self.images, self.epoch, n)

    def warm(self, n: int) -> None:
        t0 = time.perf_counter()
        self.steps(n)
        sync_device(self.trainer.device)
        if self.warmup_s is None:
            self.warmup_s = round(time.perf_counter() - t0, 2)

    def info(self) -> dict[str, Any]:
        t = self.trainer
        fast = getattr(t, "fast", None)
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[t.amp]
        return {
            "precision": amp,
            "precision_reason": t.precision.reason,
            "fast_paths": fast.as_dict() if fast is not None else {},
            "first_warmup_s": self.warmup_s,
            "pipeline": "device-resident uint8, batched on-device augmentation",
            "mean_loss": self.logs.get("loss"),
        }


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Windows of several rounds: the median over all of them, the largest peak memory."""
    rates = [r for p in parts for r in p["window_images_per_s"]]
    return {
        "images_per_s": round(statistics.median(rates), 2),
        "window_images_per_s": rates,
        "peak_mem_mb": max(p["peak_mem_mb"] for p in parts),
        "peak_mem_kind": parts[0]["peak_mem_kind"],
    }


def variant_config(cfg: Any, overrides: list[str]) -> Any:
    """``cfg`` with ``key=value`` overrides (a variant of a benchmark's deepclust side)."""
    from deepclust.config import deep_merge, parse_override, resolve_config

    raw = cfg.to_dict()
    for item in overrides:
        raw = deep_merge(raw, parse_override(item))
    return resolve_config(raw)


def bench_throughput(
    cfg: Any,
    warmup: int = 3,
    windows: int = 5,
    steps: int = 5,
    workers: int | None = None,
    reference: bool = True,
    rounds: int = 1,
    variants: dict[str, list[str]] | None = None,
    keep_fp16: bool = False,
) -> dict[str, Any]:
    """Training images/s of deepclust and of the published-style reference on ``cfg``'s data.

    ``rounds`` alternates the sides (deepclust, reference, deepclust, ...), each round with
    ``warmup`` untimed steps and ``windows`` timed windows of ``steps`` steps per side, so a
    change of background load hits both; the median is over all windows of a side. Returns a
    record with ``deepclust`` and ``reference`` entries (images_per_s, the windows, peak_mem_mb,
    ...) and ``speedup`` = deepclust / reference images/s.

    ``variants``: name -> ``key=value`` overrides of ``cfg`` (e.g. ``{"fp32": ["train.amp=off"],
    "bf16": ["train.amp=bf16"]}``): one deepclust side each, timed in the same rounds; the first
    is ``deepclust`` in the record, and ``variants`` holds all of them with their ``speedup``
    over the reference and ``vs_first`` (images/s over the first variant's). ``keep_fp16``: run
    ``train.amp=fp16`` even on a CPU (typed on the command line; engine/amp.py).
    """
    from deepclust.engine.trainer import Trainer

    if warmup < 0 or windows < 1 or steps < 1 or rounds < 1:
        raise ConfigError("bench needs --warmup >= 0, --windows >= 1, --steps >= 1 and --rounds >= 1")
    named = dict(variants or {"deepclust": []})
    if not named:
        raise ConfigError("bench needs at least one variant of the deepclust side")
    with tempfile.TemporaryDirectory(prefix="deepclust-bench-") as tmp:
        trainers = {}
        for i, (name, over) in enumerate(named.items()):
            vcfg = variant_config(cfg, over) if over else cfg
            vcfg.train.out = str(Path(tmp) / f"run{i}")
            trainers[name] = Trainer(vcfg, keep_fp16=keep_fp16)
        trainer = next(iter(trainers.values()))
        cfg = trainer.cfg  # with the concrete backbone and stem
        device, info = trainer.device, trainer.info
        if info.n_features:
            raise DataError("bench compares image pipelines; the data holds feature vectors")
        if not isinstance(trainer.train_data.images, torch.Tensor):
            raise DataError(
                "bench times images held in memory; "
                "this dataset is streamed from disk (benchmarks/stream.py times that)"
            )
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
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
            "warmup_steps": warmup,
            "windows": windows,
            "steps_per_window": steps,
            "rounds": rounds,
        }
        if device.type == "cpu":
            record["cpu_bf16_flags"] = cpu_bf16_flags()
        log.info(
            "bench %s on %s (%s, %d px, batch %d) on %s; deepclust sides: %s",
            cfg.method,
            record["dataset"],
            cfg.model.backbone,
            info.image_size,
            bs,
            device,
            ", ".join(named),
        )
        ours = {name: _DeepclustSide(t) for name, t in trainers.items()}
        ref = _ReferenceSide(cfg, info, trainer.train_data.images, device, n_workers) if reference else None
        ours_parts: dict[str, list[dict[str, Any]]] = {name: [] for name in ours}
        ref_parts = []
        for r in range(rounds):
            for name, side in ours.items():
                log.info("bench round %d/%d: deepclust %s", r + 1, rounds, name)
                if warmup:
                    side.warm(warmup)
                ours_parts[name].append(timed_windows(_window(side, steps), device, windows, steps, bs))
            if ref is not None:
                log.info("bench round %d/%d: reference loop (%d workers)", r + 1, rounds, n_workers)
                ref.start()
                for _ in range(warmup):
                    ref.step(0)
                ref_parts.append(timed_windows(lambda w: ref.steps(w + 1, steps), device, windows, steps, bs))
                ref.stop()
        entries = {
            name: {**_merge(ours_parts[name]), **side.info(), "overrides": named[name]} for name, side in ours.items()
        }
        first = next(iter(entries.values()))
        record["deepclust"] = first
        if ref is not None:
            record["reference"] = {**_merge(ref_parts), **ref.info()}
            record["speedup"] = round(first["images_per_s"] / record["reference"]["images_per_s"], 3)
        if variants:
            for e in entries.values():
                e["vs_first"] = round(e["images_per_s"] / first["images_per_s"], 3)
                if ref is not None:
                    e["speedup"] = round(e["images_per_s"] / record["reference"]["images_per_s"], 3)
            record["variants"] = entries
    return record


def _window(side: _DeepclustSide, steps: int) -> Callable[[int], None]:
    """One timed window of ``side``: ``steps`` steps (bound now, not when the loop variable moves on)."""

    def run(window: int) -> None:
        side.steps(steps)

    return run
