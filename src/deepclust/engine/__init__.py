"""Training engine: trainer loop, evaluation, checkpoints."""

from deepclust.engine.trainer import Trainer, train

__all__ = ["Trainer", "train"]
