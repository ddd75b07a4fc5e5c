"""What the two-process tests need to stand in for torchrun: a free TCP port on this machine,
and the environment torchrun gives each process (read by deepclust's process-group set-up)."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_torchrun_env(rank: int, port: int, world: int) -> None:
    """This process as rank ``rank`` of ``world`` (one per machine), meeting on ``port``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        DEEPCLUST_DIST_TIMEOUT="120",
    )
