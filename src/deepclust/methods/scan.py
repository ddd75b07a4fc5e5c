"""SCAN on feature vectors: the field's reference head for pretrained embeddings.

Van Gansbeke, Vandenhende, Georgoulis, Proesmans, Van Gool, "SCAN: Learning to Classify Images
without Labels", ECCV 2020. SCAN's clustering step trains a cluster head so that every sample
and its nearest neighbours in a pretext embedding are assigned to the same cluster
(losses/scan.py):

    L = -1/|B| sum_X log <Phi(X), Phi(k)> + lambda * sum_c Phi'_c log Phi'_c,   k ~ N(X)

Here the embedding is the input itself (a pretrained network's features, ``deepclust embed``
or any (N, D) array): the anchor is a sample's clean view and the neighbour view is one of its
``augment.neighbors`` nearest neighbours in the L2-normalised embedding, mined once per run
(augment/features.py, cluster/neighbors.py). Phi is an MLP (model.backbone ``mlp``) followed
by ``n_heads`` linear heads trained side by side; as in the paper, the head with the lowest
total loss (here over the last epoch) makes the prediction. Settings follow the paper's
CIFAR config: lambda 5, 20 neighbours, Adam 1e-4 with weight decay 1e-4, 10 heads; the
learning rate and epochs are the library's for an MLP on frozen features (method defaults).
SCAN's self-labelling step is ``deepclust selflabel``.

Not reconstructed: SCAN fine-tunes the pretext backbone on augmented images; on frozen
embeddings there is no image to augment, so only the MLP and the heads learn. Images need a
pretrained embedding first (``--features``), so this method accepts feature vectors only.
Precision: the network runs under the configured autocast; the loss in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from deepclust.augment import FeatureAugment
from deepclust.errors import ConfigError
from deepclust.losses.scan import scan_loss
from deepclust.methods.base import ClusteringMethod, DataInfo, StepOutput
from deepclust.precision import fp32

if TYPE_CHECKING:
    from deepclust.config import Config


class SCAN(ClusteringMethod):
    name = "scan"
    prediction = "head_argmax"
    accepts_images = False  # neighbours of an embedding: images are embedded first (--features)

    @dataclass
    class Options(ClusteringMethod.Options):
        entropy_weight: float = 5.0
        n_heads: int = 10

    opts: Options  # this method's method_args (the base class builds it from cfg.method_args)
    # buffers, registered in __init__ (checkpointed with the model)
    head_loss: torch.Tensor
    last_head_loss: torch.Tensor

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine"},
            "train": {"batch_size": 256},
            "model": {"backbone": "mlp"},
        }

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        o = self.opts
        if not isinstance(self.augment, FeatureAugment) or not self.augment.uses_neighbors:
            raise ConfigError("method 'scan' needs neighbour views; set augment.feature_views=neighbors")
        if o.entropy_weight < 0 or o.n_heads < 1:
            raise ConfigError("method_args.entropy_weight must be >= 0 and n_heads >= 1")
        self.backbone = self.build_backbone()
        self.heads: nn.ModuleList = nn.ModuleList(
            nn.Linear(self.backbone.out_dim, info.n_clusters) for _ in range(o.n_heads)
        )
        # each head's summed loss over the current epoch (checkpointed, so resume picks the same head)
        self.register_buffer("head_loss", torch.zeros(o.n_heads))
        self.register_buffer("last_head_loss", torch.zeros(o.n_heads))

    @property
    def eval_head(self) -> int:  # type: ignore[override]  # a read-only property replaces the base's int attribute
        """The head with the lowest loss over the last finished epoch (SCAN's selection)."""
        src = self.head_loss if bool(self.head_loss.any()) else self.last_head_loss
        return int(src.argmin())

    def on_epoch_start(self, epoch: int) -> None:
        if bool(self.head_loss.any()):
            self.last_head_loss.copy_(self.head_loss)
        self.head_loss.zero_()

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> StepOutput:
        b = images.shape[0]
        x = torch.cat([self.eval_transform(images), self.view(self.augment, images, indices)])
        h = self.backbone(x)
        # Under torchrun the loss sees the global batch (gathered with gradient), as CDC's does.
        g = self.dist.gather_with_grad
        totals, cons, ents = zip(
            *(scan_loss(g(z[:b]), g(z[b:]), self.opts.entropy_weight) for z in (head(h) for head in self.heads)),
            strict=True,
        )
        per_head = torch.stack(totals)
        best = int(self.eval_head)
        logs = {"consistency": cons[best].detach(), "entropy": ents[best].detach()}
        return StepOutput(per_head.sum(), logs, {"per_head": per_head.detach()})

    @torch.no_grad()
    def after_optimizer_step(self, out: StepOutput) -> None:
        self.head_loss += out.state["per_head"].to(self.head_loss)

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.backbone(x)
        logits = self.heads[self.eval_head](h)
        with fp32(logits):
            return h.float(), F.softmax(logits.float(), dim=1)
