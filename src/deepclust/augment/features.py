"""Feature-space views for precomputed feature vectors ("feature mode").

When the input is a float matrix (N, D) instead of images (an embedding of a pretrained
network, or any vectors), crops and colour jitter have no meaning. The clean view is

    z(x) = (u - mu) / sigma,   u = x / ||x||  (``augment.feature_l2``, on by default)  or  u = x,

with mu, sigma the per-dimension mean and standard deviation of the training u
(engine/data_stage.py). An augmented view of sample i is, by ``augment.feature_views``:

- ``neighbors`` (the default): the clean view of a sample drawn uniformly from N(i), the
  ``augment.neighbors`` nearest neighbours of i in the L2-normalised training features plus i
  itself (cluster/neighbors.py). A pretrained embedding already puts images of one kind close
  together; neighbour views teach "my neighbours are my cluster" instead of destroying what the
  embedding knows (SCAN, Van Gansbeke et al., ECCV 2020; TEMI, Adaloglou et al., BMVC 2023).
- ``noise``: z(x_i) itself.

Either is then corrupted by the optional noise views

    x~ = m * (z + noise_std * eps),   eps ~ N(0, I),  m_j ~ Bernoulli(1 - dropout)

(``augment.feature_noise`` and ``augment.feature_dropout``, 0 by default with neighbour
views; dropped dimensions read as the training mean, no 1 / (1 - p) rescaling). Everything
runs in float32. Both classes have the call interface of :class:`~deepclust.augment.Augment`
and :class:`~deepclust.augment.EvalTransform` (a batch in, a float32 batch on its device out);
neighbour views also take the batch's instance indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepclust.errors import ConfigError

__all__ = ["FEATURE_VIEWS", "FeatureAugment", "FeatureEvalTransform"]

FEATURE_VIEWS = ("neighbors", "noise")


class FeatureEvalTransform(nn.Module):
    """Clean view: (B, D) -> (u - mean) / std with u = x / ||x|| (``l2``) or x, float32."""

    # buffers, registered in __init__
    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float], l2: bool = False) -> None:
        super().__init__()
        m = torch.as_tensor([float(v) for v in mean], dtype=torch.float32)
        s = torch.as_tensor([float(v) for v in std], dtype=torch.float32)
        if m.ndim != 1 or m.shape != s.shape or m.numel() == 0:
            raise ConfigError(
                f"feature mean/std must be two lists of the same length D >= 1, got {m.numel()} and {s.numel()}"
            )
        if bool((s <= 0).any()) or not bool(torch.isfinite(m).all() and torch.isfinite(s).all()):
            raise ConfigError("feature std values must be finite and > 0 (and the means finite)")
        # non-persistent: rebuilt from the run's data statistics, kept out of checkpoints
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)
        self.l2 = bool(l2)

    @property
    def n_features(self) -> int:
        return int(self.mean.numel())

    def _standardize(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ConfigError(
                f"expected feature vectors (B, {self.n_features}), got shape {tuple(x.shape)}; "
                "pass features with the dimension seen in training"
            )
        x = x.float()
        if self.l2:
            x = F.normalize(x, dim=1)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def forward(self, x: Tensor) -> Tensor:
        return self._standardize(x)

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, l2={self.l2}"


class FeatureAugment(FeatureEvalTransform):
    """Random view: the clean view of x or of a neighbour, then noise and dropout (module doc).

    Neighbour views need the training features and their neighbour table, given by
    :meth:`bind` at the start of every fit (the engine mines them: ClusteringMethod.bind_views);
    called without indices, or before :meth:`bind`, a neighbour pipeline views x itself.
    """

    # buffers (None until :meth:`bind`)
    table: Tensor | None
    knn: Tensor | None

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        noise_std: float = 0.5,
        dropout: float = 0.5,
        l2: bool = False,
        views: str = "noise",
        neighbors: int = 20,
    ) -> None:
        super().__init__(mean, std, l2=l2)
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ConfigError(f"feature noise_std must be >= 0, got {noise_std}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"feature dropout must be in [0, 1), got {dropout}")
        if views not in FEATURE_VIEWS:
            raise ConfigError(f"augment.feature_views must be one of {', '.join(FEATURE_VIEWS)}, got {views!r}")
        self.noise_std = float(noise_std)
        self.dropout = float(dropout)
        self.views = views
        self.neighbors = int(neighbors)
        # the training features and their (N, k + 1) neighbour table: rebuilt every fit, not checkpointed
        self.register_buffer("table", None, persistent=False)
        self.register_buffer("knn", None, persistent=False)

    @property
    def uses_neighbors(self) -> bool:
        return self.views == "neighbors"

    def bind(self, features: Tensor, knn: Tensor) -> None:
        """Hold the training features (N, D) and their neighbour table (N, k + 1) for the views."""
        if knn.ndim != 2 or knn.shape[0] != features.shape[0]:
            raise ConfigError(f"neighbour table of shape {tuple(knn.shape)} does not fit {features.shape[0]} samples")
        self.table, self.knn = features, knn

    def forward(self, x: Tensor, indices: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        # Draws come from ``generator`` (on its own device) or the global RNG of x's device,
        # so the run seed drives them, as in the image pipelines.
        dev = generator.device if generator is not None else x.device
        if self.uses_neighbors and indices is not None and self.knn is not None and self.table is not None:
            idx = indices.to(self.knn.device)
            pick = torch.randint(self.knn.shape[1], (len(idx),), generator=generator, device=dev).to(self.knn.device)
            x = self.table[self.knn[idx, pick]].to(x.device)
        z = self._standardize(x)
        if self.noise_std > 0:
            z = z + self.noise_std * torch.randn(z.shape, generator=generator, device=dev).to(z.device)
        if self.dropout > 0:
            keep = torch.rand(z.shape, generator=generator, device=dev).to(z.device) >= self.dropout
            z = z * keep
        return z

    def extra_repr(self) -> str:
        return (
            f"n_features={self.n_features}, l2={self.l2}, views={self.views}, neighbors={self.neighbors}, "
            f"noise_std={self.noise_std}, dropout={self.dropout}"
        )
