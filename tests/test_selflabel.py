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
from deepclust.errors import CheckpointError, ConfigError, DeepClustError
from deepclust.selflabel import confidence_cross_entropy, default_epochs, max_attainable_confidence, selflabel


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


def _weight_decay_only(w0: torch.Tensor, steps: int, lr: float = 1e-4, wd: float = 1e-4) -> torch.Tensor:
    """Where Adam's weight decay alone takes W in ``steps`` steps (what a stage that selects
    nothing does: the loss is 0 and its gradient wd * W)."""
    w = torch.nn.Parameter(w0.detach().clone().float())
    opt = torch.optim.Adam([w], lr=lr, weight_decay=wd)
    for _ in range(steps):
        opt.zero_grad()
        (w.sum() * 0.0).backward()
        opt.step()
    return w.detach()


# SeCu with t_w = 1.0 is STL-10's setting: at that temperature no sample could pass the threshold
# (10 unit-norm centres cap the softmax at 0.45), so the stage must pick its own (0.1).
_RUNS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory):
    """Each tiny run trained once for the module (the stages write under their own --out)."""

    def get(method: str, **args) -> Path:
        key = f"{method}{sorted(args.items())}"
        if key not in _RUNS:
            run = tmp_path_factory.mktemp(method) / "run"
            train(_tiny(method, run, **args))
            _RUNS[key] = run
        return _RUNS[key]

    return get


# SeCu with t_w = 1.0 is STL-10's setting: at that temperature no sample could pass the threshold
# (10 unit-norm centres cap the softmax at 0.45), so the stage must pick its own (0.1). The tiny
# IDFD run's 16-d features are barely clustered after 2 epochs: it needs a lower temperature.
@pytest.mark.parametrize(
    "method,args,temperature,expected_t",
    [("secu", {"n_heads": 1, "temperature_w": 1.0}, None, 0.1), ("idfd", {}, 0.03, 0.03)],
)
@pytest.mark.slow
def test_selflabel_stage_writes_a_record(
    tmp_path: Path, tiny_runs, method: str, args: dict, temperature: float | None, expected_t: float
) -> None:
    run = tiny_runs(method, **args)
    src = io.load_checkpoint(run)
    w0 = src["model"]["centers.0"] if method == "secu" else torch.as_tensor(src["centers"])
    out = tmp_path / "selflabel"
    record = selflabel(
        run, epochs=1, threshold=0.5, batch_size=512, temperature=temperature, out=out, device="cpu", progress=False
    )
    assert record["stage"] == "selflabel" and record["prediction"]["type"] == "selflabel_head_argmax"
    assert record["selflabel"]["temperature"] == pytest.approx(expected_t)
    assert 0.0 <= record["acc"] <= 1.0 and math.isfinite(record["nmi"]) and "ami" in record
    saved = json.loads((out / io.RESULTS).read_text())
    assert saved["acc"] == record["acc"]
    ckpt = io.load_checkpoint(out)
    assert ckpt["stage"] == "selflabel"
    # Confident samples were used: counted per epoch, in full batches only (1,797 // 512 = 3).
    line = json.loads((out / io.METRICS).read_text().splitlines()[-1])
    assert line["train"]["confident"] > 0 and line["train"]["loss"] > 0
    assert line["train"]["confident_fraction"] == pytest.approx(line["train"]["confident"] / (3 * 512))
    assert record["selflabel"]["confident_before"] > 0
    # ... and the loss, not weight decay alone, moved the classifier.
    w1 = ckpt["model"]["weight"]
    decayed = _weight_decay_only(w0, steps=3)
    assert float((w1 - decayed).norm()) > 0.5 * float((w1 - w0).norm()) > 0


class _Killed(BaseException):
    """A kill: nothing is saved on the way out, the last periodic checkpoint is what remains."""


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "kill"])
def test_selflabel_stopped_mid_way_resumes_exactly(
    tmp_path: Path, tiny_runs, interrupt_in_epoch, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    """The engine runs the stage: a stage stopped in its third epoch (checkpoint of epoch 2)
    and resumed ends with the same weights, bit for bit, as one that ran through, and logs
    every epoch once."""
    run = tiny_runs("secu", n_heads=1, temperature_w=1.0)
    kw = dict(epochs=3, threshold=0.5, batch_size=512, device="cpu", progress=False)
    whole = selflabel(run, out=tmp_path / "whole", **kw)
    cut = tmp_path / "cut"
    if stop == "ctrl-c":
        interrupt_in_epoch(2)
        with pytest.raises(DeepClustError, match=f"--out {cut} --resume"):
            selflabel(run, out=cut, **kw)
    else:
        interrupt_in_epoch(2, _Killed)
        with pytest.raises(_Killed):
            selflabel(run, out=cut, **kw)
    monkeypatch.undo()
    stopped = io.load_checkpoint(cut)
    assert stopped["epoch"] == 2 and stopped["stage"] == "selflabel"
    with pytest.raises(CheckpointError, match="already holds a run"):  # no silent restart over it
        selflabel(run, out=cut, **kw)
    resumed = selflabel(run, out=cut, resume=True, **{**kw, "epochs": None})  # epochs: the stage's own
    a, b = io.load_checkpoint(tmp_path / "whole")["model"], io.load_checkpoint(cut)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["weight"], stopped["model"]["weight"])  # the third epoch did train
    assert resumed["acc"] == whole["acc"] and resumed["selflabel"] == whole["selflabel"]
    epochs = [json.loads(line)["epoch"] for line in (cut / io.METRICS).read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_a_selflabel_stage_is_resumed_only_as_one(tmp_path: Path, tiny_runs) -> None:
    """'deepclust resume' on a stage, or a stage resumed over a training run: one line that says
    what the directory holds."""
    from deepclust.cli import main

    run = tiny_runs("secu", n_heads=1, temperature_w=1.0)
    out = tmp_path / "stage"
    selflabel(run, out=out, epochs=1, threshold=0.5, batch_size=512, device="cpu", progress=False)
    assert main(["-q", "resume", str(out)]) == 2
    with pytest.raises(CheckpointError, match="not a selflabel stage"):
        selflabel(run, out=run, resume=True, epochs=3, threshold=0.5, batch_size=512, device="cpu", progress=False)


@pytest.mark.slow
def test_selflabel_refuses_a_stage_that_selects_nothing(tmp_path: Path, tiny_runs) -> None:
    run = tiny_runs("idfd")
    # unreachable: 10 unit-norm centres at t = 1 cap the softmax at 1 / (1 + 9 e^-2) = 0.45
    with pytest.raises(ConfigError, match="never exceeds 0.451"):
        selflabel(run, epochs=1, threshold=0.99, temperature=1.0, out=tmp_path / "a", device="cpu", progress=False)
    # reachable in principle (0.997) but no image gets there: one line, before any training
    with pytest.raises(ConfigError, match="train on nothing") as info:
        selflabel(run, epochs=1, threshold=0.99, temperature=0.25, out=tmp_path / "b", device="cpu", progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "b" / io.METRICS).exists()
    assert max_attainable_confidence(10, 1.0) == pytest.approx(1 / (1 + 9 * math.exp(-2)))


def test_selflabel_epochs_follow_scan_per_dataset() -> None:
    assert default_epochs("stl10") == 100
    assert default_epochs("cifar10") == 200 and default_epochs("cifar100-20") == 200
    from deepclust.cli import build_parser

    args = build_parser().parse_args(["selflabel", "RUN", "--temperature", "0.05"])
    assert args.epochs is None and args.temperature == 0.05


def test_confidence_softmax_runs_in_fp32_under_autocast() -> None:
    # bf16 logits that are confident only at full precision: 0.9901 vs the threshold 0.99
    g = torch.Generator().manual_seed(1)
    weak = torch.zeros(6, 2)
    weak[:, 0] = math.log(0.9901 / 0.0099)
    strong = torch.randn(6, 2, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = confidence_cross_entropy(weak, strong.bfloat16(), 0.99)
    assert int(n) == 6 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(
        F.cross_entropy(strong.bfloat16().float(), torch.zeros(6, dtype=torch.long)).item(), rel=1e-6
    )
