"""The thin base class every method derives from.

A method holds its networks and its state (memory bank, centres, dual variables) as an
``nn.Module`` so that ``state_dict`` checkpoints all of it, and implements one training step.
The trainer owns the loop, the optimiser, mixed precision and checkpoints; the method owns
what is specific to the paper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from deepclust.augment import Augment, EvalTransform
from deepclust.config import Config
from deepclust.models import auto_backbone, create_backbone


@dataclass
class StepOutput:
    """What a training step returns: the loss to back-propagate, tensors to log, and any
    state the method needs after the optimiser step (e.g. IDFD's features for the memory)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class DataInfo:
    """What a method needs to know about its training data."""

    n_samples: int
    n_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    n_clusters: int


class ClusteringMethod(nn.Module):
    """Base class. Subclasses set ``name``, ``prediction`` and ``Options`` and implement
    :meth:`training_step` and :meth:`infer`."""

    name: ClassVar[str] = ""
    #: "kmeans" (k-means on :meth:`infer` features) or "head_argmax" (argmax of its probabilities)
    prediction: ClassVar[str] = "kmeans"

    @dataclass
    class Options:
        pass

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Config values this method changes from the generic defaults (a nested dict)."""
        return {}

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.opts = self.Options(**cfg.method_args)
        size = info.image_size
        self.augment = Augment(cfg.augment, size, info.mean, info.std)
        self.eval_transform = EvalTransform(size, info.mean, info.std)

    # ----- construction helpers -------------------------------------------------------------
    def build_backbone(self) -> nn.Module:
        name, stem = self.cfg.model.backbone, self.cfg.model.stem
        auto_name, auto_stem = auto_backbone(self.info.image_size, self.info.n_channels)
        name = auto_name if name == "auto" else name
        return create_backbone(
            name, self.info.n_channels, auto_stem if stem == "auto" else stem, width=self.cfg.model.width
        )

    # ----- hooks the trainer calls ----------------------------------------------------------
    def setup(self, train_images: torch.Tensor) -> None:
        """Called once before the first epoch with the uint8 training images on the device."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every epoch (0-based)."""

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> StepOutput:
        """One step on uint8 images (B, C, H, W) on the device with their instance indices."""
        raise NotImplementedError

    def after_optimizer_step(self, out: StepOutput) -> None:
        """Called after ``optimizer.step()`` (memory-bank updates and the like)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; by default everything at the config's learning rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def lr_scale(self, epoch: int, it: int, iters_per_epoch: int, factor: float) -> float:
        """The schedule's multiplier for scheduled parameter groups; methods with their own
        schedule (SeCu's frozen epoch 0) override it. Groups with ``scheduled=False`` keep
        their base rate."""
        return factor

    def evaluation_extras(self, features: torch.Tensor, y_true: torch.Tensor | None) -> dict[str, Any]:
        """Extra, clearly named results for the record (e.g. over-clustering heads scored with
        ``acc_many_to_one``, or a second prediction type). ``features`` are :meth:`infer`'s
        first output on the evaluated images; ``y_true`` their labels (-1 = unknown) or None."""
        return {}

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eval-mode outputs for normalised images: (features for k-means, probabilities or None)."""
        raise NotImplementedError

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.opts)
