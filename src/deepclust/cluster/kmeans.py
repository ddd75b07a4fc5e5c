"""k-means in torch: greedy k-means++ seeding and chunked Lloyd iterations on x's device.

Squared distances are ``||x||^2 - 2 x.c + ||c||^2`` computed with one matmul per chunk of rows
(no ``torch.cdist``); centre updates use ``index_add_`` and ``bincount``. Compute is float32 on
data centred by its mean (as scikit-learn does, for accuracy); the reported inertia is summed in
float64 from exact differences. One ``torch.Generator`` on x's device, seeded from ``seed``,
drives every random choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError

__all__ = ["KMeansResult", "kmeans", "assign_to_centers"]

# budget of one (rows x K) float32 distance block, in elements (~64 MB)
_BLOCK_ELEMS = (64 * 1024 * 1024) // 4


@dataclass
class KMeansResult:
    """Result of :func:`kmeans`.

    labels: (N,) int64 index of the nearest centre; centers: (K, D) float32 centres;
    inertia: sum of squared distances to the assigned centres; n_iter: Lloyd iterations of the
    best restart. Tensors live on the input's device.
    """

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    n_iter: int


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_float_tensor(x: Any, name: str = "x") -> torch.Tensor:
    """Validated 2-D floating tensor (integer/bool input becomes float32), on x's device."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{name} must be numeric, got dtype {arr.dtype}; pass a float array of features")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() != 2:
        raise DataError(
            f"{name} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}; reshape it, "
            "e.g. x.reshape(len(x), -1)"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one sample with one feature")
    if t.is_complex():
        raise DataError(f"{name} is complex; pass real-valued features")
    if t.dtype == torch.bool or not t.is_floating_point():
        t = t.to(torch.float32)
    bad = ~torch.isfinite(t.to(torch.float32) if t.dtype != torch.float32 else t)
    n_bad = int(bad.any(dim=1).sum().item())
    if n_bad:
        raise DataError(
            f"{name} has {n_bad} row(s) with NaN or inf values (or values too large for float32); "
            "remove or impute them before clustering"
        )
    return t


def _chunk_rows(n: int, k: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, min(n, _BLOCK_ELEMS // max(k, 1)))
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return int(min(int(chunk_size), n))


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


# --------------------------------------------------------------------------------------------
# core kernels
# --------------------------------------------------------------------------------------------


def _assign(
    x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row, and the squared distance to it (clamped at 0)."""
    n = x.shape[0]
    c_sq = (centers * centers).sum(dim=1)
    ct = centers.t()
    if chunk >= n:
        d = torch.addmm(c_sq.unsqueeze(0), x, ct, beta=1.0, alpha=-2.0)
        md, lab = d.min(dim=1)
        return lab, (md + x_sq).clamp_(min=0.0)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    min_d = torch.empty(n, dtype=x.dtype, device=x.device)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        d = torch.addmm(c_sq.unsqueeze(0), x[s:e], ct, beta=1.0, alpha=-2.0)
        md, lab = d.min(dim=1)
        labels[s:e] = lab
        min_d[s:e] = (md + x_sq[s:e]).clamp_(min=0.0)
    return labels, min_d


def _update_centers(
    x: torch.Tensor, labels: torch.Tensor, min_d: torch.Tensor, centers: torch.Tensor
) -> torch.Tensor:
    """Means of the assigned points; empty clusters take the points farthest from their centres."""
    k = centers.shape[0]
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros_like(centers)
    if x.device.type == "cpu":  # scatter_add_ is the faster kernel on CPU
        sums.scatter_add_(0, labels.unsqueeze(1).expand(-1, x.shape[1]), x)
    else:
        sums.index_add_(0, labels, x)
    empty = counts == 0
    n_empty = int(empty.sum().item())
    if n_empty:
        far = torch.topk(min_d, n_empty).indices
        xf = x.index_select(0, far)
        old = labels.index_select(0, far)
        sums.index_add_(0, old, -xf)
        counts.index_add_(0, old, torch.full_like(old, -1))
        empty_ids = empty.nonzero().squeeze(1)
        sums[empty_ids] = xf
        counts[empty_ids] = 1
    new = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
    if n_empty:  # a cluster emptied by giving away its farthest point keeps its old centre
        new = torch.where((counts == 0).unsqueeze(1), centers, new)
    return new


def _sq_dist_to(x: torch.Tensor, x_sq: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(N, T) squared distances from every row of x to the rows of pts."""
    d = x @ pts.t()
    d.mul_(-2.0).add_(x_sq.unsqueeze(1)).add_((pts * pts).sum(dim=1).unsqueeze(0))
    return d.clamp_(min=0.0)


def _kmeans_plusplus(
    x: torch.Tensor, x_sq: torch.Tensor, k: int, gen: torch.Generator, chunk_elems: int
) -> torch.Tensor:
    """Greedy k-means++: 2 + int(log k) candidates per centre, keep the one lowering the potential most."""
    n, dim = x.shape
    dev = x.device
    acc = _acc_dtype(dev)
    n_trials = 2 + int(math.log(k))
    centers = torch.empty(k, dim, dtype=x.dtype, device=dev)
    first = torch.randint(n, (1,), generator=gen, device=dev)
    centers[0:1] = x.index_select(0, first)
    closest = _sq_dist_to(x, x_sq, centers[0:1]).squeeze(1)
    pot = closest.sum(dtype=acc)
    whole = n * n_trials <= chunk_elems
    rows = max(1, chunk_elems // n_trials)
    for c in range(1, k):
        r = torch.rand(n_trials, generator=gen, device=dev, dtype=acc) * pot
        cum = torch.cumsum(closest, dim=0, dtype=acc)
        cand = torch.searchsorted(cum, r, right=True).clamp_(max=n - 1)
        pts = x.index_select(0, cand)
        if whole:
            d = torch.minimum(_sq_dist_to(x, x_sq, pts), closest.unsqueeze(1))
            pots = d.sum(dim=0, dtype=acc)
            best = torch.argmin(pots)
            closest = d.index_select(1, best.view(1)).squeeze(1)
        else:
            pots = torch.zeros(n_trials, dtype=acc, device=dev)
            for s in range(0, n, rows):
                e = min(s + rows, n)
                d = torch.minimum(_sq_dist_to(x[s:e], x_sq[s:e], pts), closest[s:e].unsqueeze(1))
                pots += d.sum(dim=0, dtype=acc)
            best = torch.argmin(pots)
            bp = pts.index_select(0, best.view(1))
            new_closest = torch.empty_like(closest)
            for s in range(0, n, rows):
                e = min(s + rows, n)
                new_closest[s:e] = torch.minimum(_sq_dist_to(x[s:e], x_sq[s:e], bp).squeeze(1), closest[s:e])
            closest = new_closest
        pot = pots.index_select(0, best.view(1)).squeeze(0)
        centers[c : c + 1] = pts.index_select(0, best.view(1))
    return centers


def _inertia(x: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> float:
    """Sum of squared distances to the assigned centres, from exact differences, float64 sum."""
    acc = _acc_dtype(x.device)
    total = torch.zeros((), dtype=acc, device=x.device)
    n = x.shape[0]
    # cache-sized blocks on CPU, big blocks elsewhere
    budget = (1 << 22) if x.device.type == "cpu" else _BLOCK_ELEMS
    rows = max(1, min(n, budget // max(x.shape[1], 1)))
    for s in range(0, n, rows):
        e = min(s + rows, n)
        diff = x[s:e] - centers.index_select(0, labels[s:e])
        total += (diff * diff).sum(dtype=acc)
    return float(total.item())


def _lloyd(
    x: torch.Tensor,
    x_sq: torch.Tensor,
    centers: torch.Tensor,
    max_iter: int,
    tol_abs: float,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    labels_old: torch.Tensor | None = None
    strict = False
    n_iter = 0
    labels = min_d = None
    for it in range(max_iter):
        labels, min_d = _assign(x, x_sq, centers, chunk)
        new = _update_centers(x, labels, min_d, centers)
        shift = float(((new - centers) ** 2).sum().item())
        centers = new
        n_iter = it + 1
        if labels_old is not None and torch.equal(labels, labels_old):
            strict = True
            break
        if shift <= tol_abs:
            break
        labels_old = labels
    if not strict:  # labels must match the final centres
        labels, min_d = _assign(x, x_sq, centers, chunk)
    # inertia from the expanded distances, good enough to rank restarts; the exact value of the
    # best restart is computed once by the caller
    return labels, centers, float(min_d.sum(dtype=_acc_dtype(x.device)).item()), n_iter


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def kmeans(
    x: Any,
    n_clusters: int,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    chunk_size: int | None = None,
) -> KMeansResult:
    """k-means (Lloyd) with greedy k-means++ seeding and ``n_init`` restarts.

    Minimises ``sum_i ||x_i - c_{label_i}||^2``. Each restart seeds with k-means++ (2 + int(log K)
    local trials per centre) and iterates until the labels stop changing, the total squared
    centre shift is ``<= tol * mean_j var(x[:, j])`` (scikit-learn's rule), or ``max_iter``
    iterations. The restart with the lowest inertia is returned.

    x: (N, D) numpy array or torch tensor; the computation (float32) and the result stay on x's
    device. ``chunk_size`` rows are processed per distance block (default: blocks of ~64 MB).
    The same ``seed`` gives the same result.
    """
    if isinstance(n_init, bool) or int(n_init) != n_init or n_init < 1:
        raise ConfigError(f"n_init must be a positive integer, got {n_init!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"tol must be a finite number >= 0, got {tol!r}")
    t = _as_float_tensor(x, "x")
    n, dim = t.shape
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise DataError(f"n_clusters must be an integer, got {n_clusters!r}")
    k = int(n_clusters)
    if k < 1 or k > n:
        raise DataError(
            f"n_clusters={k} but x has {n} samples; choose 1 <= n_clusters <= number of samples"
        )
    dev = t.device
    acc = _acc_dtype(dev)
    # centre the data (in the input's precision when it is wider) and compute in float32
    mean = t.mean(dim=0, dtype=acc if t.dtype != torch.float64 else torch.float64)
    if t.dtype == torch.float64:
        xc = (t - mean).to(torch.float32)
    else:
        xc = t.to(torch.float32) - mean.to(torch.float32)
    xc = xc.contiguous()
    x_sq = torch.linalg.vector_norm(xc, dim=1).pow_(2)
    tol_abs = float(tol) * float(x_sq.sum(dtype=acc).item()) / (n * dim)  # mean of per-feature variances
    chunk = _chunk_rows(n, k, chunk_size)

    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    best: tuple[torch.Tensor, torch.Tensor, float, int] | None = None
    for _ in range(int(n_init)):
        init = _kmeans_plusplus(xc, x_sq, k, gen, _BLOCK_ELEMS)
        res = _lloyd(xc, x_sq, init, int(max_iter), tol_abs, chunk)
        if best is None or res[2] < best[2]:
            best = res
    assert best is not None
    labels, centers, _, n_iter = best
    inertia = _inertia(xc, labels, centers)
    centers = centers + mean.to(torch.float32)
    return KMeansResult(labels=labels, centers=centers, inertia=float(inertia), n_iter=int(n_iter))


def assign_to_centers(
    x: Any, centers: Any, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row of x: returns ``(labels (N,) int64, squared distances (N,))``.

    Computed on x's device in float32, in chunks of rows, as ``||x-m||^2 - 2 (x-m).(c-m) +
    ||c-m||^2`` with m the mean of the centres (for accuracy).
    """
    t = _as_float_tensor(x, "x")
    c = _as_float_tensor(centers, "centers")
    if c.shape[1] != t.shape[1]:
        raise DataError(
            f"x has {t.shape[1]} features but the centres have {c.shape[1]}; use features from the "
            "same model/layer the centres were fitted on"
        )
    c = c.to(device=t.device, dtype=torch.float32)
    m = c.mean(dim=0)
    cc = c - m
    n = t.shape[0]
    chunk = _chunk_rows(n, c.shape[0], chunk_size)
    rows = min(chunk, max(1, _BLOCK_ELEMS // max(t.shape[1], 1)))
    labels = torch.empty(n, dtype=torch.long, device=t.device)
    dists = torch.empty(n, dtype=torch.float32, device=t.device)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        xb = t[s:e].to(torch.float32) - m
        xb_sq = torch.linalg.vector_norm(xb, dim=1).pow_(2)
        lab, md = _assign(xb, xb_sq, cc, e - s)
        labels[s:e] = lab
        dists[s:e] = md
    return labels, dists
