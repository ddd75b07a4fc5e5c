"""Feature-space views for precomputed feature vectors ("feature mode").

When the input is a float matrix (N, D) instead of images, crops and colour jitter have no
meaning. Each method's augmented views become

    x~ = m * ((x - mu) / sigma + noise_std * eps),   eps ~ N(0, I),  m_j ~ Bernoulli(1 - dropout)

(``noise_std`` and ``dropout``: the config's ``augment.feature_noise`` and
``augment.feature_dropout``, 0.5 and 0.5 by default) and its clean view is the
standardisation z = (x - mu) / sigma alone, with mu, sigma the
per-dimension mean and standard deviation of the training features. Dropped dimensions are
set to 0, i.e. to the training mean (no 1 / (1 - p) rescaling: a masked feature reads as
"unknown", as in masked-feature corruption for tabular self-supervision, not as a louder one).
Both classes have the call interface of :class:`~deepclust.augment.Augment` and
:class:`~deepclust.augment.EvalTransform`: a batch in, a float32 batch on its device out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deepclust.errors import ConfigError

__all__ = ["FeatureAugment", "FeatureEvalTransform"]


class FeatureEvalTransform(nn.Module):
    """Clean view: (B, D) -> (x - mean) / std, float32 on the input's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m = torch.as_tensor([float(v) for v in mean], dtype=torch.float32)
        s = torch.as_tensor([float(v) for v in std], dtype=torch.float32)
        if m.ndim != 1 or m.shape != s.shape or m.numel() == 0:
            raise ConfigError(f"feature mean/std must be two lists of the same length D >= 1, got {m.numel()} and {s.numel()}")
        if bool((s <= 0).any()) or not bool(torch.isfinite(m).all() and torch.isfinite(s).all()):
            raise ConfigError("feature std values must be finite and > 0 (and the means finite)")
        # non-persistent: rebuilt from the run's data statistics, kept out of checkpoints
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)

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
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def forward(self, x: Tensor) -> Tensor:
        return self._standardize(x)

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}"


class FeatureAugment(FeatureEvalTransform):
    """Random view: standardise, add Gaussian noise, then mask each value with p = dropout."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        noise_std: float = 0.5,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(mean, std)
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ConfigError(f"feature noise_std must be >= 0, got {noise_std}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"feature dropout must be in [0, 1), got {dropout}")
        self.noise_std = float(noise_std)
        self.dropout = float(dropout)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        z = self._standardize(x)
        # Draws come from ``generator`` (on its own device) or the global RNG of z's device,
        # so the run seed drives them, as in the image pipelines.
        dev = generator.device if generator is not None else z.device
        if self.noise_std > 0:
            z = z + self.noise_std * torch.randn(z.shape, generator=generator, device=dev).to(z.device)
        if self.dropout > 0:
            keep = torch.rand(z.shape, generator=generator, device=dev).to(z.device) >= self.dropout
            z = z * keep
        return z

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, noise_std={self.noise_std}, dropout={self.dropout}"
