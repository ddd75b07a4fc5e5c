"""Tests of the fast-path switches (engine/fastpath.py) and the streaming loader (engine/loader.py)."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from deepclust.config import resolve_config
from deepclust.engine import fastpath
from deepclust.engine.fastpath import (
    COMPILE_MIN_STEPS,
    apply_fast_paths,
    fused_supported,
    make_optimizer,
    resolve_channels_last,
    resolve_compile,
    resolve_data_on_device,
    resolve_fused,
    resolve_switch,
)
from deepclust.engine.loader import BatchStream
from deepclust.errors import ConfigError
from deepclust.models import create_backbone

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only its type is used unless a test needs a GPU
HAS_CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------- resolution rules


@pytest.mark.parametrize(
    "value,expected",
    [("auto", None), ("AUTO", None), (True, True), (False, False), ("true", True), ("off", False), ("0", False)],
)
def test_resolve_switch(value, expected):
    assert resolve_switch(value, "train.compile") is expected


def test_resolve_switch_rejects_other_values():
    with pytest.raises(ConfigError, match="train.compile must be auto, true or false"):
        resolve_switch("maybe", "train.compile")


def test_channels_last_rule():
    conv = create_backbone("small_cnn", 1, width=4)
    mlp = create_backbone("mlp", 1, in_dim=6)
    assert resolve_channels_last("auto", CPU, conv) is True
    assert resolve_channels_last("auto", CUDA, conv) is True
    assert resolve_channels_last("auto", torch.device("mps"), conv) is False
    assert resolve_channels_last(True, CPU, conv) is True
    assert resolve_channels_last(False, CUDA, conv) is False
    # nothing 4-D to re-order in an MLP, whatever the switch says
    assert resolve_channels_last(True, CUDA, mlp) is False


def test_compile_rule():
    has_triton = importlib.util.find_spec("triton") is not None
    assert resolve_compile("auto", CPU, 10**9) is False
    assert resolve_compile("auto", CUDA, COMPILE_MIN_STEPS - 1) is False  # short runs: not worth a compile
    assert resolve_compile("auto", CUDA, COMPILE_MIN_STEPS) is has_triton
    assert resolve_compile(True, CPU, 1) is True
    assert resolve_compile("false", CUDA, 10**9) is False


def test_data_on_device_rule():
    assert resolve_data_on_device("auto", CPU, 10**15) is True  # host memory is where it already is
    assert resolve_data_on_device(False, CPU, 1) is False
    assert resolve_data_on_device(True, CPU, 10**15) is True


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_data_on_device_rule_cuda():
    free, _ = torch.cuda.mem_get_info()
    assert resolve_data_on_device("auto", CUDA, 1024) is True
    assert resolve_data_on_device("auto", CUDA, 2 * free) is False


def test_fused_rule_follows_torch(monkeypatch):
    assert resolve_fused("auto", "sgd", CPU) is fused_supported("sgd", CPU)
    assert resolve_fused(False, "adam", CPU) is False
    monkeypatch.setattr(fastpath, "fused_supported", lambda name, device: False)
    assert resolve_fused("auto", "sgd", CPU) is False
    with pytest.raises(ConfigError, match="optim.fused=true"):
        resolve_fused(True, "sgd", CPU)


def test_config_fields_default_to_auto_and_coerce():
    cfg = resolve_config({"method": "idfd"})
    assert (cfg.train.channels_last, cfg.train.compile, cfg.train.data_on_device, cfg.optim.fused) == ("auto",) * 4
    cfg = resolve_config(
        {"method": "idfd", "train": {"compile": False, "channels_last": True}, "optim": {"fused": "auto"}}
    )
    assert cfg.train.compile is False and cfg.train.channels_last is True and cfg.optim.fused == "auto"


# ----------------------------------------------------------------------------- fused optimisers


def _sgd_reference(params, grads_per_step, lr, momentum, wd, nesterov):
    """Direct transcription of torch's SGD: g += wd p; b = m b + g (b = g first); step along
    g + m b (nesterov) or b."""
    ps = [p.detach().clone().double() for p in params]
    bufs = [None] * len(ps)
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(ps, grads, strict=True)):
            g = g.double() + wd * p
            bufs[i] = g.clone() if bufs[i] is None else momentum * bufs[i] + g
            d = g + momentum * bufs[i] if nesterov else bufs[i]
            p -= lr * d
    return ps


def _run(opt_factory, params0, grads_per_step):
    params = [nn.Parameter(p.clone()) for p in params0]
    opt = opt_factory(params)
    for grads in grads_per_step:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_update_equals_unfused(name):
    if not fused_supported(name, CPU):
        pytest.skip(f"this torch has no fused {name} on the CPU")
    g = torch.Generator().manual_seed(1)
    params0 = [torch.randn(7, 5, generator=g), torch.randn(11, generator=g), torch.randn(3, 2, 2, generator=g)]
    steps = [[torch.randn(p.shape, generator=g) for p in params0] for _ in range(4)]
    kw = {"lr": 0.05, "weight_decay": 1e-3}
    if name == "sgd":
        kw.update(momentum=0.9, nesterov=True)
    fused = _run(lambda ps: make_optimizer(name, [{"params": ps}], CPU, True, **kw), params0, steps)
    plain = _run(lambda ps: make_optimizer(name, [{"params": ps}], CPU, False, **kw), params0, steps)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if name == "sgd":
        ref = _sgd_reference(params0, steps, 0.05, 0.9, 1e-3, True)
        for a, r in zip(fused, ref, strict=True):
            torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("fused", [True, False])
def test_a_step_the_grad_scaler_skips_changes_nothing(name, fused):
    """fp16 training: GradScaler skips a step whose gradients overflowed (the first steps at
    scale 2^16 usually do). Afterwards the finite steps must give what they give without the
    skipped one; torch's fused SGD alone read uninitialised momentum buffers there (NaN)."""
    if fused and not fused_supported(name, CPU):
        pytest.skip(f"this torch has no fused {name} on the CPU")
    g = torch.Generator().manual_seed(2)
    params0 = [torch.randn(10, 32, generator=g), torch.randn(33, generator=g)]
    steps = [[torch.randn(p.shape, generator=g) for p in params0] for _ in range(3)]
    kw = {"lr": 0.05, "weight_decay": 1e-3, **({"momentum": 0.9} if name == "sgd" else {})}
    params = [nn.Parameter(p.clone()) for p in params0]
    opt = make_optimizer(name, [{"params": params}], CPU, fused, **kw)
    scaler = torch.amp.GradScaler("cpu")
    for grads in [None, *steps]:
        opt.zero_grad(set_to_none=True)
        if grads is None:  # an overflow: inf in every gradient
            scaler.scale(sum((p * float("inf")).sum() for p in params)).backward()
        else:  # d/dp (scale * sum(p * g)) = scale * g: after unscaling, exactly g
            scaler.scale(sum((p * gr).sum() for p, gr in zip(params, grads, strict=True))).backward()
        scaler.step(opt)
        scaler.update()
    if name == "sgd":
        want = _sgd_reference(params0, steps, 0.05, 0.9, 1e-3, False)
    else:
        want = [
            w.double()
            for w in _run(lambda ps: make_optimizer(name, [{"params": ps}], CPU, False, **kw), params0, steps)
        ]
    for got, w in zip(params, want, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.detach().double(), w, rtol=1e-5, atol=1e-6)


def test_make_optimizer_flags():
    p = [nn.Parameter(torch.zeros(3))]
    opt = make_optimizer("sgd", [{"params": p}], CPU, False, lr=0.1)
    assert not opt.defaults.get("fused")
    if fused_supported("adamw", CPU):
        assert make_optimizer("adamw", [{"params": p}], CPU, "auto", lr=0.1).defaults["fused"] is True
    with pytest.raises(ConfigError, match="optim.name"):
        make_optimizer("lamb", [{"params": p}], CPU, "auto", lr=0.1)


# ----------------------------------------------------------------------------- channels-last and compile


def _cfg(**train):
    return resolve_config({"method": "idfd", "train": {"batch_size": 8, "epochs": 1, **train}})


class _Toy(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, 4)

    def forward(self, x):
        return self.head(self.backbone(x))


@pytest.mark.parametrize("arch,channels,size", [("resnet18", 3, 16), ("small_cnn", 1, 12)])
def test_channels_last_gives_the_same_outputs_and_gradients(arch, channels, size):
    torch.manual_seed(0)
    ref = _Toy(create_backbone(arch, channels, "cifar", width=8))
    fast = copy.deepcopy(ref)
    paths = apply_fast_paths(fast, _cfg(channels_last=True, compile=False), CPU, n_samples=64)
    assert paths.channels_last and not paths.compile
    conv = next(m for m in fast.backbone.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(6, channels, size, size)
    for mode in ("train", "eval"):
        ref.train(mode == "train")
        fast.train(mode == "train")
        out_ref, out_fast = ref(x), fast(x)
        torch.testing.assert_close(out_fast, out_ref, rtol=1e-4, atol=1e-5)
    ref.zero_grad()
    fast.zero_grad()
    ref.train()
    fast.train()
    ref(x).square().sum().backward()
    fast(x).square().sum().backward()
    # torch's multi-threaded CPU kernels for channels-last BatchNorm accumulate in a different
    # order (and less exactly) than the contiguous ones: gradients agree to ~0.3% in norm with 2
    # threads, 1e-6 with one. A layout bug would give O(1) differences.
    for (name, a), b in zip(ref.named_parameters(), fast.parameters(), strict=True):
        rel = float((b.grad - a.grad).norm() / a.grad.norm().clamp_min(1e-12))
        assert rel < 1e-2, f"{name}: relative gradient difference {rel:.2e}"
    assert list(fast.state_dict()) == list(ref.state_dict())


def test_compile_keeps_state_dict_keys():
    # compiled in place and lazily: building it costs nothing; checkpoints keep their keys
    ref = _Toy(create_backbone("small_cnn", 1, width=4))
    fast = copy.deepcopy(ref)
    paths = apply_fast_paths(fast, _cfg(compile=True, channels_last=False), CPU, n_samples=64)
    assert paths.compile
    assert list(fast.state_dict()) == list(ref.state_dict())
    fast.load_state_dict(ref.state_dict())


def test_apply_rejects_bad_switch():
    toy = _Toy(create_backbone("small_cnn", 1, width=4))
    with pytest.raises(ConfigError, match="train.channels_last"):
        apply_fast_paths(toy, _cfg(channels_last="sometimes"), CPU, n_samples=64)


def test_trainer_applies_fused_switch(tmp_path):
    from deepclust.engine.trainer import Trainer

    cfg = resolve_config(
        {
            "method": "idfd",
            "data": {"name": "digits"},
            "train": {"epochs": 1, "out": str(tmp_path / "a"), "progress": False},
            "optim": {"fused": False},
        }
    )
    t = Trainer(cfg)
    assert not t.optimizer.defaults.get("fused")
    assert t.fast.fused is False and t.fast.channels_last is True  # auto on the CPU for a conv backbone
    if fused_supported("sgd", CPU):
        cfg.optim.fused = "auto"
        cfg.train.out = str(tmp_path / "b")
        assert Trainer(cfg).optimizer.defaults["fused"] is True


# ----------------------------------------------------------------------------- streaming loader


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_yields_the_indexed_batches(workers):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (103, 3, 5, 4), generator=g, dtype=torch.uint8)
    stream = BatchStream(images, CPU, batch_size=16, num_workers=workers)
    for epoch in range(2):  # a new order each epoch, through the same (persistent) workers
        order = torch.randperm(103, generator=g)[: 90 + epoch]
        got = list(stream.batches(order))
        expected = [order[s : s + 16] for s in range(0, len(order), 16)]
        assert len(got) == len(expected)
        for (batch, idx), want in zip(got, expected, strict=True):
            assert batch.dtype == torch.uint8 and batch.device == CPU
            assert torch.equal(idx, want)
            assert torch.equal(batch, images[want])


def test_stream_rejects_float_images():
    with pytest.raises(ConfigError, match="uint8"):
        BatchStream(torch.zeros(4, 1, 2, 2), CPU, 2)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_stream_to_cuda_is_pinned_and_exact():
    images = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8)
    stream = BatchStream(images, "cuda", batch_size=8, num_workers=1)
    assert stream.pin_memory
    order = torch.randperm(50)
    for batch, idx in stream.batches(order):
        assert batch.is_cuda and idx.is_cuda
        assert torch.equal(batch.cpu(), images[idx.cpu()])


def test_streamed_data_is_never_resident() -> None:
    toy = _Toy(create_backbone("small_cnn", 1, "cifar", width=8))
    assert apply_fast_paths(toy, _cfg(), CPU, n_samples=64, data_bytes=1024).data_on_device  # CPU: always resident
    assert not apply_fast_paths(toy, _cfg(), CPU, n_samples=64, data_bytes=None).data_on_device  # streamed from disk
