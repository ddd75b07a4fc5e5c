"""Batches of pre-cut views, for streamed data.

A streamed batch arrives as one uint8 (B, C, S, S) tensor per view a method asked for (its
:meth:`~deepclust.methods.base.ClusteringMethod.stream_views`, in call order): the random
resized crop, or the plain resize, was done from the original file by a loader worker. Each
pipeline called on a :class:`ViewBatch` takes the next view cut for it and skips its own crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ViewBatch"]


class ViewBatch:
    """Views of one batch, each cut for a given pipeline (``owners[k]`` for ``views[k]``)."""

    def __init__(self, views: Sequence[Tensor], owners: Sequence[nn.Module]) -> None:
        if len(views) != len(owners) or not views:
            raise ValueError(f"ViewBatch: {len(views)} views for {len(owners)} pipelines")
        self.views, self.owners = list(views), list(owners)
        self._taken = [False] * len(self.views)

    @property
    def shape(self) -> torch.Size:
        return self.views[0].shape

    @property
    def device(self) -> torch.device:
        return self.views[0].device

    def __len__(self) -> int:
        return int(self.views[0].shape[0])

    def take(self, pipeline: nn.Module) -> Tensor:
        """The next unused view cut for ``pipeline``."""
        for k, owner in enumerate(self.owners):
            if owner is pipeline and not self._taken[k]:
                self._taken[k] = True
                return self.views[k]
        raise RuntimeError(
            f"the streamed batch holds no further view for {type(pipeline).__name__}; the method's "
            "stream_views() must list every pipeline call of its training step, in order"
        )
