"""IDFD: instance discrimination + feature decorrelation, then k-means.

Tao, Takagi, Nakata, "Clustering-friendly Representation Learning via Instance
Discrimination and Feature Decorrelation", ICLR 2021 (spec/idfd.md).

Per step, with v = normalize(head(backbone(augment(x)))):

    L = L_ID(v, M, idx; tau=1) + alpha * L_FD(v; tau2=2)
    after the optimiser step:  M[idx] <- normalize(mu * M[idx] + (1 - mu) * v.detach())

The memory bank M (N x d) starts Uniform(-s, s), s = 1/sqrt(d/3), and never gets a gradient;
the loss always sees the bank as it was before this batch's update. Clusters are k-means
(n_init 20) on clean features (eval transform, eval mode) or, for parity with the official
code, on the memory bank (``eval.features=memory``).

Under torchrun (deepclust/collectives.py) L_ID is a mean over each process's rows, L_FD sees the
global batch gathered with gradient (pitfall 4), and every process applies the memory update
for the gathered features and indices, so all of them hold the same bank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from deepclust.losses import feature_decorrelation_loss, instance_discrimination_loss
from deepclust.methods.base import ClusteringMethod, DataInfo, StepOutput
from deepclust.models import NormalizedLinear

if TYPE_CHECKING:  # type hints only: config resolution imports the methods, not the reverse
    from deepclust.config import Config


class IDFD(ClusteringMethod):
    """IDFD (see module docstring)."""

    name = "idfd"
    prediction = "kmeans"
    has_memory_bank = True
    # Glyph data: SGD as in the paper; the batch and its rate by glyph_batch.
    glyph_preset = {"optim": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}}

    @classmethod
    def glyph_batch(cls, n_samples: int) -> tuple[int, float]:
        """Batch 16 at every size, at SGD rate 0.05 sqrt(B / 128). IDFD takes no negatives from
        the batch (its memory bank), and its short glyph runs need many small steps: larger
        batches, and the rate 0.1 at batch 128, were worse on every glyph set measured
        (docs/explorations.md, "The glyph preset")."""
        b = 16
        return b, 0.05 * math.sqrt(b / 128)

    @dataclass
    class Options(ClusteringMethod.Options):
        temperature: float = 1.0  # tau, instance discrimination
        fd_temperature: float = 2.0  # tau2, feature decorrelation
        fd_weight: float = 1.0  # alpha
        memory_momentum: float = 0.5  # mu

    opts: Options  # this method's method_args (the base class builds it from cfg.method_args)
    # buffers, registered in __init__ (checkpointed with the model)
    memory: torch.Tensor

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "optim": {"name": "sgd", "lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step"},
            "eval": {"n_init": 20},
        }

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        self.backbone = self.build_backbone()
        d = cfg.model.feature_dim
        self.head = NormalizedLinear(self.backbone.out_dim, d)
        s = 1.0 / math.sqrt(d / 3.0)
        g = torch.Generator().manual_seed(cfg.train.seed)
        # Uniform(-s, s): expected squared row norm exactly 1 (rows are not normalised yet).
        self.register_buffer("memory", (torch.rand(info.n_samples, d, generator=g) * 2 - 1) * s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> StepOutput:
        v = self(self.view(self.augment, images, indices))
        # L_ID is a mean over this process's rows (the trainer's gradient average makes it the
        # global mean); FD normalises columns over the batch, so it sees the global batch
        # (pitfall 4), and the memory update uses every process's features and indices.
        l_id = instance_discrimination_loss(v, self.memory, indices, self.opts.temperature)
        v_all = self.dist.gather_with_grad(v)
        l_fd = feature_decorrelation_loss(v_all, self.opts.fd_temperature)
        loss = l_id + self.opts.fd_weight * l_fd
        state = {"v": v_all.detach(), "idx": self.dist.gather(indices)}
        return StepOutput(loss, {"loss_id": l_id.detach(), "loss_fd": l_fd.detach()}, state)

    @torch.no_grad()
    def after_optimizer_step(self, out: StepOutput) -> None:
        idx, v = out.state["idx"], out.state["v"].float()
        mu = self.opts.memory_momentum
        self.memory[idx] = F.normalize(mu * self.memory[idx] + (1 - mu) * v, dim=1)

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self(x).float(), None

    def memory_bank(self) -> torch.Tensor:
        return self.memory
