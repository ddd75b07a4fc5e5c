"""``train.amp`` per device and processor (engine/amp.py), with the processor's facts mocked so
every assertion holds the same on an AMD EPYC without bf16 units and on a Xeon with AMX-BF16.

The rule (issue #28): ``auto`` is bf16 on CUDA and on CPUs with AMX-BF16 (and oneDNN in torch;
AVX512-BF16 alone measured slower than float32), float32 on other CPUs and on MPS; ``off`` and
``bf16`` always win; a config's ``fp16`` runs as the CPU's fast precision on a CPU,
``train.amp=fp16`` typed on the command line still runs fp16 there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from deepclust.cli import main
from deepclust.config import load_yaml, packaged_config, resolve_config
from deepclust.engine import amp
from deepclust.engine.amp import cpu_bf16_units, resolve_amp, typed_fp16
from deepclust.engine.device import amp_dtype
from deepclust.errors import ConfigError

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
# torch.cpu.get_capabilities() as these processors report it (the keys the rule reads, and a few it must ignore)
XEON_AMX = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}
ZEN4 = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_bf16": False}
EPYC_NO_UNITS = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
OLD_X86 = {"architecture": "x86_64", "avx2": True}
ARM64 = {"architecture": "arm64", "neon": True, "bf16": True}


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch):
    """``processor(caps)``: the rule reads ``caps`` as the CPU's facts (no env override); the
    once-per-process log memory starts empty."""
    monkeypatch.delenv(amp.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(amp, "_said", set())

    def use(caps: dict) -> None:
        monkeypatch.setattr(amp, "cpu_capabilities", lambda: caps)

    return use


@pytest.mark.parametrize(
    "caps, expected",
    [
        (XEON_AMX, torch.bfloat16),
        (ZEN4, None),
        (EPYC_NO_UNITS, None),
        (OLD_X86, None),
        (ARM64, None),
        ({}, None),
    ],
    ids=["xeon-amx", "zen4-avx512bf16", "epyc-no-units", "avx2-only", "arm64", "unknown"],
)
def test_auto_on_the_cpu_follows_the_bf16_units(processor, caps: dict, expected: torch.dtype | None) -> None:
    processor(caps)
    assert amp_dtype("auto", CPU) is expected
    assert resolve_amp("auto", CPU).name == ("bf16" if expected else "off")


def test_units_without_onednn_stay_float32(processor, monkeypatch: pytest.MonkeyPatch) -> None:
    processor(XEON_AMX)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    fast, why = cpu_bf16_units()
    assert not fast and "oneDNN" in why


@pytest.mark.parametrize("caps", [XEON_AMX, EPYC_NO_UNITS], ids=["units", "no-units"])
def test_off_and_bf16_override_auto_on_every_processor(processor, caps: dict) -> None:
    processor(caps)
    assert amp_dtype("off", CPU) is None and amp_dtype(False, CPU) is None  # YAML 1.1 reads off as false
    assert amp_dtype("bf16", CPU) is torch.bfloat16


def test_other_devices_are_unchanged(processor) -> None:
    processor(EPYC_NO_UNITS)  # the CPU's facts play no part off the CPU
    assert amp_dtype("auto", CUDA) is torch.bfloat16 and amp_dtype("fp16", CUDA) is torch.float16
    assert amp_dtype("auto", MPS) is None and amp_dtype("fp16", MPS) is torch.float16


@pytest.mark.parametrize("caps, expected", [(XEON_AMX, "bf16"), (EPYC_NO_UNITS, "off")], ids=["units", "no-units"])
def test_a_configs_fp16_runs_as_the_cpus_fast_precision(processor, caplog, caps: dict, expected: str) -> None:
    processor(caps)
    with caplog.at_level(logging.INFO, logger="deepclust.engine.amp"):
        got = [resolve_amp("fp16", CPU) for _ in range(3)]
    assert {p.name for p in got} == {expected}
    lines = [r.getMessage() for r in caplog.records if "fp16" in r.getMessage()]
    assert len(lines) == 1 and "emulated" in lines[0] and "command line" in lines[0]  # once, with why


def test_fp16_typed_on_the_command_line_runs_with_a_warning(processor, caplog) -> None:
    processor(XEON_AMX)
    with caplog.at_level(logging.WARNING, logger="deepclust.engine.amp"):
        assert amp_dtype("fp16", CPU, keep_fp16=True) is torch.float16
    assert any(r.levelno == logging.WARNING and "emulated" in r.getMessage() for r in caplog.records)


def test_bf16_on_a_cpu_without_units_warns_once(processor, caplog) -> None:
    processor(EPYC_NO_UNITS)
    with caplog.at_level(logging.WARNING, logger="deepclust.engine.amp"):
        resolve_amp("bf16", CPU)
        resolve_amp("bf16", CPU)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_the_auto_decision_is_logged_once_with_its_reason(processor, caplog) -> None:
    processor(XEON_AMX)
    with caplog.at_level(logging.INFO, logger="deepclust.engine.amp"):
        for _ in range(4):
            resolve_amp("auto", CPU)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "bf16" in msgs[0] and "amx_bf16" in msgs[0]


@pytest.mark.parametrize("value, fast", [("1", True), ("0", False), ("auto", True)])
def test_environment_override(processor, monkeypatch: pytest.MonkeyPatch, value: str, fast: bool) -> None:
    processor(XEON_AMX)  # "auto": the facts decide
    monkeypatch.setenv(amp.CPU_BF16_ENV, value)
    assert cpu_bf16_units()[0] is fast
    monkeypatch.setenv(amp.CPU_BF16_ENV, "sometimes")
    with pytest.raises(ConfigError, match=amp.CPU_BF16_ENV):
        cpu_bf16_units()


@pytest.mark.parametrize(
    "items, expected",
    [
        (["train.amp=fp16"], True),
        (["secu/cifar10", "train.epochs=1", "train.amp=fp16"], True),
        (["train.amp='fp16'"], True),
        (["train.amp=fp16", "train.amp=off"], False),
        (["train.amp=bf16"], False),
        (["secu/cifar10"], False),
        ([], False),
    ],
)
def test_typed_fp16(items: list[str], expected: bool) -> None:
    assert typed_fp16(items) is expected


def test_the_secu_paper_config_on_a_cpu_is_never_fp16(processor) -> None:
    """`deepclust train secu/cifar10 --device cpu`: the config says fp16 (the official GPU code)."""
    cfg = resolve_config(load_yaml(packaged_config("secu/cifar10")))
    assert cfg.train.amp == "fp16"
    for caps, expected in ((XEON_AMX, torch.bfloat16), (EPYC_NO_UNITS, None)):
        processor(caps)
        assert amp_dtype(cfg.train.amp, CPU) is expected


# ------------------------------------------------------------------ through the CLI and the trainer

TINY = [
    "--device",
    "cpu",
    "--data",
    "digits",
    "--epochs",
    "1",
    "data.image_size=8",
    "model.backbone=small_cnn",
    "model.width=8",
    "model.feature_dim=16",
    "train.batch_size=512",
    "eval.n_init=1",
    "train.progress=false",
]


def _saved_amp(run: Path) -> str:
    return str(yaml.safe_load((run / "config.yaml").read_text())["train"]["amp"])


@pytest.mark.parametrize("units, expected", [("1", "bf16"), ("0", "off")])
def test_cli_secu_cifar10_config_on_the_cpu_runs_the_fast_precision(
    monkeypatch, caplog, tmp_path: Path, units: str, expected: str
) -> None:
    """The SeCu CIFAR-10 paper config (amp: fp16) trained on the CPU, shrunk to digits: bf16 with
    bf16 units, float32 without, never emulated fp16; the choice is in config.yaml and the log."""
    monkeypatch.setenv(amp.CPU_BF16_ENV, units)
    monkeypatch.setattr(amp, "_said", set())
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="deepclust.engine.amp"):
        code = main(
            [
                "train",
                "secu/cifar10",
                *TINY,
                "--out",
                str(out),
                "data.mean=null",
                "data.std=null",
                "method_args.n_heads=2",
            ]
        )
    assert code == 0
    assert _saved_amp(out) == expected
    assert any("config says train.amp=fp16" in r.getMessage() for r in caplog.records)


def test_cli_typed_fp16_keeps_fp16_on_the_cpu(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(amp.CPU_BF16_ENV, "1")
    out = tmp_path / "run"
    assert main(["train", "--method", "idfd", *TINY, "--out", str(out), "train.amp=fp16"]) == 0
    assert _saved_amp(out) == "fp16"


def _losses(run: Path) -> list[dict]:
    return [
        json.loads(x)["train"] for x in (run / "metrics.jsonl").read_text().splitlines() if "train" in json.loads(x)
    ]


def test_auto_on_a_cpu_without_units_changes_nothing(processor, tmp_path: Path) -> None:
    """On a (mocked) CPU without bf16 units, ``auto`` trains exactly as float32 (``off``) does:
    the same losses, bit for bit, and the same result record."""
    processor(EPYC_NO_UNITS)
    runs = {}
    for setting in ("auto", "off"):
        runs[setting] = tmp_path / setting
        assert main(["train", "--method", "idfd", *TINY, "--out", str(runs[setting]), f"train.amp={setting}"]) == 0
        assert _saved_amp(runs[setting]) == "off"
    assert _losses(runs["auto"]) == _losses(runs["off"])
    a, b = (json.loads((runs[s] / "results.json").read_text()) for s in ("auto", "off"))
    assert (a["acc"], a["nmi"]) == (b["acc"], b["nmi"])


def test_auto_with_units_trains_and_evaluates_in_bf16(processor, tmp_path: Path) -> None:
    """With (mocked) bf16 units, ``auto`` trains in bf16 (saved as such); evaluation and
    predict read the saved bf16."""
    from deepclust.engine.device import amp_dtype as dtype_of
    from deepclust.saved_run import load_run

    processor(XEON_AMX)
    out = tmp_path / "run"
    assert main(["train", "--method", "idfd", *TINY, "--out", str(out)]) == 0
    assert _saved_amp(out) == "bf16"
    cfg = load_run(out, "cpu")[0]
    assert dtype_of(cfg.train.amp, CPU) is torch.bfloat16
    processor(EPYC_NO_UNITS)  # the run's saved bf16 is explicit: it holds on another processor too
    assert dtype_of(cfg.train.amp, CPU) is torch.bfloat16


def test_bench_amp_list() -> None:
    from deepclust.bench.cli import amp_variants

    assert amp_variants("off, bf16") == {"fp32": ["train.amp=off"], "bf16": ["train.amp=bf16"]}
    for bad in ("", "fp8", "off,,half"):
        with pytest.raises(ConfigError, match="--amp"):
            amp_variants(bad)


@pytest.mark.parametrize("caps", [XEON_AMX, EPYC_NO_UNITS], ids=["units", "no-units"])
def test_a_method_that_keeps_float32_is_not_given_bf16_by_auto(processor, caps: dict) -> None:
    """A method declaring ``cpu_auto_bf16 = False`` trains in float32 under ``auto`` and a config's
    fp16 on every CPU; typed ``bf16`` still runs bf16, and CUDA's auto is untouched."""
    processor(caps)
    assert resolve_amp("auto", CPU, method_bf16=False).name == "off"
    assert resolve_amp("fp16", CPU, method_bf16=False).name == "off"
    assert resolve_amp("bf16", CPU, method_bf16=False).name == "bf16"
    assert resolve_amp("auto", CUDA, method_bf16=False).name == "bf16"
    if caps is XEON_AMX:  # the reason says why the units were not used
        assert "keeps float32" in resolve_amp("auto", CPU, method_bf16=False).reason


def test_the_trainer_asks_the_methods_declaration(processor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's config.yaml says off for a method that declares ``cpu_auto_bf16 = False`` on a CPU
    with units, bf16 for one that does not."""
    from deepclust.methods import get_method_class

    processor(XEON_AMX)
    monkeypatch.setattr(get_method_class("idfd"), "cpu_auto_bf16", False)
    out = tmp_path / "run"
    assert main(["train", "--method", "idfd", *TINY, "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["amp"] in ("off", False)


def test_the_methods_that_keep_float32_are_the_ones_the_bf16_matrix_says() -> None:
    """docs/speed.md's matrix-bf16 table: AnchorCL's and CDC's mnist-5k cells left the 2-point band
    under bf16, IDFD's and SeCu's stayed within it on every dataset."""
    from deepclust.methods import get_method_class, list_methods

    keep = {m for m in list_methods() if not get_method_class(m).cpu_auto_bf16}
    assert keep == {"anchorcl", "cdc"}


def test_resume_in_fp16_a_run_saved_without_it(monkeypatch, tmp_path: Path, caplog) -> None:
    """A run trained in float32 and resumed with ``train.amp=fp16`` typed: the gradient scaler,
    saved disabled (an empty state), starts fresh instead of failing to load."""
    monkeypatch.setenv(amp.CPU_BF16_ENV, "0")
    out = tmp_path / "run"
    assert main(["train", "--method", "idfd", *TINY, "--out", str(out), "train.amp=off"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["scaler"] == {}
    with caplog.at_level(logging.INFO, logger="deepclust"):
        assert main(["resume", str(out), "train.epochs=2", "train.amp=fp16"]) == 0
    assert any("starts at its initial scale" in r.getMessage() for r in caplog.records)
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["scaler"]["scale"] > 0
    assert _saved_amp(out) == "fp16"
