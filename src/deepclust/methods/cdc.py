"""CDC: contrastive representation disentanglement for clustering -- RECONSTRUCTED.

Ding, Zhang, Yang, Krovi, Luo, "Contrastive Representation Disentanglement for Clustering",
arXiv 2306.05439 (v1: "CLC: Cluster Assignment via Contrastive Representation Learning"),
2023 (spec/cdc.md). The paper's body was not available: this is the spec's reconstruction
consistent with the abstract (section 3), NOT the paper's verified method, and the library
makes no claim of reproducing its numbers. Every open choice is an option below.

Network (spec 3.1). Backbone f gives h; the categorical head gives the cluster probabilities
p = softmax(l / t_c), l_k = normalize(g_c(h)) . normalize(w_k) (cosine logits to K learnable
prototypes; ``cat_head="linear"``: l = Linear(g_c(h))); the instance head gives
z = normalize(g_z(h)) in R^d (d = ``model.feature_dim``, 128). g_c, g_z: 2-layer MLPs.

Loss per step, two augmented views of each image (spec 3.2-3.6):

    L = L_con(p1, z1, p2, z2; tau_p, tau_z) + lambda_eq * L_eq
    s(a, b) = p_a.p_b / tau_p + z_a.z_b / tau_z   -> NT-Xent-style InfoNCE over the 2B views
    L_eq (sinkhorn, target) = swapped prediction against Sinkhorn targets Q (stop-gradient),
        Q from the detached cosine logits of the batch (+ the queue's rows, recomputed with
        the current prototypes, which only help the balancing: spec 3.8)

Prediction: argmax_k p_k (``prediction = "head_argmax"``); :meth:`infer` returns
(backbone features h, or z with ``infer_features="instance"``; p).

Options (spec 3.7 defaults; all *reconstruction* / library choices, to be replaced by the
paper's values once read):

- ``combine`` = "additive": s = p.p/tau_p + z.z/tau_z (Reading A). "multiplicative":
  s = log(p.p + mult_eps) + z.z/tau_z (Reading B; ``mult_eps`` = 1e-6, tau_p unused).
- ``equipartition`` = "sinkhorn": Sinkhorn-Knopp equipartition (SwAV). "entropy": marginal
  entropy L_eq = entropy_weight * sum_k pbar_k log(K pbar_k) (CC/SCAN). "none": no constraint.
- ``sinkhorn_mode`` = "target": Q are stop-gradient targets of a swapped-prediction term.
  "similarity": the balanced Q replaces p inside s(a, b), back-propagated through the
  unrolled iterations (no separate L_eq term then).
- ``sinkhorn_iters`` = 3, ``sinkhorn_eps`` = 0.05 (SwAV's; eps assumes cosine logits in [-1, 1],
  re-tune it with ``cat_head="linear"``).
- ``tau_p`` = 1.0, ``tau_z`` = 0.5 (0.2-1.0 are reasonable for tau_z).
- ``t_c`` = 0.1: softmax temperature of p.
- ``lambda_eq`` = 1.0: weight of L_eq; ``entropy_weight`` = 1.0: lambda_H of the entropy form.
- ``cat_head`` = "cosine" (prototypes) or "linear"; ``cat_dim`` = 128 (width of g_c's output,
  library choice); ``hidden_dim`` = 512 (hidden width of both MLP heads, library choice).
- ``queue_size`` = 0: a queue of the last ``queue_size`` images' categorical embeddings
  g_c(h) (and z), filled from view 1 after every step. Their scores are recomputed with the
  current head and join the Sinkhorn normalisation only, so K much larger than the batch
  (ImageNet-1k: K=1000 with a queue of >= 4096) still gets a balanced assignment. A warning is
  logged when batch + queue < 4 K. ``queue_start_epoch`` = 0: first epoch the queue is used
  (SwAV starts it late); rows fill as training goes, only filled rows are used.
- ``queue_negatives`` = False: also use the queued (p, z) as extra stop-gradient negatives
  in L_con (MoCo style; p recomputed with the current head).
- ``infer_features`` = "backbone" (h) or "instance" (z): the features ``infer`` returns
  beside p (for ``transform`` / k-means users; the prediction itself is argmax p).
- ``init_from`` of the spec is the engine's ``model.init`` (the CLI flag ``--init``: a deepclust
  run, a torchvision state dict, a MoCo v2/v3, DINO or SwAV ResNet checkpoint, or
  ``torchvision:NAME.WEIGHTS``; see models/init.py): scratch for the small datasets, an SSL
  checkpoint for ImageNet-1k.

Under torchrun (deepclust/collectives.py) the contrastive loss and the entropy term use the
global batch gathered with gradient, Sinkhorn balances the gathered scores, and the queue
receives the global batch, so N processes compute what one process on the global batch does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from deepclust.augment import THICKEN_HALF
from deepclust.cluster import sinkhorn
from deepclust.errors import ConfigError
from deepclust.losses.cdc import (
    cdc_contrastive_loss,
    cdc_entropy_loss,
    cdc_sinkhorn_soft,
    cdc_swapped_prediction_loss,
)
from deepclust.methods.base import ClusteringMethod, DataInfo, StepOutput
from deepclust.models import mlp_projector
from deepclust.precision import fp32, full

if TYPE_CHECKING:  # type hints only: config resolution imports the methods, not the reverse
    from deepclust.config import Config

log = logging.getLogger(__name__)

_CHOICES = {
    "combine": ("additive", "multiplicative"),
    "equipartition": ("sinkhorn", "entropy", "none"),
    "sinkhorn_mode": ("target", "similarity"),
    "cat_head": ("cosine", "linear"),
    "infer_features": ("backbone", "instance"),
}


class CDC(ClusteringMethod):
    """CDC, reconstructed from the abstract (see the module docstring for every option)."""

    name = "cdc"
    prediction = "head_argmax"
    # Its bf16 mnist-5k cell stays well below float32 even with z normalised in float32 and both
    # heads in float32 (the loss is in the bf16 backbone's dynamics, docs/methods/cdc.md), so
    # train.amp=auto keeps CDC in float32 on the CPU (docs/speed.md).
    cpu_auto_bf16 = False
    glyph_preset = {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        "train": {"batch_size": 256},
        "augment": dict(THICKEN_HALF),
        # tau_p 0.5: the categorical weight exp(p_a.p_b / tau_p) spans [1, e^2] instead of [1, e]
        # (Reading A, spec cdc.md 3.2); with 1.0 the head fell below k-means on Fashion-MNIST
        # (docs/explorations.md, "CDC's tau_p")
        "method_args": {"tau_p": 0.5},
    }

    @dataclass
    class Options(ClusteringMethod.Options):
        combine: str = "additive"
        equipartition: str = "sinkhorn"
        sinkhorn_mode: str = "target"
        sinkhorn_iters: int = 3
        sinkhorn_eps: float = 0.05
        tau_p: float = 1.0
        tau_z: float = 0.5
        t_c: float = 0.1
        lambda_eq: float = 1.0
        entropy_weight: float = 1.0
        mult_eps: float = 1e-6
        cat_head: str = "cosine"
        cat_dim: int = 128
        hidden_dim: int = 512
        queue_size: int = 0
        queue_start_epoch: int = 0
        queue_negatives: bool = False
        infer_features: str = "backbone"

    opts: Options  # this method's method_args (the base class builds it from cfg.method_args)
    # buffers, registered in __init__ (checkpointed with the model)
    queue_u: torch.Tensor
    queue_z: torch.Tensor
    queue_ptr: torch.Tensor
    queue_len: torch.Tensor

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        # The CC recipe (spec 3.7): Adam 3e-4, no weight decay, constant rate, batch 256,
        # SimCLR-style views with jitter strength s = 0.5 (as anchor.md section 5).
        return {
            "optim": {"name": "adam", "lr": 3e-4, "weight_decay": 0.0, "schedule": "constant"},
            "train": {"batch_size": 256},
            "augment": {
                "crop_scale": [0.08, 1.0],
                "flip_p": 0.5,
                "jitter": [0.4, 0.4, 0.4, 0.1],
                "jitter_p": 0.8,
                "grayscale_p": 0.2,
            },
        }

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        o = self.opts
        for key, allowed in _CHOICES.items():
            if getattr(o, key) not in allowed:
                raise ConfigError(f"method_args.{key} must be one of {', '.join(allowed)}, got {getattr(o, key)!r}")
        for key in ("tau_p", "tau_z", "t_c", "sinkhorn_eps"):
            if getattr(o, key) <= 0:
                raise ConfigError(f"method_args.{key} must be positive, got {getattr(o, key)}")
        if o.sinkhorn_iters < 0 or o.queue_size < 0 or o.queue_start_epoch < 0:
            raise ConfigError("method_args.sinkhorn_iters, queue_size and queue_start_epoch must be >= 0")
        k = info.n_clusters
        self.backbone = self.build_backbone()
        h = self.backbone.out_dim
        self.cat_proj = mlp_projector(h, o.hidden_dim, o.cat_dim)
        if o.cat_head == "cosine":
            # Prototypes w_k, normalised in the forward pass (cosine logits in [-1, 1]).
            self.prototypes = nn.Parameter(torch.randn(k, o.cat_dim))
        else:
            self.cat_fc = nn.Linear(o.cat_dim, k)
        d = cfg.model.feature_dim
        self.inst_proj = mlp_projector(h, o.hidden_dim, d)
        # The queue (spec 3.8) lives in buffers so checkpoints and resume carry it.
        self.register_buffer("queue_u", torch.zeros(o.queue_size, o.cat_dim))
        self.register_buffer("queue_z", torch.zeros(o.queue_size, d))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        if o.equipartition == "sinkhorn" and cfg.train.batch_size + o.queue_size < 4 * k:
            log.warning(
                "cdc: batch %d + queue %d < 4 x %d clusters: the Sinkhorn equipartition is noisy; "
                "raise method_args.queue_size (e.g. to %d) or the batch size",
                cfg.train.batch_size,
                o.queue_size,
                k,
                max(4096, 4 * k),
            )

    # ----- the network -------------------------------------------------------------------------
    def logits(self, u: torch.Tensor) -> torch.Tensor:
        """Categorical logits l from embeddings u = g_c(h): cosine to the prototypes or linear.

        Float32 with autocast off: p = softmax(l / t_c) with t_c = 0.1 multiplies any bf16
        rounding of l by 10, and Sinkhorn divides l by 0.05.
        """
        with fp32(u):
            u = full(u)
            if self.opts.cat_head == "cosine":
                return F.normalize(u, dim=1) @ F.normalize(full(self.prototypes), dim=1).t()
            return self.cat_fc(u)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.backbone(x)
        u = self.cat_proj(h)
        return {"h": h, "u": u, "logits": self.logits(u), "z": self.instance(h)}

    def instance(self, h: torch.Tensor) -> torch.Tensor:
        """The instance embedding z = normalize(g_z(h)), float32.

        g_z's layers follow the caller's autocast (bf16 matmuls); the L2 normalisation runs in
        float32 with autocast off: in bf16 it rounded z to 8 bits and put the gradient through the
        norm off for views that lie close together (L_con reads z.z / tau_z). What that did to
        accuracy, and the gap that remains, is in docs/methods/cdc.md (Precision).
        """
        v = self.inst_proj(h)
        with fp32(v):
            return F.normalize(full(v), dim=1)

    # ----- equipartition -----------------------------------------------------------------------
    def _use_queue(self, epoch: int) -> bool:
        return self.opts.queue_size > 0 and epoch >= self.opts.queue_start_epoch and int(self.queue_len) > 0

    def _queue_scores(self, epoch: int) -> torch.Tensor | None:
        """The queued embeddings' logits under the current head (no gradient), or None."""
        if not self._use_queue(epoch):
            return None
        with torch.no_grad():
            return self.logits(self.queue_u[: int(self.queue_len)].to(self.queue_u.dtype)).float()

    def sinkhorn_targets(self, logits: torch.Tensor, queue_scores: torch.Tensor | None = None) -> torch.Tensor:
        """Sinkhorn targets (B, K) of a batch's detached logits, balanced jointly with the queue's
        rows (which are then dropped: spec 3.6, only the batch rows become targets)."""
        s = logits.detach().float()
        if queue_scores is not None:
            s = torch.cat([s, queue_scores.float()])
        return sinkhorn(s, self.opts.sinkhorn_iters, self.opts.sinkhorn_eps)[: logits.shape[0]]

    # ----- training ------------------------------------------------------------------------------
    def stream_views(self) -> list[nn.Module]:
        return [self.augment, self.augment]

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> StepOutput:
        o = self.opts
        b = images.shape[0]
        x = torch.cat([self.view(self.augment, images, indices), self.view(self.augment, images, indices)])
        out = self(x)
        logits = out["logits"].float()
        l1, l2 = logits[:b], logits[b:]
        z1, z2 = out["z"][:b], out["z"][b:]
        with fp32(logits):  # softmax at temperature t_c < 1: float32, autocast off
            p1, p2 = F.softmax(l1 / o.t_c, dim=1), F.softmax(l2 / o.t_c, dim=1)
        # Under torchrun the contrastive loss, the entropy and Sinkhorn see the global batch
        # (gathered, with gradient where the loss needs it); with one process these are no-ops.
        gather = self.dist.gather_with_grad
        mine = self.dist.local_rows(b)
        q_scores = self._queue_scores(epoch)
        zero = logits.new_zeros(())
        l_eq = zero
        if o.equipartition == "sinkhorn" and o.sinkhorn_mode == "similarity":
            # The balanced Q stands in for p inside s(a, b); gradients run through the iterations.
            extra = [] if q_scores is None else [q_scores]
            g1, g2 = gather(l1), gather(l2)
            c1 = cdc_sinkhorn_soft(torch.cat([g1, *extra]), o.sinkhorn_iters, o.sinkhorn_eps)[: g1.shape[0]]
            c2 = cdc_sinkhorn_soft(torch.cat([g2, *extra]), o.sinkhorn_iters, o.sinkhorn_eps)[: g2.shape[0]]
        else:
            c1, c2 = gather(p1), gather(p2)
            if o.equipartition == "sinkhorn":
                # Sinkhorn balances the global batch's scores; each process keeps its rows.
                q1 = self.sinkhorn_targets(self.dist.gather(l1.detach()), q_scores)[mine]
                q2 = self.sinkhorn_targets(self.dist.gather(l2.detach()), q_scores)[mine]
                with fp32(logits):
                    lp1, lp2 = F.log_softmax(l1 / o.t_c, dim=1), F.log_softmax(l2 / o.t_c, dim=1)
                l_eq = cdc_swapped_prediction_loss(lp1, lp2, q1, q2)
            elif o.equipartition == "entropy":
                l_eq = o.entropy_weight * cdc_entropy_loss(c1, c2)
        neg_p = neg_z = None
        if o.queue_negatives and q_scores is not None:
            with fp32(q_scores):
                neg_p = F.softmax(q_scores / o.t_c, dim=1)
            neg_z = self.queue_z[: int(self.queue_len)]
        l_con = cdc_contrastive_loss(
            c1,
            gather(z1),
            c2,
            gather(z2),
            o.tau_p,
            o.tau_z,
            combine=o.combine,
            eps=o.mult_eps,
            neg_p=neg_p,
            neg_z=neg_z,
        )
        loss = l_con + o.lambda_eq * l_eq
        logs = {
            "loss_con": l_con.detach(),
            "loss_eq": l_eq.detach(),
            "p_max": p1.detach().max(dim=1).values.mean(),  # confidence of the cluster head
        }
        # The queue receives the global batch (view 1), in rank order = the one-process order.
        state = (
            {"u": self.dist.gather(out["u"][:b].detach()), "z": self.dist.gather(z1.detach())}
            if o.queue_size > 0
            else {}
        )
        return StepOutput(loss, logs, state)

    @torch.no_grad()
    def after_optimizer_step(self, out: StepOutput) -> None:
        if "u" in out.state:
            self.enqueue(out.state["u"], out.state["z"])

    @torch.no_grad()
    def enqueue(self, u: torch.Tensor, z: torch.Tensor) -> None:
        """Write a batch's (g_c(h), z) into the ring buffer, overwriting the oldest rows."""
        size = self.opts.queue_size
        if size == 0:
            return
        u, z = u[-size:], z[-size:]  # a batch larger than the queue keeps its last rows
        n = u.shape[0]
        pos = (int(self.queue_ptr) + torch.arange(n, device=self.queue_u.device)) % size
        self.queue_u[pos] = u.to(self.queue_u.dtype)
        self.queue_z[pos] = z.to(self.queue_z.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)
        self.queue_len.fill_(min(size, int(self.queue_len) + n))

    # ----- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self(x)
        with fp32(out["logits"]):
            p = F.softmax(out["logits"].float() / self.opts.t_c, dim=1)
        feats = out["h"] if self.opts.infer_features == "backbone" else out["z"]
        return feats.float(), p
