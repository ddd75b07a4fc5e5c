"""The torchrun process group: join it, pick this process's device, leave it.

``torchrun --nproc_per_node=N -m deepclust train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; :func:`init_distributed` joins the group (NCCL on CUDA, gloo on CPU) and
returns the :class:`~deepclust.collectives.Collectives` handle the trainer and the methods use.
Without those variables (or with WORLD_SIZE=1) everything here is a no-op.

Why not ``DistributedDataParallel``: a method's ``training_step`` is not one ``forward()`` (SeCu
runs two forwards, AnchorCL three, with state updates between), which DDP's reducer does not
follow. The trainer instead averages the gradients after ``backward()`` with bucketed
all-reduces (:func:`deepclust.collectives.average_gradients`): the same arithmetic as DDP,
without overlapping the communication with the backward pass (a few ms per step for a
ResNet-18 on NVLink). BatchNorm across processes: :mod:`deepclust.engine.batchnorm`.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as tdist

from deepclust.collectives import SINGLE_PROCESS, Collectives
from deepclust.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["close_distributed", "env_world_size", "init_distributed"]

#: seconds a collective may wait (rank 0 alone runs the evaluation k-means meanwhile)
DEFAULT_TIMEOUT_S = 3600


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
        raise ConfigError(
            f"distributed training runs on CUDA (NCCL) or CPU (gloo), not '{device.type}'; pass --device cuda or cpu"
        )
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
