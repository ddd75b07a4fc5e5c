"""Training engine: trainer loop, evaluation, checkpoints.

``Trainer`` and ``train`` load on first use, so that importing a light engine module
(``engine.io``, ``engine.device``) does not import the whole trainer and everything it imports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from deepclust.engine import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'deepclust.engine' has no attribute '{name}'")
