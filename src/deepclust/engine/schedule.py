"""Learning-rate schedules, evaluated per iteration as a multiplier of the base rate."""

from __future__ import annotations

import math

from deepclust.config import OptimConfig


def lr_factor(cfg: OptimConfig, epoch: int, it: int, iters_per_epoch: int, epochs: int, warmup_shift: int = 1) -> float:
    """Multiplier for the base learning rate at iteration ``it`` of ``epoch`` (both 0-based).

    - ``constant``: 1.
    - ``step``: gamma ** (number of milestones <= epoch), stepped per epoch (IDFD).
    - ``cosine``: (1 + cos(pi * t / T)) / 2 over the iterations after the warm-up.
    A linear warm-up over the W = ``warmup_epochs * iters_per_epoch`` first iterations multiplies
    any of them by max(1, t + ``warmup_shift``) / W: 1 (the default) ramps (t + 1) / W, so the
    last warm-up step reaches 1; 0 is SeCu's official ramp max(1, t) / W (its first two steps
    share 1 / W).
    """
    t = epoch * iters_per_epoch + it
    warm = cfg.warmup_epochs * iters_per_epoch
    if cfg.schedule == "step":
        f = cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    elif cfg.schedule == "cosine":
        total = max(1, epochs * iters_per_epoch - warm)
        f = 0.5 * (1 + math.cos(math.pi * min(max(t - warm, 0), total) / total))
    else:
        f = 1.0
    if warm > 0 and t < warm:
        f *= max(1, t + warmup_shift) / warm
    return f
