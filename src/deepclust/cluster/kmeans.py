"""k-means in torch: greedy k-means++ seeding and chunked Lloyd iterations on x's device.

Squared distances are ``||x||^2 - 2 x.c + ||c||^2`` computed with one matmul per block of rows
(no ``torch.cdist``). Each Lloyd iteration is one pass over x that assigns the rows of a block
and adds them to the cluster sums while the block is in cache (a one-hot matmul on the CPU,
``index_add_`` elsewhere), as scikit-learn's ``lloyd`` does. Restarts are run as a batch, so
one matmul serves the centres of all of them. Compute is float32 on data centred by its mean
(as scikit-learn does, for accuracy); sums are accumulated in float64 across blocks and the
reported inertia is summed in float64 from exact differences. Stopping follows scikit-learn:
strict convergence, or a total squared centre shift ``<= tol * mean_j var(x[:, j])``. One
``torch.Generator`` on x's device, seeded from ``seed``, drives every random choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..precision import fp32

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


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


# --------------------------------------------------------------------------------------------
# core kernels. Restarts run as a batch: centres (R, K, D) are flattened to one (R*K, D) matrix,
# so every pass over x is a single matmul against the centres of all running restarts.
# --------------------------------------------------------------------------------------------

# restarts are batched while R * K stays below this many columns (wider gains nothing)
_BATCH_COLUMNS = 256
# on the CPU, blocks of ~8 MB stay in cache between the distance matmul and the sums matmul
_CPU_BLOCK_ELEMS = 1 << 21
# on the CPU, cluster sums are a one-hot matmul up to this many centre columns: scatter_add_ /
# index_add_ run one slow, barely threaded pass per restart (10x slower at R*K = 100), while
# the matmul costs as much as the distance matmul, so it loses only for very many centres
_ONEHOT_COLUMNS = 256


def _rows_per_block(n: int, cols: int, chunk_size: int | None, device: torch.device | None = None) -> int:
    budget = _CPU_BLOCK_ELEMS if device is not None and device.type == "cpu" else _BLOCK_ELEMS
    rows = max(1, budget // max(cols, 1))
    if chunk_size is not None:
        rows = min(rows, chunk_size)
    return max(1, min(n, rows))


@dataclass
class _Pass:
    """One pass over x for A restarts: labels (A, N), squared distances (A, N) and, when asked
    for, per-cluster sums (A, K, D) in the accumulation dtype and counts (A, K) int64."""

    labels: torch.Tensor
    dist: torch.Tensor
    sums: torch.Tensor | None = None
    counts: torch.Tensor | None = None


def _assign_pass(
    x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor, chunk_size: int | None, with_sums: bool
) -> _Pass:
    """Nearest centre of every row for every restart, and optionally the new cluster sums.

    centers (A, K, D). Per block of rows, ``d = ||c||^2 - 2 c.x`` is one ``addmm`` giving
    (A*K, rows); the argmin over K needs no ``||x||^2``, which is added to the minimum only.
    The sums of the same block follow while it is in cache: ``onehot(labels) @ x_block`` on the
    CPU for few centres, ``index_add_`` otherwise (atomic adds on the GPU).
    """
    a, k, dim = centers.shape
    n, dev = x.shape[0], x.device
    acc = _acc_dtype(dev)
    flat = centers.reshape(a * k, dim)
    c_sq = (flat * flat).sum(dim=1).unsqueeze(1)  # (A*K, 1)
    rows = _rows_per_block(n, a * k, chunk_size, dev)
    labels = torch.empty(a, n, dtype=torch.long, device=dev)
    dist = torch.empty(a, n, dtype=x.dtype, device=dev)
    onehot = with_sums and dev.type == "cpu" and a * k <= _ONEHOT_COLUMNS
    sums = torch.zeros(a * k, dim, dtype=acc, device=dev) if with_sums else None
    counts = torch.zeros(a * k, dtype=torch.long, device=dev) if with_sums else None
    offsets = (torch.arange(a, device=dev) * k).unsqueeze(1)  # restart j's clusters start at j*K
    for s in range(0, n, rows):
        e = min(s + rows, n)
        xb = x[s:e]
        d = torch.addmm(c_sq, flat, xb.t(), beta=1.0, alpha=-2.0).view(a, k, e - s)
        md, lab = d.min(dim=1)  # (A, rows): the reduction runs along contiguous rows
        labels[:, s:e] = lab
        dist[:, s:e] = md.add_(x_sq[s:e]).clamp_(min=0.0)
        if sums is not None and counts is not None:  # with_sums
            _add_block_sums(sums, counts, lab + offsets, xb, onehot)
    if sums is not None and counts is not None:
        return _Pass(labels, dist, sums.view(a, k, dim), counts.view(a, k))
    return _Pass(labels, dist)


def _add_block_sums(
    sums: torch.Tensor, counts: torch.Tensor, cols: torch.Tensor, xb: torch.Tensor, onehot: bool
) -> None:
    """Add the rows ``xb`` (m, D) to ``sums`` (A*K, D) and ``counts`` (A*K,) at the columns ``cols``
    (A, m): restart j puts row i in column ``cols[j, i]``."""
    if onehot:
        oh = torch.zeros(sums.shape[0], xb.shape[0], dtype=xb.dtype, device=xb.device)
        oh.scatter_(0, cols, 1.0)
        sums += (oh @ xb).to(sums.dtype)  # float32 block sums, accumulated across blocks in acc
    else:
        block = torch.zeros(sums.shape[0], xb.shape[1], dtype=xb.dtype, device=xb.device)
        for j in range(cols.shape[0]):
            block.index_add_(0, cols[j], xb)
        sums += block.to(sums.dtype)
    counts += torch.bincount(cols.reshape(-1), minlength=sums.shape[0])


def _full_sums(
    x: torch.Tensor, labels: torch.Tensor, k: int, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster sums (A, K, D) in the accumulation dtype and counts (A, K) of labels (A, N)."""
    a, n = labels.shape
    dev = x.device
    sums = torch.zeros(a * k, x.shape[1], dtype=_acc_dtype(dev), device=dev)
    counts = torch.zeros(a * k, dtype=torch.long, device=dev)
    offsets = (torch.arange(a, device=dev) * k).unsqueeze(1)
    onehot = dev.type == "cpu" and a * k <= _ONEHOT_COLUMNS
    rows = _rows_per_block(n, a * k, chunk_size, dev)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        _add_block_sums(sums, counts, labels[:, s:e] + offsets, x[s:e], onehot)
    return sums.view(a, k, -1), counts.view(a, k)


def _move_changed(
    x: torch.Tensor,
    prev: torch.Tensor,
    labels: torch.Tensor,
    changed: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
) -> None:
    """Update sums (A, K, D) and counts (A, K) in place for the points whose label changed from
    ``prev`` to ``labels`` (both (A, N)): + x to the new cluster, - x to the old one. Costs
    O(changed points), so late Lloyd iterations, where few points move, are nearly free."""
    a, k, dim = sums.shape
    ai, pi = changed.nonzero(as_tuple=True)
    m = pi.numel()
    if m == 0:
        return
    new_col = ai * k + labels[ai, pi]
    old_col = ai * k + prev[ai, pi]
    xm = x.index_select(0, pi)
    if x.device.type == "cpu" and a * k <= _ONEHOT_COLUMNS:
        # a signed one-hot matrix: one matmul instead of a slow scatter of rows
        sign = torch.zeros(a * k, m, dtype=x.dtype, device=x.device)
        ar = torch.arange(m, device=x.device)
        sign[new_col, ar] = 1.0
        sign[old_col, ar] = -1.0
        delta = sign @ xm
    else:
        delta = torch.zeros(a * k, dim, dtype=x.dtype, device=x.device)
        delta.index_add_(0, new_col, xm)
        delta.index_add_(0, old_col, -xm)
    sums.view(a * k, dim).add_(delta.to(sums.dtype))
    moves = torch.bincount(new_col, minlength=a * k) - torch.bincount(old_col, minlength=a * k)
    counts.view(-1).add_(moves)


def _assign(
    x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre and squared distance to it, for every row and every restart.

    centers: (R, K, D) or (K, D). Returns labels (R, N) int64 and distances (R, N) (or (N,) for
    2-D centers), from ``||x||^2 - 2 x.c + ||c||^2`` (see :func:`_assign_pass`).
    """
    single = centers.dim() == 2
    res = _assign_pass(x, x_sq, centers.unsqueeze(0) if single else centers, chunk_size, with_sums=False)
    if single:
        return res.labels[0], res.dist[0]
    return res.labels, res.dist


def _dist_to_assigned(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exact squared distance of every row to its assigned centre (explicit differences)."""
    n = x.shape[0]
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    rows = max(1, min(n, _BLOCK_ELEMS // max(x.shape[1], 1)))
    for s in range(0, n, rows):
        e = min(s + rows, n)
        diff = x[s:e] - centers.index_select(0, labels[s:e])
        out[s:e] = (diff * diff).sum(dim=1)
    return out


def _relocate_empty(
    x: torch.Tensor,
    centers: torch.Tensor,
    labels: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor | None:
    """Give every empty cluster one of the points farthest from their current centres.

    Updates labels (N,), sums (K, D) and counts (K,) in place; returns the indices of the moved
    points, or None when no cluster is empty.
    """
    empty_ids = (counts == 0).nonzero().squeeze(1)
    n_empty = int(empty_ids.numel())
    if n_empty == 0:
        return None
    dist = _dist_to_assigned(x, centers, labels)
    far = torch.topk(dist, min(n_empty, x.shape[0])).indices
    empty_ids = empty_ids[: far.numel()]
    xf = x.index_select(0, far).to(sums.dtype)
    old = labels.index_select(0, far)
    sums.index_add_(0, old, -xf)
    counts.index_add_(0, old, torch.full_like(old, -1))
    sums.index_add_(0, empty_ids, xf)
    counts.index_add_(0, empty_ids, torch.ones_like(empty_ids))
    labels[far] = empty_ids
    return far


def _sq_dist_to(x: torch.Tensor, x_sq: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(N, T) squared distances from every row of x to the rows of pts."""
    d = torch.addmm((pts * pts).sum(dim=1).unsqueeze(0), x, pts.t(), beta=1.0, alpha=-2.0)
    return d.add_(x_sq.unsqueeze(1)).clamp_(min=0.0)


def _kmeans_plusplus(
    x: torch.Tensor, x_sq: torch.Tensor, k: int, n_restarts: int, gen: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ for ``n_restarts`` independent restarts at once; returns (R, K, D).

    First centre uniform; then, per centre, 2 + int(log K) candidates are drawn with probability
    proportional to the squared distance to the nearest chosen centre (D^2 sampling), and the
    candidate giving the lowest potential (sum of squared distances) is kept.
    """
    n, dim = x.shape
    dev = x.device
    acc = _acc_dtype(dev)
    r = n_restarts
    t = 2 + int(math.log(k))
    rr = torch.arange(r, device=dev)
    centers = torch.empty(r, k, dim, dtype=x.dtype, device=dev)
    first = torch.randint(n, (r,), generator=gen, device=dev)
    centers[:, 0] = x.index_select(0, first)
    closest = _sq_dist_to(x, x_sq, centers[:, 0]).t().contiguous()  # (R, N)
    pot = closest.sum(dim=1, dtype=acc)
    rows = max(1, min(n, _BLOCK_ELEMS // (r * t)))
    for c in range(1, k):
        rand = torch.rand(r, t, generator=gen, device=dev, dtype=acc) * pot.unsqueeze(1)
        cum = torch.cumsum(closest, dim=1, dtype=acc)
        cand = torch.searchsorted(cum, rand, right=True).clamp_(max=n - 1)  # (R, T)
        pts = x.index_select(0, cand.reshape(-1))  # (R*T, D)
        if rows >= n:
            d = torch.minimum(_sq_dist_to(x, x_sq, pts).view(n, r, t), closest.t().unsqueeze(2))
            pots = d.sum(dim=0, dtype=acc)  # (R, T)
            best = pots.argmin(dim=1)  # (R,)
            closest = d[:, rr, best].t().contiguous()
        else:  # two passes over blocks of rows: potentials, then the chosen candidates' distances
            pots = torch.zeros(r, t, dtype=acc, device=dev)
            for s in range(0, n, rows):
                e = min(s + rows, n)
                d = torch.minimum(
                    _sq_dist_to(x[s:e], x_sq[s:e], pts).view(e - s, r, t), closest[:, s:e].t().unsqueeze(2)
                )
                pots += d.sum(dim=0, dtype=acc)
            best = pots.argmin(dim=1)
            bp = pts.view(r, t, dim)[rr, best]  # (R, D)
            for s in range(0, n, rows):
                e = min(s + rows, n)
                closest[:, s:e] = torch.minimum(_sq_dist_to(x[s:e], x_sq[s:e], bp).t(), closest[:, s:e])
        pot = pots[rr, best]
        centers[:, c] = x.index_select(0, cand[rr, best])
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
    chunk_size: int | None,
) -> list[tuple[torch.Tensor, torch.Tensor, float, int]]:
    """Lloyd iterations for a batch of restarts from ``centers`` (R, K, D), as scikit-learn's.

    Iteration t is one pass over x: every point goes to its nearest centre of C_t and, in the
    same pass, the cluster sums give C_{t+1} (empty clusters take the points farthest from
    their centres); once few points move, the sums are updated from the moved points only.
    A restart stops when its labels equal the previous iteration's (strict
    convergence; result: those labels and C_{t+1}), or when its total squared centre shift
    ``||C_{t+1} - C_t||^2 <= tol_abs`` or t = ``max_iter``: then one more assignment to
    C_{t+1} gives its labels (done in the next pass, beside the running restarts).

    Returns, per restart, (labels, centers, inertia from the expanded distances, n_iter).
    """
    r, k, dim = centers.shape
    n = x.shape[0]
    dev = x.device
    acc = _acc_dtype(dev)
    ids = list(range(r))  # restart id of each running row
    n_iter = [0] * r  # per running row: Lloyd iterations done
    final = [False] * r  # per running row: this pass is the closing assignment
    prev: torch.Tensor | None = None  # previous labels of the running rows
    sums: torch.Tensor | None = None  # cluster sums (A, K, D) and counts (A, K) of ``prev``
    counts: torch.Tensor | None = None
    # Once few points move (<= 1/4 of them), the sums follow the moved points only instead of
    # being recomputed in the pass: that halves the cost of the late iterations.
    incremental = False
    results: list = [None] * r
    while ids:
        a = len(ids)
        need = not all(final)
        p = _assign_pass(x, x_sq, centers, chunk_size, with_sums=need and not incremental)
        changed = None if prev is None else p.labels != prev
        moved = a * n if changed is None else int(changed.sum())
        keep: list[int] = []
        new = centers
        shifts = [0.0] * a
        relocated = [False] * a
        same = [False] * a if changed is None else (~changed.any(dim=1)).tolist()
        if need:
            if p.sums is not None and p.counts is not None:
                sums, counts = p.sums, p.counts
            elif moved <= a * n // 4:
                assert prev is not None and changed is not None and sums is not None and counts is not None
                _move_changed(x, prev, p.labels, changed, sums, counts)
            else:  # many moved after all: recompute
                sums, counts = _full_sums(x, p.labels, k, chunk_size)
            assert sums is not None and counts is not None
            incremental = moved <= a * n // 4
            if bool((counts == 0).any()):
                for j in range(a):
                    if not final[j]:
                        relocated[j] = _relocate_empty(x, centers[j], p.labels[j], sums[j], counts[j]) is not None
            mean = sums / counts.clamp(min=1).unsqueeze(2).to(acc)
            new = torch.where((counts > 0).unsqueeze(2), mean.to(x.dtype), centers)
            shifts = ((new.to(acc) - centers.to(acc)) ** 2).sum(dim=(1, 2)).tolist()
        inertia = p.dist.sum(dim=1, dtype=acc)
        for j in range(a):
            if final[j]:  # labels of the final centres
                results[ids[j]] = (p.labels[j], centers[j], inertia[j], n_iter[j])
                continue
            n_iter[j] += 1
            if same[j] and not relocated[j]:  # strict convergence: C_{t+1} = C_t
                results[ids[j]] = (p.labels[j], new[j], inertia[j], n_iter[j])
                continue
            final[j] = shifts[j] <= tol_abs or n_iter[j] >= max_iter
            keep.append(j)
        if not keep:
            break
        kt = torch.tensor(keep, device=dev)
        centers = new.index_select(0, kt)
        prev = p.labels.index_select(0, kt)
        if sums is not None and counts is not None:
            sums, counts = sums.index_select(0, kt), counts.index_select(0, kt)
        ids = [ids[j] for j in keep]
        n_iter = [n_iter[j] for j in keep]
        final = [final[j] for j in keep]
    return [(lab, c, float(inert.item()), it_) for lab, c, inert, it_ in results]


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
    iterations. The restart with the lowest inertia is returned. Empty clusters are re-seeded
    with the points farthest from their centres.

    The computation (float32, on data centred by its mean) and the result stay on x's device.
    Restarts run batched while n_init * K is small (one matmul serves them all). The same
    ``seed`` gives the same result on the same device (on CUDA, up to the nondeterminism of
    atomic float additions unless deterministic algorithms are enabled). Autocast is disabled
    inside (a bf16 distance matmul would mis-assign near-ties), so calling it under
    ``torch.autocast`` gives the float32 result.

    Parameters
    ----------
    x : (N, D) numpy array or torch tensor.
    n_clusters : K, 1 <= K <= N.
    n_init : restarts (k-means++ seedings); the lowest inertia wins.
    max_iter : Lloyd iterations per restart at most.
    tol : relative tolerance on the centre shift (see above).
    seed : the seed of the k-means++ draws.
    chunk_size : rows per distance block (None: blocks of ~64 MB).

    Returns
    -------
    KMeansResult
        ``labels`` (N,) int64, ``centers`` (K, D) float32, ``inertia`` and ``n_iter`` of the
        best restart, on x's device.
    """
    with fp32(x):
        return _kmeans(x, n_clusters, n_init, max_iter, tol, seed, chunk_size)


def _kmeans(
    x: Any, n_clusters: int, n_init: int, max_iter: int, tol: float, seed: int, chunk_size: int | None
) -> KMeansResult:
    if isinstance(n_init, bool) or int(n_init) != n_init or n_init < 1:
        raise ConfigError(f"n_init must be a positive integer, got {n_init!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"tol must be a finite number >= 0, got {tol!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1):
        raise ConfigError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    t = _as_float_tensor(x, "x")
    n, dim = t.shape
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise DataError(f"n_clusters must be an integer, got {n_clusters!r}")
    k = int(n_clusters)
    if k < 1 or k > n:
        raise DataError(f"n_clusters={k} but x has {n} samples; choose 1 <= n_clusters <= number of samples")
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
    chunk = None if chunk_size is None else int(chunk_size)

    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    group = max(1, min(int(n_init), _BATCH_COLUMNS // k))
    best: tuple[torch.Tensor, torch.Tensor, float, int] | None = None
    done = 0
    while done < n_init:
        r = min(group, int(n_init) - done)
        init = _kmeans_plusplus(xc, x_sq, k, r, gen)
        for res in _lloyd(xc, x_sq, init, int(max_iter), tol_abs, chunk):
            if best is None or res[2] < best[2]:
                best = res
        done += r
    assert best is not None
    labels, centers, _, n_iter = best
    inertia = _inertia(xc, labels, centers)
    centers = centers + mean.to(torch.float32)
    return KMeansResult(labels=labels, centers=centers, inertia=float(inertia), n_iter=int(n_iter))


def assign_to_centers(x: Any, centers: Any, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row of x: returns ``(labels (N,) int64, squared distances (N,))``.

    Computed on x's device in float32, in chunks of rows, as ``||x-m||^2 - 2 (x-m).(c-m) +
    ||c-m||^2`` with m the mean of the centres (for accuracy). Autocast is disabled inside.
    """
    with fp32(x):
        return _assign_to_centers(x, centers, chunk_size)


def _assign_to_centers(x: Any, centers: Any, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
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
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1):
        raise ConfigError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    n = t.shape[0]
    rows = _rows_per_block(n, max(c.shape[0], t.shape[1]), chunk_size)
    labels = torch.empty(n, dtype=torch.long, device=t.device)
    dists = torch.empty(n, dtype=torch.float32, device=t.device)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        xb = t[s:e].to(torch.float32) - m
        xb_sq = torch.linalg.vector_norm(xb, dim=1).pow_(2)
        lab, md = _assign(xb, xb_sq, cc)
        labels[s:e] = lab
        dists[s:e] = md
    return labels, dists
