"""Self-labelling: the confidence-based, class-balanced loss against its formula, and a tiny
second stage on top of a SeCu run and of a k-means (IDFD) run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from deepclust.config import resolve_config
from deepclust.engine import io, train
from deepclust.selflabel import confidence_cross_entropy, selflabel


def test_confidence_cross_entropy_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    weak = torch.randn(12, 4, generator=g) * 6
    strong = torch.randn(12, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    thr = 0.9
    loss, n_conf = confidence_cross_entropy(weak, strong, thr)
    p = F.softmax(weak, dim=1)
    conf = [(i, int(p[i].argmax())) for i in range(12) if float(p[i].max()) > thr]
    assert int(n_conf) == len(conf) and 0 < len(conf) < 12
    count = {c: sum(1 for _, y in conf if y == c) for _, c in conf}
    num = den = 0.0
    for i, y in conf:
        w = len(conf) / count[y]
        z = strong[i]
        num = num + w * -(z[y] - torch.logsumexp(z, 0))
        den += w
    ref = num / den
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    (g1,) = torch.autograd.grad(loss, strong)
    (g2,) = torch.autograd.grad(ref, strong)
    torch.testing.assert_close(g1.double(), g2, rtol=1e-5, atol=1e-7)
    # Nothing confident: zero loss, still differentiable.
    zero, n0 = confidence_cross_entropy(torch.zeros(3, 4), strong[:3], thr)
    assert zero.item() == 0.0 and int(n0) == 0 and zero.requires_grad


def _tiny(method: str, out: Path, **args):
    return resolve_config(
        {
            "method": method,
            "n_clusters": 10,
            "data": {"name": "digits", "image_size": 8},
            "model": {"backbone": "small_cnn", "feature_dim": 16},
            "train": {"epochs": 2, "batch_size": 256, "out": str(out), "device": "cpu", "progress": False},
            "augment": {"crop_scale": [0.5, 1.0], "flip_p": 0.0},
            "eval": {"n_init": 1},
            "method_args": args,
        }
    )


@pytest.mark.parametrize("method,args", [("secu", {"n_heads": 1}), ("idfd", {})])
def test_selflabel_stage_writes_a_record(tmp_path: Path, method: str, args: dict) -> None:
    run = tmp_path / "run"
    train(_tiny(method, run, **args))
    record = selflabel(run, epochs=1, threshold=0.5, batch_size=512, device="cpu", progress=False)
    assert record["stage"] == "selflabel" and record["prediction"]["type"] == "selflabel_head_argmax"
    assert 0.0 <= record["acc"] <= 1.0 and math.isfinite(record["nmi"])
    saved = json.loads((run / "selflabel" / io.RESULTS).read_text())
    assert saved["acc"] == record["acc"]
    assert io.load_checkpoint(run / "selflabel")["stage"] == "selflabel"
