"""k-means over feature shards held by the processes of a ``torch.distributed`` group.

For feature sets too big for one device: every process keeps its own rows; only the K x D
centres and per-cluster sums travel. One Lloyd iteration is

    labels_i = argmin_k ||x_i - c_k||^2          (each process, its rows: assign_to_centers)
    S_k = sum_{labels_i = k} x_i,  n_k = #{i : labels_i = k}   (all-reduced, float64 sums)
    c_k = S_k / n_k

stopping when no label changes anywhere or the total squared centre shift is at most
``tol * mean_j var(x[:, j])`` (scikit-learn's rule). Empty clusters take the points farthest from
their centres over all processes. Each of the ``n_init`` restarts starts from k-means++ + Lloyd
(:func:`deepclust.cluster.kmeans`, one restart) on a sample gathered from every shard (all rows
when the whole set is at most ``sample_size``); the restart with the lowest global inertia wins.
The data are centred by their global mean first, as :func:`kmeans` does, for accuracy.

Without an initialised process group it is ordinary k-means on the local rows.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from deepclust.cluster.kmeans import KMeansResult, assign_to_centers, kmeans
from deepclust.collectives import Collectives
from deepclust.errors import ConfigError, DataError

__all__ = ["kmeans_distributed"]

_ROWS = 65536  # rows per block for the exact inertia and the sums


def _sums_counts(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster float64 sums (K, D) and counts (K,) of the local rows."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], _ROWS):
        sums.index_add_(0, labels[s : s + _ROWS], x[s : s + _ROWS].double())
    return sums, torch.bincount(labels, minlength=k).double()


def _relocate_empty(
    x: torch.Tensor, labels: torch.Tensor, d2: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, comm: Collectives
) -> None:
    """Move the globally farthest points (from their centres) into the empty clusters; updates
    the global ``sums`` and ``counts`` in place (identically on every process) and the local labels."""
    empty = (counts == 0).nonzero().squeeze(1)
    n_empty = int(empty.numel())
    if n_empty == 0:
        return
    m = min(n_empty, x.shape[0])
    top = torch.topk(d2, m).indices
    # candidates: (distance, owner rank, local row, old label, coordinates) from every process
    cand = torch.cat(
        [
            d2[top].double().unsqueeze(1),
            torch.full((m, 1), float(comm.rank), dtype=torch.float64, device=x.device),
            top.double().unsqueeze(1),
            labels[top].double().unsqueeze(1),
            x[top].double(),
        ],
        dim=1,
    )
    allc = comm.gather(comm.to_backend(cand)).to(x.device)
    order = torch.argsort(allc[:, 0], descending=True, stable=True)[:n_empty]
    for j, row in enumerate(allc[order]):
        k_new, k_old = int(empty[j]), int(row[3])
        pt = row[4:]
        sums[k_old] -= pt
        counts[k_old] -= 1
        sums[k_new] += pt
        counts[k_new] += 1
        if int(row[1]) == comm.rank:
            labels[int(row[2])] = k_new


def _assign(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre and squared distance of the local rows (a process may hold none)."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device), x.new_zeros(0)
    return assign_to_centers(x, centers)


def _exact_inertia(x: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], _ROWS):
        diff = x[s : s + _ROWS] - centers.index_select(0, labels[s : s + _ROWS])
        total += (diff * diff).sum(dtype=torch.float64)
    return total


def _lloyd(
    x: torch.Tensor, centers: torch.Tensor, max_iter: int, tol_abs: float, comm: Collectives
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Distributed Lloyd from ``centers`` (K, D) (identical on every process)."""
    k = centers.shape[0]
    prev: torch.Tensor | None = None
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the iteration count is returned after the loop
        labels, d2 = _assign(x, centers)
        changed = x.new_tensor(
            float(x.shape[0]) if prev is None else float((labels != prev).sum()), dtype=torch.float64
        )
        sums, counts = _sums_counts(x, labels, k)
        packed = comm.all_sum(torch.cat([sums.reshape(-1), counts, changed.view(1)]))
        sums, counts, n_changed = packed[: k * x.shape[1]].view(k, -1), packed[k * x.shape[1] : -1], float(packed[-1])
        if prev is not None and n_changed == 0:
            break  # strict convergence: the centres are the means of these labels already
        _relocate_empty(x, labels, d2, sums, counts, comm)
        new = torch.where((counts > 0).unsqueeze(1), sums / counts.clamp_min(1).unsqueeze(1), centers.double()).float()
        shift = float(((new.double() - centers.double()) ** 2).sum())
        centers, prev = new, labels
        if shift <= tol_abs:
            break
    labels, _ = _assign(x, centers)
    inertia = float(comm.all_sum(_exact_inertia(x, labels, centers).view(1)))
    return labels, centers, inertia, it


def _gathered_sample(x: torch.Tensor, n_total: int, sample_size: int, seed: int, comm: Collectives) -> torch.Tensor:
    """Rows drawn from every shard in proportion to its size (all rows when the set is small),
    concatenated in rank order on every process."""
    if n_total <= sample_size:
        mine = x
    else:
        take = min(x.shape[0], math.ceil(sample_size * x.shape[0] / n_total))
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + comm.rank)
        mine = x[torch.randperm(x.shape[0], generator=g)[:take].to(x.device)]
    return comm.gather(comm.to_backend(mine)).to(x.device)


def kmeans_distributed(
    x: Any,
    n_clusters: int,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    init: torch.Tensor | None = None,
    sample_size: int = 50_000,
    group: Any = None,
) -> KMeansResult:
    """k-means of the union of every process's rows ``x`` (N_r, D) (see the module docstring).

    Returns ``labels`` of this process's rows, the global ``centers`` (K, D) and ``inertia``
    (identical on every process), and the iterations of the best restart. ``init`` (K, D): start
    every process from these centres (one restart, no sampling). Every process must call it with
    the same arguments; ``group`` is the process group (default: the whole job).
    """
    if isinstance(n_init, bool) or int(n_init) != n_init or n_init < 1:
        raise ConfigError(f"n_init must be a positive integer, got {n_init!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"tol must be a finite number >= 0, got {tol!r}")
    comm = Collectives.for_group(group)
    t = torch.as_tensor(x).detach()
    if t.dim() != 2:
        raise DataError(f"x must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}")
    t = t.float()
    dim = t.shape[1]
    head = comm.all_sum(torch.tensor([float(t.shape[0])], dtype=torch.float64, device=t.device))
    n = int(head.item())
    k = int(n_clusters)
    if k < 1 or k > n:
        raise DataError(f"n_clusters={k} but the processes hold {n} samples in all; choose 1 <= n_clusters <= {n}")
    if t.shape[0] and not bool(torch.isfinite(t).all()):
        raise DataError("x has NaN or inf values; remove or impute them before clustering")
    mean = (comm.all_sum(t.double().sum(0)) / n).float()
    xc = (t - mean).contiguous()
    tol_abs = float(tol) * float(comm.all_sum((xc.double() ** 2).sum().view(1))) / (n * dim)
    best: tuple[torch.Tensor, torch.Tensor, float, int] | None = None
    restarts = 1 if init is not None else int(n_init)
    sample = None if init is not None else _gathered_sample(xc, n, int(sample_size), seed, comm)
    for r in range(restarts):
        if init is not None:
            start = torch.as_tensor(init).float().to(xc.device) - mean
        else:
            assert sample is not None
            # every process runs the same seeded k-means on the same sample; rank 0's centres are
            # broadcast anyway, since CUDA reductions may differ in the last bits
            start = kmeans(sample, k, n_init=1, max_iter=max_iter, tol=tol, seed=int(seed) + r).centers.to(xc.device)
            start = comm.broadcast_(comm.to_backend(start.contiguous())).to(xc.device)
        res = _lloyd(xc, start, int(max_iter), tol_abs, comm)
        if best is None or res[2] < best[2]:
            best = res
    assert best is not None
    labels, centers, inertia, n_iter = best
    return KMeansResult(labels=labels, centers=centers + mean, inertia=inertia, n_iter=n_iter)
