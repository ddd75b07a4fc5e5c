"""SeCu: stable cluster discrimination, one-stage deep clustering from scratch.

Qian, "Stable Cluster Discrimination for Deep Clustering", ICCV 2023 (spec/secu.md).

H heads share the encoder; head h holds K_h = (h + 1) k centres W_h (K_h x D rows, normalised
at every use), the current assignment of every training instance, dual variables and counts.
Per step, with x^(v) = normalize(proj(enc(view_v))) for two asymmetric views:

    sim     = (x^(1) C^T + x^(2) C^T) / 2                     C = normalize(W_h), no gradient
    y       = constrained assignment of sim                   (size: argmax(sim + rho), duals
                                                               updated by projected dual ascent;
                                                               entropy: greedy exact change of
                                                               sum p log p, weight alpha)
    y_prev  = stored label of the instance (epoch 0 / first visit: y), read before overwriting
    L_c,h   = mean over views of secu_center_loss(x^(v), W_h, y, t_w)         (only c_y is live)
    L_x,h   = secu_representation_loss(x^(1), x^(2), C_prev,h, y_prev, t_x, 0.2)
    loss    = (1/H) sum_h (L_c,h + L_x,h)

C_prev,h is the snapshot of normalize(W_h) at the start of the epoch. The encoder gets
gradient only from L_x, the centres only from L_c. Schedule: the encoder is frozen
(lr x 0) for ``frozen_epochs`` (the optimiser still steps, so SGD momentum accumulates as in
the official code), then a linear warm-up of ``optim.warmup_epochs`` epochs with factor
max(1, u) / (W n) (u = iterations since unfreezing), then cosine to 0 (``optim.schedule``
cosine; ``constant`` keeps 1; ``step`` uses the generic schedule after the frozen epochs). The
centres are their own parameter group at the constant rate ``center_lr`` (momentum and
weight decay apply to them too).

Options (spec defaults; CIFAR-10 size variant):

- ``n_heads`` 10: heads with K = k, 2k, ..., n_heads * k. Head 0 (K = k) is evaluated.
- ``constraint`` "size" (gamma ``lower_ratio`` 0.9, dual step ``dual_lr`` 0.1; counts are reset
  each epoch, for logging only) or "entropy" (``entropy_alpha`` 6000 for N = 50,000; the costs
  scale like 1/N, so scale alpha with N, alpha ~ 0.12 N; counts are never reset).
- ``temperature_x`` 0.05 (representation loss), ``temperature_w`` 0.05 (centre loss and
  evaluation softmax; 1.0 on STL-10), ``label_weight`` 0.2 (one-hot share of the target).
- ``center_lr`` 1.2, ``center_loss`` "secu" (or "ce": plain cross entropy, the unstable
  ablation), ``frozen_epochs`` 1.
- ``projection_hidden`` 0: hidden width of the projection MLP (0 = the backbone's width);
  Linear-BN-ReLU-Linear to ``model.feature_dim``, then L2.
- ``imagenet_head`` False: the ImageNet variant (3-layer projector ending in BN, a predictor
  MLP, assignment on the mean of 4 similarities, both losses on both branches with targets
  from the other view's projection branch).
- ``blur_p`` (1.0, 0.1) and ``solarize_p`` (0.0, 0.2): per-view probabilities that replace
  ``augment.blur_p`` / ``augment.solarize_p`` (the rest of ``augment`` is shared). The blur is
  the library's batched Gaussian blur, an approximation of PIL's GaussianBlur(radius = sigma).

Under torchrun (deepclust/collectives.py) the assignment runs on the gathered features and
indices of the global batch, so labels, duals and counts update as with one process (and stay
identical on every process); the losses are means over each process's rows.

Not done: LARS (the ImageNet config uses SGD) and the ImageNet + entropy centre-lr ramp
(the trainer keeps unscheduled groups constant). Cluster sizes: at the start of every epoch
the min/max size of each head's stored assignment (the previous epoch's labels) is logged,
and head 0's min/max are also returned in the step logs as ``head0_min`` / ``head0_max`` (a
constant over the epoch, so the trainer's per-epoch average is that value).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from deepclust.augment import THICKEN_HALF, Augment
from deepclust.cluster.secu_assign import secu_dual_update, secu_entropy_assign, secu_size_assign
from deepclust.engine.schedule import lr_factor
from deepclust.errors import ConfigError
from deepclust.losses.secu import secu_center_loss, secu_representation_loss
from deepclust.methods.base import ClusteringMethod, DataInfo, StepOutput
from deepclust.metrics import acc_many_to_one, nmi
from deepclust.models import mlp_projector
from deepclust.precision import fp32

if TYPE_CHECKING:  # type hints only: config resolution imports the methods, not the reverse
    from deepclust.config import Config

log = logging.getLogger(__name__)


# ----- the method ---------------------------------------------------------------------------------
class SeCu(ClusteringMethod):
    """SeCu (see module docstring)."""

    name = "secu"
    stem_init = "kaiming"  # SeCu's (SCAN's) ResNets Kaiming-initialise the stem too (secu.md 8)
    prediction = "head_argmax"
    eval_head = 0  # the head whose K equals n_clusters
    # Glyph data: SGD with 3 warm-up epochs, 3 heads, a milder blur and the gentle stroke views;
    # the batch and its rate by glyph_batch.
    glyph_preset = {
        "optim": {"name": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "warmup_epochs": 3},
        "augment": {"blur_sigma": [0.1, 1.0], **THICKEN_HALF},
        "method_args": {"n_heads": 3},
    }

    @classmethod
    def glyph_batch(cls, n_samples: int) -> tuple[int, float]:
        """A batch of about N / 100, a power of two in [16, 128], at the linear rate 0.1 B / 128.
        SeCu takes no negatives from the batch (cluster centres), and on small data a large
        batch collapses it (whole batches take one label; docs/explorations.md, "The glyph preset")."""
        b = int(min(128, max(16, 2 ** round(math.log2(max(1, n_samples) / 100)))))
        return b, 0.1 * b / 128

    @dataclass
    class Options(ClusteringMethod.Options):
        n_heads: int = 10
        constraint: str = "size"  # size | entropy
        lower_ratio: float = 0.9  # gamma
        dual_lr: float = 0.1  # eta
        entropy_alpha: float = 6000.0  # alpha (~0.12 N)
        temperature_x: float = 0.05
        temperature_w: float = 0.05
        label_weight: float = 0.2
        center_lr: float = 1.2
        center_loss: str = "secu"  # secu | ce (ablation)
        frozen_epochs: int = 1
        projection_hidden: int = 0  # 0: the backbone's output width
        imagenet_head: bool = False
        blur_p: tuple[float, float] = (1.0, 0.1)
        solarize_p: tuple[float, float] = (0.0, 0.2)

        def __post_init__(self) -> None:
            # YAML gives lists; the lengths are checked below, mypy sees tuple[float, ...]
            self.blur_p = tuple(float(v) for v in self.blur_p)  # type: ignore[assignment]
            self.solarize_p = tuple(float(v) for v in self.solarize_p)  # type: ignore[assignment]
            if self.n_heads < 1:
                raise ConfigError(f"method_args.n_heads must be at least 1, got {self.n_heads}")
            if self.constraint not in ("size", "entropy"):
                raise ConfigError(f"method_args.constraint must be 'size' or 'entropy', got '{self.constraint}'")
            if self.center_loss not in ("secu", "ce"):
                raise ConfigError(f"method_args.center_loss must be 'secu' or 'ce', got '{self.center_loss}'")
            if len(self.blur_p) != 2 or len(self.solarize_p) != 2:
                raise ConfigError("method_args.blur_p and solarize_p need one probability per view, e.g. [1.0, 0.1]")
            if not 0 <= self.label_weight <= 1 or self.temperature_x <= 0 or self.temperature_w <= 0:
                raise ConfigError("method_args: label_weight must be in [0, 1] and the temperatures > 0")
            if self.frozen_epochs < 0 or self.projection_hidden < 0:
                raise ConfigError("method_args.frozen_epochs and projection_hidden must be >= 0")

    opts: Options  # this method's method_args (the base class builds it from cfg.method_args)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "optim": {
                "name": "sgd",
                "lr": 0.2,
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "schedule": "cosine",
                "warmup_epochs": 10,
            },
            "augment": {
                "crop_scale": [0.2, 1.0],
                "jitter": [0.4, 0.4, 0.2, 0.1],
                "jitter_p": 0.8,
                "grayscale_p": 0.2,
                "flip_p": 0.5,
            },
        }

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        o = self.opts
        # Two asymmetric views (secu.md section 9): view 1 always blurred, view 2 solarised.
        a = cfg.augment
        size = info.image_size
        self.augment = Augment(
            dataclasses.replace(a, blur_p=o.blur_p[0], solarize_p=o.solarize_p[0]), size, info.mean, info.std
        )
        self.augment2 = Augment(
            dataclasses.replace(a, blur_p=o.blur_p[1], solarize_p=o.solarize_p[1]), size, info.mean, info.std
        )
        self.backbone = self.build_backbone()
        d, width = cfg.model.feature_dim, self.backbone.out_dim
        hidden = o.projection_hidden or width
        if o.imagenet_head:
            self.projector = nn.Sequential(mlp_projector(width, hidden, d, n_hidden=2), nn.BatchNorm1d(d))
            self.predictor: nn.Module | None = mlp_projector(d, hidden, d)
        else:
            self.projector = mlp_projector(width, hidden, d)
            self.predictor = None
        self.ks = [(h + 1) * info.n_clusters for h in range(o.n_heads)]
        g = torch.Generator().manual_seed(cfg.train.seed + 7919)  # centres: their own stream of the seed
        self.centers = nn.ParameterList(
            [nn.Parameter(F.normalize(torch.randn(k, d, generator=g), dim=1)) for k in self.ks]
        )
        for h, k in enumerate(self.ks):
            # -1: not assigned yet (every instance is assigned in epoch 0)
            self.register_buffer(f"labels_{h}", torch.full((info.n_samples,), -1, dtype=torch.long))
            self.register_buffer(f"dual_{h}", torch.zeros(k))
            self.register_buffer(f"counts_{h}", torch.zeros(k))
            self.register_buffer(f"prev_centers_{h}", F.normalize(self.centers[h].detach().clone(), dim=1))
        self._size_logs: dict[str, torch.Tensor] = {}

    def _buf(self, kind: str, h: int) -> torch.Tensor:
        return getattr(self, f"{kind}_{h}")

    # ----- networks ---------------------------------------------------------------------------
    def _branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.projector(self.backbone(x))
        q = F.normalize(self.predictor(z), dim=1) if self.predictor is not None else None
        return F.normalize(z, dim=1), q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._branches(x)[0]

    # ----- hooks ---------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        centre_ids = {id(p) for p in self.centers}
        encoder = [p for p in self.parameters() if p.requires_grad and id(p) not in centre_ids]
        return [
            {"params": encoder},
            {"params": list(self.centers), "lr": self.opts.center_lr, "scheduled": False},
        ]

    def lr_scale(self, epoch: int, it: int, iters_per_epoch: int, factor: float) -> float:
        """0 while the encoder is frozen; then :func:`lr_factor` on SeCu's clock, which starts
        when the encoder unfreezes (epochs counted from ``frozen_epochs``), with the official
        warm-up ramp max(1, u) / (W n) (secu.md section 8); ``step`` keeps the generic ``factor``."""
        frozen = self.opts.frozen_epochs
        if epoch < frozen:
            return 0.0  # the encoder is frozen; its optimiser still steps (momentum builds up)
        if self.cfg.optim.schedule == "step":
            return factor
        return lr_factor(
            self.cfg.optim, epoch - frozen, it, iters_per_epoch, self.cfg.train.epochs - frozen, warmup_shift=0
        )

    @torch.no_grad()
    def on_epoch_start(self, epoch: int) -> None:
        sizes = []
        for h, k in enumerate(self.ks):
            self._buf("prev_centers", h).copy_(F.normalize(self.centers[h].detach().float(), dim=1))
            if self.opts.constraint == "size":
                self._buf("counts", h).zero_()  # logging only in the size variant
            labels = self._buf("labels", h)
            if epoch > 0 and bool((labels >= 0).any()):
                hist = torch.bincount(labels[labels >= 0], minlength=k)
                sizes.append((k, hist.min(), hist.max()))
        if sizes:
            self._size_logs = {"head0_min": sizes[0][1].float(), "head0_max": sizes[0][2].float()}
            log.info(
                "epoch %d: cluster sizes of the previous epoch (K: min/max) %s",
                epoch,
                " ".join(f"{k}:{int(lo)}/{int(hi)}" for k, lo, hi in sizes),
            )
        else:
            self._size_logs = {}

    @torch.no_grad()
    def _assign(self, h: int, sim: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, y_prev) for one head; updates labels, duals and counts (fp32, no autocast)."""
        o = self.opts
        labels, counts = self._buf("labels", h), self._buf("counts", h)
        k = counts.numel()
        old = labels[idx].clone()  # read before overwriting (pitfall 5)
        if o.constraint == "size":
            dual = self._buf("dual", h)
            y = secu_size_assign(sim, dual)
            dual.copy_(secu_dual_update(dual, y, o.lower_ratio, o.dual_lr))
            counts += torch.bincount(y, minlength=k).to(counts.dtype)
        else:
            y = secu_entropy_assign(sim, counts, o.entropy_alpha, old)
            seen = old >= 0
            counts += (torch.bincount(y, minlength=k) - torch.bincount(old[seen], minlength=k)).to(counts.dtype)
        labels[idx] = y
        return y, torch.where(old >= 0, old, y)

    def stream_views(self) -> list[nn.Module]:
        return [self.augment, self.augment2]

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> StepOutput:
        o = self.opts
        x1, q1 = self._branches(self.view(self.augment, images, indices))
        x2, q2 = self._branches(self.view(self.augment2, images, indices))
        detach_neg = o.center_loss == "secu"
        loss_c = loss_x = x1.new_zeros((), dtype=torch.float32)
        # Under torchrun the assignment runs on the global batch (gathered features and
        # indices), so labels, duals and counts update as with one process; the losses then
        # use this process's rows of the global labels.
        branches = [x1, x2] if q1 is None or q2 is None else [x1, x2, q1, q2]
        gathered = [self.dist.gather(b.detach().float()) for b in branches]
        all_idx = self.dist.gather(indices)
        mine = self.dist.local_rows(images.shape[0])
        for h in range(o.n_heads):
            w = self.centers[h]
            with torch.no_grad(), fp32(images):
                c = F.normalize(w.detach().float(), dim=1)
                sims = [b @ c.t() for b in gathered]
                sim = sum(sims[1:], sims[0]) / len(sims)  # the first as start: a Tensor, never the int 0
                y_all, y_prev_all = self._assign(h, sim, all_idx)
                y, y_prev = y_all[mine], y_prev_all[mine]
            prev = self._buf("prev_centers", h)
            lc = 0.5 * (
                secu_center_loss(x1, w, y, o.temperature_w, detach_negatives=detach_neg)
                + secu_center_loss(x2, w, y, o.temperature_w, detach_negatives=detach_neg)
            )
            lx = secu_representation_loss(x1, x2, prev, y_prev, o.temperature_x, o.label_weight)
            if q1 is not None and q2 is not None:
                lc = 0.5 * lc + 0.25 * (
                    secu_center_loss(q1, w, y, o.temperature_w, detach_negatives=detach_neg)
                    + secu_center_loss(q2, w, y, o.temperature_w, detach_negatives=detach_neg)
                )
                lx = 0.5 * lx + 0.5 * secu_representation_loss(
                    q1, q2, prev, y_prev, o.temperature_x, o.label_weight, target_sources=(x2, x1)
                )
            loss_c = loss_c + lc
            loss_x = loss_x + lx
        loss_c, loss_x = loss_c / o.n_heads, loss_x / o.n_heads
        logs = {"loss_center": loss_c.detach(), "loss_rep": loss_x.detach(), **self._size_logs}
        return StepOutput(loss_c + loss_x, logs)

    # ----- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self(x).float()
        with fp32(feats):  # softmax of cosines / t_w (0.05): float32, not the caller's autocast dtype
            c = F.normalize(self.centers[self.eval_head].detach().float(), dim=1)
            return feats, F.softmax(feats @ c.t() / self.opts.temperature_w, dim=1)

    def head_centers(self) -> tuple[torch.Tensor, float]:
        return self.centers[self.eval_head].detach(), float(self.opts.temperature_w)

    @torch.no_grad()
    def evaluation_extras(self, features: torch.Tensor, y_true: torch.Tensor | None) -> dict[str, Any]:
        """Every head's argmax on the evaluated images (over-clustering heads scored with the
        many-to-one accuracy, never Hungarian ACC) and the sizes of the stored training
        assignments (the last epoch's labels; not a prediction)."""
        feats = features.float()
        heads, train_sizes = [], []
        labelled = y_true is not None and bool((y_true >= 0).any())
        for h, k in enumerate(self.ks):
            c = F.normalize(self.centers[h].detach().float().to(feats.device), dim=1)
            with fp32(feats):  # argmax of near-tied cosines: float32 even if called under autocast
                pred = (feats @ c.t()).argmax(dim=1).cpu()
            sizes = torch.bincount(pred, minlength=k)
            entry: dict[str, Any] = {
                "head": h,
                "k": k,
                "n_nonempty": int((sizes > 0).sum()),
                "min_size": int(sizes.min()),
                "max_size": int(sizes.max()),
            }
            if labelled and y_true is not None:
                y = y_true.cpu()
                entry["acc_many_to_one"] = acc_many_to_one(y.numpy(), pred.numpy())
                entry["nmi"] = nmi(y.numpy(), pred.numpy())
            heads.append(entry)
            lab = self._buf("labels", h)
            hist = (
                torch.bincount(lab[lab >= 0], minlength=k)
                if bool((lab >= 0).any())
                else torch.zeros(k, dtype=torch.long)
            )
            train_sizes.append({"head": h, "k": k, "min": int(hist.min()), "max": int(hist.max())})
        return {"eval_head": self.eval_head, "over_clustering": heads, "train_assignment_sizes": train_sizes}


__all__ = ["SeCu"]
