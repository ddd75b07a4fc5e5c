"""The thin base class every method derives from.

A method holds its networks and its state (memory bank, centres, dual variables) as an
``nn.Module`` so that ``state_dict`` checkpoints all of it, and implements one training step.
The trainer owns the loop, the optimiser, mixed precision and checkpoints; the method owns
what is specific to the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from deepclust.augment import Augment, EvalTransform, FeatureAugment, FeatureEvalTransform
from deepclust.cluster.neighbors import nearest_neighbors
from deepclust.collectives import SINGLE_PROCESS, Collectives
from deepclust.errors import ConfigError
from deepclust.models import Backbone, create_backbone, resolve_model

if TYPE_CHECKING:  # type hints only: config resolution imports the methods, not the reverse
    from deepclust.config import Config


@dataclass
class StepOutput:
    """What a training step returns: the loss to back-propagate, tensors to log, and any
    state the method needs after the optimiser step (e.g. IDFD's features for the memory)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class DataInfo:
    """What a method needs to know about its training data.

    Feature mode (precomputed vectors instead of images): ``n_features`` = D > 0,
    ``feature_mean`` / ``feature_std`` the per-dimension training statistics; the image
    fields then hold placeholders (1 channel, size 1, mean 0, std 1).
    """

    n_samples: int
    n_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    n_clusters: int
    n_features: int = 0  # 0: images
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None


class ClusteringMethod(nn.Module):
    """Base class: everything the engine uses of a method is declared here.

    A subclass sets ``name`` (its registry key), ``prediction`` and ``Options``, assigns
    ``self.backbone`` in ``__init__`` (``self.build_backbone()`` builds the configured one), and
    implements :meth:`training_step` and :meth:`infer`. The other hooks have defaults that do
    nothing; override those the paper needs (``setup``, ``on_epoch_start``,
    ``after_optimizer_step``, ``param_groups``, ``lr_scale``, ``evaluation_extras``,
    ``memory_bank``, ``head_centers``, ``defaults``). What the configuration needs to know of a
    method without building it is declared as class attributes (``accepts_images``,
    ``has_memory_bank``, ``glyph_preset``, ``glyph_batch``), so presets.py and config_rules.py
    name no method. The trainer runs ``training_step`` under
    the configured autocast; a method computes its precision-sensitive parts in fp32 itself.

    Feature mode (``info.n_features`` > 0): every :class:`Augment` a method assigns to an
    attribute becomes a :class:`FeatureAugment` (noise + dropout on standardised features) and
    every :class:`EvalTransform` a :class:`FeatureEvalTransform` (standardisation), and the
    backbone is the MLP, so the methods run on feature vectors unchanged. Image-specific view
    settings (SeCu's per-view blur/solarize, AnchorCL's un-normalised input) do not apply there.
    """

    name: ClassVar[str] = ""
    #: "kmeans" (k-means on :meth:`infer` features) or "head_argmax" (argmax of its probabilities)
    prediction: ClassVar[str] = "kmeans"
    #: initialisation of a ResNet's stem convolution: "default" (PyTorch's, IDFD's code) or
    #: "kaiming" (normal, fan-out, as SCAN's and SeCu's ResNets)
    stem_init: ClassVar[str] = "default"
    # ----- distributed (torchrun): global-batch gathers; the trainer sets its handle here ---------
    #: single process by default, whose gathers return their input (see deepclust/collectives.py)
    dist: Collectives = SINGLE_PROCESS
    #: the network that maps (normalised) inputs to features; ``model.init`` loads its weights and
    #: the fast paths (channels-last, ``torch.compile``) apply to it. Every method assigns it.
    backbone: Backbone
    #: the head whose probabilities :meth:`infer` returns and the record names (SeCu: the K = k one)
    eval_head: int = 0
    #: False for a method that clusters feature vectors only (SCAN: neighbours of a pretrained
    #: embedding); create_method then refuses images with one line that says to embed them first
    accepts_images: ClassVar[bool] = True
    #: True for a method whose :meth:`memory_bank` holds an (N, D) per-sample memory (IDFD);
    #: ``eval.features=memory`` is refused for the others (config_rules)
    has_memory_bank: ClassVar[bool] = False
    #: False for a method whose quality under bf16 autocast left the 2-point band of its float32
    #: cells in the bf16 quality matrix (docs/speed.md): ``train.amp=auto`` (and a config's fp16)
    #: then trains it in float32 on a CPU with bf16 units; ``train.amp=bf16`` still runs bf16
    cpu_auto_bf16: ClassVar[bool] = True
    # ----- the glyph preset (presets.py, ``defaults: glyph``: one channel, <= 32 px) ---------------
    #: what this method changes in the shared glyph preset: section -> {field: value}, each section
    #: a flat dict merged over the preset's own. The values were chosen with
    #: benchmarks/quality_matrix.py; the figures are in docs/explorations.md and docs/records.md
    #: (generated from benchmarks/results/), not in the code.
    glyph_preset: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @classmethod
    def glyph_batch(cls, n_samples: int) -> tuple[int, float] | None:
        """The batch size and learning rate on glyph data of ``n_samples`` (> 0) images, for a
        method whose batch follows the data's size; ``None`` (the default) leaves both to
        :attr:`glyph_preset` and :meth:`defaults`. The preset rounds the rate to 6 decimals."""
        return None

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

    def __setattr__(self, name: str, value: Any) -> None:
        # Feature mode: swap image pipelines for their feature-space versions at assignment,
        # so a method that builds its own views (SeCu, AnchorCL) needs no feature branch.
        info = self.__dict__.get("info")
        if info is not None and info.n_features and isinstance(value, (Augment, EvalTransform)):
            value = self._feature_pipeline(value)
        super().__setattr__(name, value)

    def _feature_pipeline(self, pipeline: nn.Module) -> nn.Module:
        mean, std = self.info.feature_mean, self.info.feature_std
        if mean is None or std is None:
            raise ConfigError("feature mode needs DataInfo.feature_mean and feature_std (the training statistics)")
        aug = self.cfg.augment
        if isinstance(pipeline, Augment):
            # AugmentConfig.__post_init__ resolves a None noise / dropout to its default number
            assert aug.feature_noise is not None and aug.feature_dropout is not None
            return FeatureAugment(
                mean,
                std,
                noise_std=aug.feature_noise,
                dropout=aug.feature_dropout,
                l2=aug.feature_l2,
                views=aug.feature_views,
                neighbors=aug.neighbors,
            )
        return FeatureEvalTransform(mean, std, l2=aug.feature_l2)

    def view(self, pipeline: nn.Module, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """One augmented view of the batch through ``pipeline``. Neighbour views (feature mode)
        need the batch's instance indices: the view of sample i is one of its neighbours."""
        if isinstance(pipeline, FeatureAugment):
            return pipeline(images, indices)
        return pipeline(images)

    def bind_views(self, train_features: torch.Tensor) -> None:
        """Called by the trainer at the start of every fit (a resumed one too) with what
        :meth:`setup` sees. Feature mode with neighbour views: mine the ``augment.neighbors``
        nearest neighbours of every training vector once (cluster/neighbors.py, exact, float32,
        on the device) and hand them, with the features, to every neighbour pipeline. The table
        is a function of the data alone, so a resumed run gets the same one."""
        pipes = [m for m in self.modules() if isinstance(m, FeatureAugment) and m.uses_neighbors]
        if not pipes:
            return
        x = torch.as_tensor(train_features).float()
        device = next((b.device for b in pipes[0].buffers()), x.device)
        x = x.to(device)
        knn = nearest_neighbors(x, pipes[0].neighbors)
        for p in pipes:
            p.bind(x, knn)

    def release_views(self) -> None:
        """Called by the trainer when training ends: the neighbour pipelines drop the training
        features and the table, so a fitted model (a pickled estimator) does not carry them."""
        for m in self.modules():
            if isinstance(m, FeatureAugment):
                m.table = m.knn = None

    # ----- construction helpers -------------------------------------------------------------
    def build_backbone(self) -> Backbone:
        info = self.info
        # The trainer passes concrete names (engine/setup.py resolve_auto_model); a method built
        # directly from an ``auto`` config resolves them here, by the same rule.
        name, stem = resolve_model(self.cfg.model, info)
        if info.n_features and name != "mlp":
            raise ConfigError(
                f"backbone '{name}' needs images but the data are feature vectors of length {info.n_features}; "
                "use backbone 'mlp' (or 'auto')"
            )
        # The MLP reads feature vectors, or flattened images (C x H x W) when chosen for images.
        in_dim = info.n_features or info.n_channels * info.image_size * info.image_size
        return create_backbone(
            name,
            info.n_channels,
            stem,
            in_dim=in_dim,
            width=self.cfg.model.width,
            stem_init=self.stem_init,
        )

    # ----- hooks the trainer calls ----------------------------------------------------------
    def setup(self, train_images: torch.Tensor) -> None:
        """Called once before the first epoch with the uint8 training images (float (N, D) features
        in feature mode) on the device."""

    def bind_data(self, train_images: torch.Tensor) -> None:
        """Called at the start of every fit, a resumed one too (before :meth:`setup` on a fresh
        run), with what ``setup`` sees: for a method that reads the training images again later
        (AnchorCL's centre re-initialisation). The default keeps nothing."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every epoch (0-based)."""

    def stream_views(self) -> list[nn.Module]:
        """The pipelines :meth:`training_step` calls on its batch, in call order, once per call:
        streamed data arrive with one view cut per entry (augment/views.py)."""
        return [self.augment]

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> StepOutput:
        """One step on uint8 images (B, C, H, W) (float (B, D) in feature mode) on the device with
        their instance indices."""
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
        """Eval-mode outputs for normalised images: (features for k-means, probabilities or None).
        The features are the method's feature source for k-means (``prediction="kmeans"``), the
        estimator's ``transform`` and the reports; probabilities are required for ``head_argmax``."""
        raise NotImplementedError

    def memory_bank(self) -> torch.Tensor | None:
        """The (N, D) per-sample memory that ``eval.features=memory`` clusters (IDFD), or None."""
        return None

    def head_centers(self) -> tuple[torch.Tensor, float] | None:
        """The (K, D) centres of the prediction head and their softmax temperature, where the head
        is a cosine classifier (SeCu); self-labelling starts its classifier from them. None: it
        starts from the soft centroids of :meth:`infer`'s probabilities instead."""
        return None
