"""SwAV-style Sinkhorn-Knopp equipartition of soft assignments."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, DataError
from ..precision import fp32

__all__ = ["sinkhorn"]


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, n_iters: int = 3, epsilon: float = 0.05) -> torch.Tensor:
    """Sinkhorn-Knopp soft assignments Q (B, K) from scores (B, K).

    Starts from ``Q = exp(scores / epsilon)``, then ``n_iters`` times normalises every column
    (cluster) to total mass 1/K and every row (sample) to mass 1/B, and returns ``B * Q``: every
    row sums to 1 and the column sums tend to B/K as ``n_iters`` grows (equipartition).

    The iterations run in the log domain (``log Q -= logsumexp``), which is the same arithmetic
    as the direct normalisation but cannot underflow, in float64 (float32 on MPS), with autocast
    disabled. No gradient flows. ``n_iters=0`` gives the row softmax of ``scores / epsilon``.

    Parameters
    ----------
    scores : (B, K) tensor (or array-like) of sample-to-cluster scores.
    n_iters : column-then-row normalisation rounds (>= 0).
    epsilon : the entropic temperature (> 0).

    Returns
    -------
    torch.Tensor
        Q, float32 (B, K) on scores' device, rows summing to 1.
    """
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise DataError(
            f"scores must be 2-D (batch, n_clusters), got shape {tuple(scores.shape)}; flatten "
            "the batch dimensions first"
        )
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise DataError(f"scores is empty (shape {tuple(scores.shape)}); pass at least one sample and one cluster")
    if isinstance(n_iters, bool) or int(n_iters) != n_iters or n_iters < 0:
        raise ConfigError(f"n_iters must be an integer >= 0, got {n_iters!r}")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon must be a positive number, got {epsilon!r}")
    b, k = scores.shape
    dtype = torch.float32 if scores.device.type == "mps" else torch.float64
    with fp32(scores):
        log_q = scores.detach().to(dtype) / float(epsilon)
        log_q = log_q - log_q.max()  # the stable start; a global shift does not change Q
        log_k, log_b = math.log(k), math.log(b)
        for _ in range(int(n_iters)):
            log_q = log_q - (torch.logsumexp(log_q, dim=0, keepdim=True) + log_k)  # columns: 1/K
            log_q = log_q - (torch.logsumexp(log_q, dim=1, keepdim=True) + log_b)  # rows: 1/B
        if n_iters == 0:
            log_q = log_q - (torch.logsumexp(log_q, dim=1, keepdim=True) + log_b)
        q = torch.exp(log_q + log_b)  # rows sum to 1
    return q.to(torch.float32)
