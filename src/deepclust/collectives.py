"""Collectives over the processes of a torchrun job, as one small handle the methods hold.

A method computes "global batch" quantities (contrastive losses, the feature decorrelation,
Sinkhorn, DEC targets, memory-bank / label / dual updates) through ``self.dist``; with one
process every call returns its input unchanged, so the single-process path is untouched.

Gradient convention (proved by tests/engine/test_distributed.py). The trainer averages gradients
over the W processes, like DDP, and each process back-propagates its own loss L_r; the
optimised objective is then J = (1/W) sum_r L_r:

- a term computed on *gathered* tensors is the same on every process (L_r = L_global); the
  backward of :meth:`Collectives.gather_with_grad` sums the gradients that every process's
  copy of the gathered tensor received, so each process gets W dL/d(its rows), and the
  average over processes gives exactly dL_global/dtheta;
- a term that is a mean over the process's own rows is averaged into the global mean.

When the global batch does not split evenly (the last batch of an epoch), every process's
loss is scaled by :attr:`Collectives.loss_weight` = W b_r / B (b_r its rows, B the global
batch): both rules above stay exact, since sum_r W b_r / B = W.

The trainer's own collectives are here too: :func:`average_gradients` (DDP's arithmetic) and
:func:`broadcast_state` (one model on every process). Joining the process group is
:mod:`deepclust.engine.process_group`'s job; BatchNorm across processes is
:mod:`deepclust.engine.batchnorm`'s; k-means over shards is :mod:`deepclust.cluster.sharded_kmeans`'s.

This module is a leaf (torch only), so the methods can import it without the engine.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

__all__ = ["Collectives", "SINGLE_PROCESS", "average_gradients", "broadcast_state", "split_sizes"]

_BUCKET_BYTES = 25 * 1024 * 1024  # DDP's default bucket size


def split_sizes(total: int, world: int) -> list[int]:
    """Rows per process of a batch of ``total`` rows (``torch.tensor_split`` order): the first
    ``total % world`` processes take one row more."""
    base, extra = divmod(int(total), int(world))
    return [base + (1 if r < extra else 0) for r in range(world)]


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate every process's rows; backward sums the gathered gradient over the processes
    (the adjoint of the gather: every process's loss used its own copy) and keeps this
    process's rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, comm: Collectives, sizes: list[int]) -> torch.Tensor:
        ctx.comm, ctx.sizes = comm, sizes
        return comm._gather(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        comm, sizes = ctx.comm, ctx.sizes
        grad = grad.contiguous().clone()  # all_reduce works in place; autograd may share grad
        tdist.all_reduce(grad, group=comm.group)
        lo = sum(sizes[: comm.rank])
        return grad[lo : lo + sizes[comm.rank]], None, None


class Collectives:
    """World size, rank and the collectives the methods and the trainer use.

    ``Collectives()`` is the single-process handle: ``gather`` returns its input, reductions
    do nothing. The trainer builds the torchrun one (engine/process_group.py) and announces
    each global batch with :meth:`split`, so gathers of batch rows need no size exchange.
    """

    def __init__(self, world: int = 1, rank: int = 0, group: Any = None, backend: str | None = None) -> None:
        self.world = int(world)
        self.rank = int(rank)
        self.group = group  # None: the default (WORLD) group
        self.backend = backend
        self.owns_group = False  # True when the trainer initialised it (and must destroy it)
        self._sizes: list[int] | None = None
        self.loss_weight = 1.0

    @classmethod
    def for_group(cls, group: Any = None) -> Collectives:
        """The handle of ``group`` (None: the whole job) in an initialised process group; the
        single-process handle when there is none or it has one process."""
        if not (tdist.is_available() and tdist.is_initialized()):
            return SINGLE_PROCESS
        world = tdist.get_world_size(group)
        if world == 1:
            return SINGLE_PROCESS
        return cls(world, tdist.get_rank(group), group, backend=str(tdist.get_backend(group)))

    # ----- who am I ----------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Collectives(world={self.world}, rank={self.rank}, backend={self.backend})"

    # ----- the current global batch ----------------------------------------------------------
    def split(self, total: int) -> slice:
        """Announce a global batch of ``total`` rows; returns this process's rows of it and sets
        :attr:`loss_weight` (W b_r / B, 1.0 for an even split)."""
        if not self.enabled:
            return slice(0, int(total))
        sizes = split_sizes(total, self.world)
        self._sizes = sizes
        self.loss_weight = self.world * sizes[self.rank] / total
        lo = sum(sizes[: self.rank])
        return slice(lo, lo + sizes[self.rank])

    @property
    def batch_sizes(self) -> list[int] | None:
        """Rows per process of the announced global batch (None before :meth:`split`)."""
        return self._sizes

    def local_rows(self, n_local: int) -> slice:
        """This process's rows inside a gathered batch whose local part has ``n_local`` rows."""
        if not self.enabled:
            return slice(0, n_local)
        sizes = self._sizes_for(n_local)
        lo = sum(sizes[: self.rank])
        return slice(lo, lo + n_local)

    def _global(self, rank: int) -> int:
        """A rank of this handle's group as torch.distributed's global rank (src / dst)."""
        return rank if self.group is None else tdist.get_global_rank(self.group, rank)

    def _sizes_for(self, n_local: int) -> list[int]:
        s = self._sizes
        if s is not None and s[self.rank] == n_local:
            return s
        # Not a batch the trainer announced: exchange the sizes (one small collective).
        return self.all_gather_ints(n_local)

    # ----- gathers -------------------------------------------------------------------------------
    def _gather(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        m = max(sizes)
        x = x.contiguous()
        if x.shape[0] < m:  # uneven split: pad to the largest share, trim after the gather
            x = torch.cat([x, x.new_zeros((m - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(x) for _ in range(self.world)]
        tdist.all_gather(parts, x, group=self.group)
        if all(s == m for s in sizes):
            return torch.cat(parts)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of every process concatenated in rank order (= the global batch), no gradient."""
        if not self.enabled:
            return x
        with torch.no_grad():
            return self._gather(x.detach(), self._sizes_for(x.shape[0]))

    def gather_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """As :meth:`gather`, but differentiable (see the module docstring for the gradient)."""
        if not self.enabled:
            return x
        return _GatherWithGrad.apply(x, self, self._sizes_for(x.shape[0]))

    def stack_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """(W, *x.shape): one equal-shaped tensor per process, differentiable."""
        if not self.enabled:
            return x.unsqueeze(0)
        return _GatherWithGrad.apply(x.unsqueeze(0), self, [1] * self.world)

    def gather_rows(self, x: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
        """Every process's rows (any number each) concatenated on process ``dst``; None elsewhere."""
        if not self.enabled:
            return x
        sizes = self.all_gather_ints(x.shape[0])
        m = max(sizes)
        x = x.detach().contiguous()
        if x.shape[0] < m:
            x = torch.cat([x, x.new_zeros((m - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(x) for _ in range(self.world)] if self.rank == dst else None
        tdist.gather(x, parts, dst=self._global(dst), group=self.group)
        if parts is None:
            return None
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])

    # ----- reductions and broadcasts -------------------------------------------------------------
    def all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place sum / mean / max over the processes (no gradient); returns x."""
        if not self.enabled:
            return x
        red = {"sum": tdist.ReduceOp.SUM, "mean": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX}[op]
        tdist.all_reduce(x, op=red, group=self.group)
        if op == "mean":
            x.div_(self.world)
        return x

    def all_gather_ints(self, value: int) -> list[int]:
        """One integer from every process, in rank order."""
        if not self.enabled:
            return [int(value)]
        dev = self.device_for_collectives()
        t = torch.tensor([int(value)], dtype=torch.long, device=dev)
        parts = [torch.empty_like(t) for _ in range(self.world)]
        tdist.all_gather(parts, t, group=self.group)
        return [int(p.item()) for p in parts]

    def broadcast_(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """In-place broadcast from ``src``; returns x."""
        if self.enabled:
            tdist.broadcast(x, src=self._global(src), group=self.group)
        return x

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """A picklable object from ``src`` on every process."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        tdist.broadcast_object_list(box, src=self._global(src), group=self.group, device=self._object_device())
        return box[0]

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every process's picklable object, in rank order, on ``dst`` (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.rank == dst else None
        tdist.gather_object(obj, out, dst=self._global(dst), group=self.group)
        return out

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the processes, as a new tensor on ``t``'s device (it travels on the
        backend's device); ``t`` itself when there is one process."""
        if not self.enabled:
            return t
        return self.all_reduce(self.to_backend(t.clone()), "sum").to(t.device)

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier(group=self.group)

    # ----- devices ------------------------------------------------------------------------------
    def device_for_collectives(self) -> torch.device:
        """NCCL moves CUDA tensors only; gloo CPU tensors."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def to_backend(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the device the backend moves (CUDA for NCCL, CPU for gloo); unchanged in one process."""
        return t.to(self.device_for_collectives()) if self.enabled else t

    def _object_device(self) -> torch.device | None:
        return self.device_for_collectives() if self.backend == "nccl" else None


#: the handle of a single process: gathers return their input, reductions do nothing
SINGLE_PROCESS = Collectives()


# ----- the trainer's collectives: gradients and replicated state ------------------------------
def average_gradients(params: list[nn.Parameter], comm: Collectives, bucket_bytes: int = _BUCKET_BYTES) -> None:
    """Replace every ``p.grad`` by its mean over the processes (bucketed all-reduces, launched
    asynchronously and then awaited). Parameters without a gradient are skipped; every process
    runs the same step, so they are the same on all of them."""
    if not comm.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        same_kind = buckets and buckets[-1][0].dtype == g.dtype and buckets[-1][0].device == g.device
        if not same_kind or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(g)
        size += nbytes
    pending = []
    for bucket in buckets:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        pending.append((bucket, flat, tdist.all_reduce(flat, group=comm.group, async_op=True)))
    for bucket, flat, work in pending:
        work.wait()
        flat.div_(comm.world)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@torch.no_grad()
def broadcast_state(module: nn.Module, comm: Collectives, src: int = 0) -> None:
    """Make every parameter and buffer equal to process ``src``'s (once, at the start: CUDA
    k-means or initialisations may differ in the last bits between processes)."""
    if not comm.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        comm.broadcast_(t.data, src)
