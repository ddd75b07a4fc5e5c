"""``train.compile`` (``torch.compile`` of the backbone, inductor) does not change a step's result.

One small model only: inductor builds C++ for every graph on the CPU (tens of seconds here).
Tolerance: the compiled step's loss within rtol 1e-5 and the backbone gradients within rtol
1e-4 / atol 1e-5 of the eager step (inductor fuses and reorders float32 arithmetic, nothing else).
"""

from __future__ import annotations

import copy

import pytest
import torch

from deepclust.config import resolve_config
from deepclust.engine.fastpath import apply_fast_paths
from deepclust.methods import DataInfo, create_method


def _cc_available() -> bool:
    import shutil

    return any(shutil.which(c) for c in ("cc", "gcc", "clang", "g++"))


@pytest.mark.slow
@pytest.mark.skipif(not _cc_available(), reason="inductor on the CPU needs a C compiler")
def test_compiled_backbone_gives_the_eager_step() -> None:
    cfg = resolve_config(
        {
            "method": "idfd",
            "data": {"name": "digits", "image_size": 8},
            "model": {"backbone": "small_cnn", "feature_dim": 16, "width": 4},
            "train": {"device": "cpu", "batch_size": 32, "compile": True, "channels_last": False},
            "optim": {"fused": False},
        }
    )
    info = DataInfo(n_samples=64, n_channels=1, image_size=8, mean=[0.3], std=[0.3], n_clusters=4)
    torch.manual_seed(0)
    eager = create_method(cfg, info)
    compiled = copy.deepcopy(eager)
    paths = apply_fast_paths(compiled, cfg, torch.device("cpu"), n_samples=64)
    assert paths.compile and not paths.channels_last
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    idx = torch.arange(32)

    def step(m):
        m.train()
        torch.manual_seed(5)  # the same augmentations for both
        out = m.training_step(images[idx], idx, 0)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in m.backbone.parameters()]

    ref_loss, ref_grads = step(eager)
    loss, grads = step(compiled)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
