"""AnchorCL: instance contrastive learning + DEC clustering + anchor loss.

Sundareswaran, Herrera-Gerena, Just, Jannesari, "Cluster Analysis with Deep Embeddings and
Contrastive Learning", arXiv 2109.12714, 2021 (spec/anchor.md; the paper gives the method no
name). Per step, on the clean ("anchor") view x = eval transform of the image and two
augmented views x_i, x_j (three separate train-mode forwards, each with its own BN statistics):

    h, h_i, h_j = f(x), f(x_i), f(x_j)
    L_ins = nt_xent_loss(g(h_i), g(h_j), tau=0.5)                 g: Linear-ReLU-Linear, no BN
    q, q_i, q_j = student_t_assignment(., mu, alpha=1) on h, h_i, h_j
    L = L_ins + dec_loss(q) + anchor_loss(q, q_i) + anchor_loss(q, q_j)

The K centres mu live in the backbone's feature space and are trained with everything else
(Adam 3e-4). They start as k-means centres of the initial network's clean-view features
(:meth:`AnchorCL.setup`). The headline prediction is argmax_k q (``head_argmax``); k-means on
the clean backbone features h is recorded beside it under ``extras.kmeans`` (in results.json
and in every evaluation line of metrics.jsonl, a curve beside the head's).

Defects of the released code fixed here (spec/anchor.md section 10):

- K is the config's number of clusters (``info.n_clusters``) everywhere, not a hard-coded 10
  (k-means initialisation, the head, the evaluation);
- k-means uses ``n_init`` restarts pinned to 10 (``init_n_init``; ``eval.n_init`` for the
  evaluation k-means) instead of scikit-learn's changed default, with a seeded generator;
- the anchor loss's undefined ``eps`` is 1e-8 (SCCL's value);
- KL terms are summed over clusters and averaged over the batch (the value of the deprecated
  ``size_average=False`` divided by B, as in the released code's use);
- NT-Xent works for any batch size (no fixed mask, no ``drop_last`` needed);
- everything is seeded from ``train.seed``; the final epoch is evaluated.

Options (``method_args``), each defaulting to the released code's behaviour:

- ``instance_temperature`` (0.5): tau of NT-Xent.
- ``alpha`` (1.0): Student-t degrees of freedom.
- ``instance_weight`` / ``cluster_weight`` / ``anchor_weight`` (1, 1, 1): loss weights.
- ``normalize_input`` (False): the released code feeds [0, 1] images without mean/std
  normalisation; True normalises all three views with ``data.mean``/``data.std``.
- ``separate_forwards`` (True): three forwards with per-view BN statistics; False runs the
  three views as one concatenated batch (cheaper, not faithful; spec/anchor.md 10.12).
- ``init_bn_mode`` ("train"): BN mode of the initial feature pass for k-means; "train" uses
  batch statistics as the released code does, "eval" uses the running statistics.
- ``init_batch_size`` (32): batch size of that pass (batches are a seeded shuffle of all
  training images, split evenly so none is smaller than this; the released code drops the last
  incomplete batch instead). BN running statistics are restored afterwards, so the pass
  changes nothing but the centres.
- ``init_n_init`` (10): k-means restarts for the initial centres.
- ``target_mode`` ("batch"): the DEC target P of the released code, recomputed from every
  mini-batch (spec/anchor.md 3.2). "full" is classic DEC (spec/anchor.md 10.9): P is the
  sharpened target of the whole training set, f_k = sum over all N images of q_nk, refreshed
  every ``target_interval`` steps (0: at every epoch start) and read by instance index. The
  full-dataset q is a store of every image's clean-view q at its latest visit (initialised
  from the k-means initialisation pass), so a refresh needs no extra pass over the data and a
  resumed run continues exactly (store and target are checkpointed buffers, float32).
- ``instance_warmup`` (0.0; library choice, not the paper's): the first
  int(instance_warmup x train.epochs) epochs train NT-Xent alone, then the centres are
  initialised again (k-means, as in :meth:`setup`) from the trained network's features and the
  clustering and anchor losses start. The glyph preset sets 0.25 (see :meth:`setup`).

Under torchrun (deepclust/collectives.py) NT-Xent and the DEC target use the global batch gathered
with gradient; the anchor losses are means over each process's rows; :meth:`setup` runs on
every process on all training images (same centres everywhere).

The projector's output size is ``model.feature_dim`` (128). A pretrained warm start (the
spec's ``init_from``) is the engine's ``model.init`` (any checkpoint kind of models/init.py): the
backbone is loaded before :meth:`setup`, so the centres are k-means on the pretrained features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepclust.augment import Augment, EvalTransform
from deepclust.cluster import kmeans
from deepclust.errors import ConfigError
from deepclust.losses.contrastive import nt_xent_loss
from deepclust.losses.dec import anchor_loss, dec_loss, dec_target, student_t_assignment
from deepclust.methods.base import ClusteringMethod, DataInfo, StepOutput
from deepclust.metrics import evaluate
from deepclust.models import mlp_projector
from deepclust.precision import fp32

if TYPE_CHECKING:  # type hints only: config resolution imports the methods, not the reverse
    from deepclust.config import Config

log = logging.getLogger(__name__)


class AnchorCL(ClusteringMethod):
    """AnchorCL (see module docstring)."""

    name = "anchorcl"
    prediction = "head_argmax"
    stem_init = "kaiming"  # every convolution Kaiming-normal (spec/anchor.md 2), the CIFAR stem too
    # The Student-t head reads distances between raw (un-normalised) backbone features, which bf16
    # autocast rounds to 8 bits before the float32 head sees them; its bf16 matrix cells left the
    # 2-point band (docs/speed.md), so auto keeps it in float32 on the CPU.
    cpu_auto_bf16 = False
    glyph_preset = {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        "train": {"batch_size": 128},
        # the first half of the epochs on the instance loss alone, then k-means centres from the
        # trained features: from the untrained network digits seeds merged two classes, and a
        # quarter of the epochs left the worst Fashion-MNIST seed lower (docs/explorations.md,
        # "The glyph preset")
        "method_args": {"instance_warmup": 0.5},
    }

    @dataclass
    class Options(ClusteringMethod.Options):
        instance_temperature: float = 0.5
        alpha: float = 1.0
        instance_weight: float = 1.0
        cluster_weight: float = 1.0
        anchor_weight: float = 1.0
        normalize_input: bool = False
        separate_forwards: bool = True
        init_bn_mode: str = "train"
        init_batch_size: int = 32
        init_n_init: int = 10
        target_mode: str = "batch"
        target_interval: int = 0
        instance_warmup: float = 0.0  # fraction of train.epochs on the instance loss alone (library choice)

    opts: Options  # this method's method_args (the base class builds it from cfg.method_args)
    # buffers, registered in __init__ (checkpointed with the model)
    centers_initialized: torch.Tensor
    q_store: torch.Tensor
    full_target: torch.Tensor
    target_steps: torch.Tensor

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        # Adam 3e-4, constant rate, no weight decay; CC's augmentation with jitter strength 0.5.
        return {
            "optim": {"name": "adam", "lr": 3e-4, "weight_decay": 0.0, "schedule": "constant"},
            "augment": {
                "crop_scale": [0.08, 1.0],
                "flip_p": 0.5,
                "jitter": [0.4, 0.4, 0.4, 0.1],
                "jitter_p": 0.8,
                "grayscale_p": 0.2,
            },
            "eval": {"n_init": 10},
        }

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        o = self.opts
        if o.init_bn_mode not in ("train", "eval"):
            raise ConfigError(f"method_args.init_bn_mode must be 'train' or 'eval', got '{o.init_bn_mode}'")
        if o.init_batch_size < 2 or o.init_n_init < 1 or o.alpha <= 0 or o.instance_temperature <= 0:
            raise ConfigError(
                "method_args: init_batch_size >= 2, init_n_init >= 1, alpha > 0 "
                "and instance_temperature > 0 are required"
            )
        if not 0.0 <= o.instance_warmup < 1.0:
            raise ConfigError(f"method_args.instance_warmup must be a fraction in [0, 1), got {o.instance_warmup}")
        if o.target_mode not in ("batch", "full") or o.target_interval < 0:
            raise ConfigError(
                f"method_args.target_mode must be 'batch' or 'full' (got '{o.target_mode}') and target_interval >= 0"
            )
        # The released code does not normalise any view (spec/anchor.md 5, 10.13).
        mean, std = (info.mean, info.std) if o.normalize_input else (None, None)
        self.augment = Augment(cfg.augment, info.image_size, mean, std)
        self.eval_transform = EvalTransform(info.image_size, mean, std)
        self.backbone = self.build_backbone()
        d = self.backbone.out_dim
        self.projector = mlp_projector(d, d, cfg.model.feature_dim, batch_norm=False)
        self.centers = nn.Parameter(torch.zeros(info.n_clusters, d))
        self.register_buffer("centers_initialized", torch.tensor(False))
        # target_mode "full": every image's latest clean-view q and the full-dataset target
        # (empty in "batch" mode); float32, whatever the autocast dtype.
        n_full = info.n_samples if o.target_mode == "full" else 0
        self.register_buffer("q_store", torch.zeros(n_full, info.n_clusters))
        self.register_buffer("full_target", torch.zeros(n_full, info.n_clusters))
        self.register_buffer("target_steps", torch.tensor(0, dtype=torch.long))

    # ----- centre initialisation ------------------------------------------------------------
    @torch.no_grad()
    def initial_features(self, train_images: torch.Tensor) -> torch.Tensor:
        """Clean-view backbone features of all training images, in their original order.

        Batches are a shuffle seeded by ``train.seed``; BN in ``init_bn_mode``. Running BN
        statistics are restored afterwards, so calling this changes no state.
        """
        o = self.opts
        saved = {k: v.clone() for k, v in self.backbone.state_dict().items()}
        was_training = self.training
        self.backbone.train(o.init_bn_mode == "train")
        try:
            n = len(train_images)
            g = torch.Generator().manual_seed(self.cfg.train.seed)
            perm = torch.randperm(n, generator=g).to(train_images.device)
            # even split: no batch smaller than init_batch_size (BN needs > 1 sample)
            chunks = torch.tensor_split(perm, max(1, n // o.init_batch_size))
            feats: torch.Tensor | None = None
            for idx in chunks:
                h = self.backbone(self.eval_transform(train_images[idx].to(self.centers.device))).float()
                if feats is None:
                    feats = torch.empty(n, h.shape[1], device=h.device)
                feats[idx] = h
        finally:
            self.backbone.load_state_dict(saved)
            self.train(was_training)
        assert feats is not None
        return feats

    @property
    def cluster_start(self) -> int:
        """The first epoch of the clustering and anchor losses: ``instance_warmup`` x epochs."""
        return int(self.opts.instance_warmup * self.cfg.train.epochs)

    def bind_data(self, train_images: torch.Tensor) -> None:
        self._train_images = train_images  # for the re-initialisation after the warm-up

    @torch.no_grad()
    def setup(self, train_images: torch.Tensor) -> None:
        """Centres <- k-means (K = info.n_clusters, ``init_n_init`` restarts, seed
        ``train.seed``) on the initial network's clean-view features (spec/anchor.md 4).

        With ``instance_warmup`` > 0 (a library choice for small data, not the paper's) the
        first ``cluster_start`` epochs train the instance loss alone and the centres are
        initialised again, the same way, from the network's features at the start of epoch
        ``cluster_start``: on digits, centres from the untrained network put two centres in
        one class for 2 of 3 seeds, and DEC's sharpening kept that merge (an empty cluster;
        docs/explorations.md, "The glyph preset")."""
        self._init_centres(train_images)

    @torch.no_grad()
    def _init_centres(self, train_images: torch.Tensor) -> None:
        feats = self.initial_features(train_images)
        km = kmeans(feats, self.info.n_clusters, n_init=self.opts.init_n_init, seed=self.cfg.train.seed)
        self.centers.copy_(km.centers.to(self.centers.device, self.centers.dtype))
        self.centers_initialized.fill_(True)
        if self.opts.target_mode == "full":
            self.q_store.copy_(self._assign(feats.to(self.centers.device)))
            self.refresh_target()
        log.info(
            "anchorcl: %d centres from k-means on %d initial features (inertia %.4g)",
            len(km.centers),
            len(feats),
            km.inertia,
        )

    # ----- training ---------------------------------------------------------------------------
    def _assign(self, h: torch.Tensor) -> torch.Tensor:
        # Student-t head in float32 even under autocast: bf16 distances of raw features are too coarse.
        with fp32(h):
            return student_t_assignment(h.float(), self.centers.float(), self.opts.alpha)

    @torch.no_grad()
    def refresh_target(self) -> None:
        """target_mode "full": P <- dec_target(q of all N training images), classic DEC."""
        self.full_target.copy_(dec_target(self.q_store.float()))

    def on_epoch_start(self, epoch: int) -> None:
        if epoch > 0 and epoch == self.cluster_start:
            images = getattr(self, "_train_images", None)
            if images is None:
                raise RuntimeError("AnchorCL's instance_warmup needs the training images: the trainer calls bind_data")
            self._init_centres(images)
        if self.opts.target_mode == "full" and self.opts.target_interval == 0 and epoch > 0:
            self.refresh_target()

    def _cluster_loss(self, q: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.opts.target_mode == "batch":
            return dec_loss(self.dist.gather_with_grad(q))
        o = self.opts
        if o.target_interval > 0 and int(self.target_steps) > 0 and int(self.target_steps) % o.target_interval == 0:
            self.refresh_target()
        self.target_steps += 1
        loss = dec_loss(q, self.full_target[indices])  # the rows of this process (a per-sample mean)
        with torch.no_grad():  # the store sees the global batch, identical on every process
            self.q_store[self.dist.gather(indices)] = self.dist.gather(q.detach().float())
        return loss

    def stream_views(self) -> list[nn.Module]:
        # the clean "anchor" view is the plain resize of the whole image
        return [self.eval_transform, self.augment, self.augment]

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> StepOutput:
        if not bool(self.centers_initialized):
            raise RuntimeError("AnchorCL's centres are not initialised: call setup(train_images) before training")
        o = self.opts
        x, xi, xj = (
            self.eval_transform(images),
            self.view(self.augment, images, indices),
            self.view(self.augment, images, indices),
        )
        if o.separate_forwards:
            h, hi, hj = self.backbone(x), self.backbone(xi), self.backbone(xj)
        else:
            h, hi, hj = self.backbone(torch.cat([x, xi, xj])).chunk(3)
        # Under torchrun NT-Xent and the DEC target see the global batch (gathered with
        # gradient); the anchor losses are per-sample means over this process's rows.
        gather = self.dist.gather_with_grad
        l_ins = nt_xent_loss(
            gather(self.projector(hi).float()), gather(self.projector(hj).float()), o.instance_temperature
        )
        q, qi, qj = self._assign(h), self._assign(hi), self._assign(hj)
        l_clu = self._cluster_loss(q, indices)
        l_anc = anchor_loss(q, qi) + anchor_loss(q, qj)
        clustering = 1.0 if epoch >= self.cluster_start else 0.0  # the instance warm-up trains l_ins alone
        loss = o.instance_weight * l_ins + clustering * (o.cluster_weight * l_clu + o.anchor_weight * l_anc)
        logs = {
            "loss_ins": l_ins.detach(),
            "loss_clu": l_clu.detach(),
            "loss_anc": l_anc.detach(),
            "q_max": q.detach().max(dim=1).values.mean(),
        }
        return StepOutput(loss, logs)

    # ----- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.backbone(x).float()
        return h, self._assign(h)

    def evaluation_extras(self, features: torch.Tensor, y_true: torch.Tensor | None) -> dict[str, Any]:
        """The second prediction: k-means (``eval.n_init``, ``eval.kmeans_seed``) on the clean,
        un-normalised backbone features h of the evaluated images."""
        ev = self.cfg.eval
        km = kmeans(features.float(), self.info.n_clusters, n_init=ev.n_init, seed=ev.kmeans_seed)
        rec: dict[str, Any] = {
            "n_init": ev.n_init,
            "kmeans_seed": ev.kmeans_seed,
            "features": "backbone h, clean",
            "fit": "evaluated images",
        }
        if y_true is not None and bool((y_true >= 0).any()):
            scores = evaluate(y_true.cpu().numpy(), km.labels.cpu().numpy(), extra=True)
            rec = {"acc": scores["acc"], "nmi": scores["nmi"], "ari": scores["ari"], "ami": scores["ami"], **rec}
        return {"kmeans": rec}
