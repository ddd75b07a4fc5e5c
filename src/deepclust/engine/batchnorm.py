"""BatchNorm under torchrun: one set of statistics for the whole job.

By default every process normalises with its own rows (DDP's default); the running statistics
are averaged over the processes at every epoch end (:func:`average_batchnorm_stats`) so that
evaluation and checkpoints see one model. ``train.sync_bn=true`` replaces every BatchNorm by
:class:`SyncBatchNorm`, which normalises with the statistics of the global batch on any device
(torch's own SyncBatchNorm is CUDA-only), so the run computes what one process on the global
batch computes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from deepclust.collectives import SINGLE_PROCESS, Collectives

__all__ = ["SyncBatchNorm", "average_batchnorm_stats", "convert_sync_batchnorm"]


def _bn_stat_tensors(module: nn.Module) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for m in module.modules():
        if (
            isinstance(m, _BatchNorm)
            and not isinstance(m, SyncBatchNorm)
            and m.running_mean is not None
            and m.running_var is not None
        ):
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

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        comm: Collectives = SINGLE_PROCESS,
    ) -> None:
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
        if (
            self.track_running_stats
            and self.running_mean is not None
            and self.running_var is not None
            and self.num_batches_tracked is not None
        ):
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
        new = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, comm
        )
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
