"""Data-parallel training under ``torchrun``: one process per device (PyTorch DDP semantics).

``torchrun --nproc_per_node=N -m deepclust train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; :func:`init_distributed` joins the group (NCCL on CUDA, gloo on CPU) and
returns the :class:`~deepclust.collectives.Collectives` handle the trainer and the methods use.
Without those variables (or with WORLD_SIZE=1) everything here is a no-op.

Why not ``DistributedDataParallel``: a method's ``training_step`` is not one ``forward()`` (SeCu
runs two forwards, AnchorCL three, with state updates between), which DDP's reducer does not
follow. The trainer instead averages the gradients after ``backward()`` with bucketed
all-reduces (:func:`average_gradients`): the same arithmetic as DDP, without overlapping the
communication with the backward pass (a few ms per step for a ResNet-18 on NVLink).

BatchNorm: by default every process normalises with its own rows (DDP's default); the running
statistics are averaged over the processes at every epoch end (:func:`average_batchnorm_stats`)
so that evaluation and checkpoints see one model. ``train.sync_bn=true`` replaces every
BatchNorm by :class:`SyncBatchNorm`, which normalises with the statistics of the global batch on
any device (torch's own SyncBatchNorm is CUDA-only), so the run computes what one process on the
global batch computes.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from deepclust.collectives import SINGLE_PROCESS, Collectives
from deepclust.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "SyncBatchNorm",
    "average_batchnorm_stats",
    "average_gradients",
    "broadcast_state",
    "close_distributed",
    "convert_sync_batchnorm",
    "env_world_size",
    "init_distributed",
]

#: seconds a collective may wait (rank 0 alone runs the evaluation k-means meanwhile)
DEFAULT_TIMEOUT_S = 3600
_BUCKET_BYTES = 25 * 1024 * 1024  # DDP's default bucket size


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE='{os.environ['WORLD_SIZE']}' is not an integer; launch with torchrun") from None


def init_distributed(device: torch.device) -> tuple[Collectives, torch.device]:
    """Join the torchrun process group (or use an initialised one) and pick this process's device.

    Returns the single-process handle and ``device`` unchanged when not distributed. On CUDA
    the device becomes ``cuda:LOCAL_RANK`` and the backend NCCL; on CPU the backend is gloo.
    ``DEEPCLUST_DIST_TIMEOUT`` (seconds, default 3600) bounds every collective. Processes other
    than rank 0 log warnings only.
    """
    initialised = tdist.is_available() and tdist.is_initialized()
    world = tdist.get_world_size() if initialised else env_world_size()
    if world <= 1:
        return SINGLE_PROCESS, device
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"distributed training runs on CUDA (NCCL) or CPU (gloo), not '{device.type}'; pass --device cuda or cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s); "
                "use --nproc_per_node at most the number of GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not initialised:
        if not tdist.is_available():
            raise ConfigError("this PyTorch build has no torch.distributed; run a single process (without torchrun)")
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get("DEEPCLUST_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        tdist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        owns = True
    backend = str(tdist.get_backend())
    if device.type == "cuda" and backend != "nccl":
        log.warning("process group backend is %s on CUDA tensors; NCCL is the fast choice", backend)
    comm = Collectives(tdist.get_world_size(), tdist.get_rank(), backend=backend)
    comm.owns_group = owns
    if not comm.is_main:
        logging.getLogger("deepclust").setLevel(logging.WARNING)  # one process reports
    return comm, device


def close_distributed(comm: Collectives) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if comm.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()
        comm.owns_group = False


# ----- gradients and replicated state ---------------------------------------------------------
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


def _bn_stat_tensors(module: nn.Module) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and not isinstance(m, SyncBatchNorm) and m.running_mean is not None and m.running_var is not None:
            out += [m.running_mean, m.running_var]
    return out


@torch.no_grad()
def average_batchnorm_stats(module: nn.Module, comm: Collectives) -> None:
    """Average the running mean/variance of every (non-synchronised) BatchNorm over the processes."""
    if not comm.enabled:
        return
    stats = _bn_stat_tensors(module)
    if not stats:
        return
    flat = torch.cat([t.reshape(-1).float() for t in stats])
    comm.all_reduce(flat, "mean")
    offset = 0
    for t in stats:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


@torch.no_grad()
def broadcast_state(module: nn.Module, comm: Collectives, src: int = 0) -> None:
    """Make every parameter and buffer equal to process ``src``'s (once, at the start: CUDA
    k-means or initialisations may differ in the last bits between processes)."""
    if not comm.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        comm.broadcast_(t.data, src)


# ----- BatchNorm over the global batch ------------------------------------------------------------
class SyncBatchNorm(_BatchNorm):
    """BatchNorm with the statistics of the global batch, on any device (gloo or NCCL).

    Every process computes the count n_r, mean m_r and biased variance v_r of its rows; they are
    gathered with gradient and combined exactly (Chan et al.):

        n = sum_r n_r,  m = sum_r n_r m_r / n,  v = sum_r n_r (v_r + (m_r - m)^2) / n

    then y = (x - m) / sqrt(v + eps) * weight + bias, and the running statistics are updated as
    BatchNorm does (unbiased variance v n / (n - 1)). In eval mode, or with one process, it is
    the ordinary BatchNorm. Statistics are computed in float32.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, comm: Collectives = SINGLE_PROCESS) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.comm = comm

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.comm.enabled):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        n_local = x.numel() // c
        mean_l = xf.mean(dims)
        var_l = xf.var(dims, unbiased=False)
        count = torch.full((1,), float(n_local), device=x.device)
        stats = self.comm.stack_with_grad(torch.cat([mean_l, var_l, count]))  # (W, 2C + 1)
        counts = stats[:, 2 * c : 2 * c + 1]
        n = counts.sum()
        mean = (counts * stats[:, :c]).sum(0) / n
        var = (counts * (stats[:, c : 2 * c] + (stats[:, :c] - mean) ** 2)).sum(0) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))  # a tensor: no host sync
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, comm: Collectives) -> nn.Module:
    """Replace every BatchNorm{1,2,3}d inside ``module`` by :class:`SyncBatchNorm`, keeping the
    same parameter and buffer tensors (so optimisers, state_dict keys and checkpoints are
    unchanged). Returns ``module`` (or the replacement when ``module`` itself is a BatchNorm)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, comm)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in list(module.named_children()):
        new_child = convert_sync_batchnorm(child, comm)
        if new_child is not child:
            module._modules[name] = new_child
    return module
