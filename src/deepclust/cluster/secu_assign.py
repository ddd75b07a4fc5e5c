"""SeCu's constrained assignments of a batch to centres (pure functions; secu.md sections 5 and 6).

- size: y_i = argmax_k (sim_ik + rho_k), with the duals rho updated by projected dual ascent
  toward the lower bound n_k >= gamma N / K (:func:`secu_size_assign`, :func:`secu_dual_update`);
- entropy: a greedy argmin of -sim_ik + alpha (exact change of sum_k p_k log p_k)
  (:func:`secu_entropy_costs`, :func:`secu_entropy_assign`).

Precision: similarities and duals in float32, the entropy costs in float64 (differences of
nearby x log x values), returned in float32. Used by :class:`deepclust.methods.secu.SeCu`.
"""

from __future__ import annotations

import torch

__all__ = ["secu_dual_update", "secu_entropy_assign", "secu_entropy_costs", "secu_size_assign"]


def secu_size_assign(similarity: torch.Tensor, dual: torch.Tensor) -> torch.Tensor:
    """Size-constrained assignment: y_i = argmax_k (sim_ik + rho_k). ``similarity`` (B, K)."""
    return (similarity.float() + dual.float().view(1, -1)).argmax(dim=1)


def secu_dual_update(dual: torch.Tensor, labels: torch.Tensor, lower_ratio: float, lr: float) -> torch.Tensor:
    """Projected dual ascent for the lower bound n_k >= gamma N / K, from one (global) batch:

        rho_k <- max(0, rho_k + lr * (gamma / K - n_k / B)),   n_k = #{i : labels_i = k}.

    The projection onto rho >= 0 applies when gamma < 1 (a lower bound's multiplier), as in the
    official code; gamma >= 1 (an equality-like target) leaves the duals unclamped there too.
    """
    k = dual.numel()
    frac = torch.bincount(labels.view(-1), minlength=k).float() / labels.numel()
    step = dual.float() + lr * (lower_ratio / k - frac)
    return step.clamp_min(0.0) if lower_ratio < 1 else step


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    return torch.xlogy(p, p)  # 0 log 0 = 0


def secu_entropy_costs(counts: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Greedy costs (B, K) of the entropy constraint: the change of sum_k p_k log p_k.

    ``counts`` (K,) is the histogram of the stored assignments, n = its sum; ``current`` (B,)
    the stored label of each instance, -1 when it has none yet.

    - Unassigned (epoch 0), with p~ = counts / (n + 1): cost_k = (p~_k + 1/(n+1)) log(p~_k +
      1/(n+1)) - p~_k log p~_k, the exact change up to a constant independent of k; all zeros
      when n = 0 (plain nearest centre).
    - Assigned to l, with p = counts / n: cost_k = [(p_l - 1/n) log(p_l - 1/n) - p_l log p_l] +
      [(p_k + 1/n) log(p_k + 1/n) - p_k log p_k] for k != l, cost_l = 0: the exact change.
    """
    counts = counts.double()  # differences of nearby x log x values: keep the precision
    k = counts.numel()
    n = counts.sum()
    b = current.numel()
    out = torch.zeros(b, k, dtype=torch.float64, device=counts.device)
    new = current < 0
    if new.any() and n > 0:
        pt = counts / (n + 1)
        out[new] = (_xlogx(pt + 1 / (n + 1)) - _xlogx(pt)).view(1, k)
    old = ~new
    if old.any():
        p = counts / n
        cur = current[old]
        pl = p[cur]
        leave = _xlogx((pl - 1 / n).clamp_min(0.0)) - _xlogx(pl)
        join = _xlogx(p + 1 / n) - _xlogx(p)
        cost = leave.view(-1, 1) + join.view(1, -1)
        out[old] = cost.scatter(1, cur.view(-1, 1), 0.0)
    return out.float()


def secu_entropy_assign(
    similarity: torch.Tensor, counts: torch.Tensor, alpha: float, current: torch.Tensor
) -> torch.Tensor:
    """Entropy-constrained greedy assignment: y_i = argmin_k (-sim_ik + alpha cost_ik), every
    sample of the batch seeing the same counts (see :func:`secu_entropy_costs`)."""
    return (-similarity.float() + alpha * secu_entropy_costs(counts, current)).argmin(dim=1)
