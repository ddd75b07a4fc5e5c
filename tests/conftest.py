"""Shared fixtures, and the --all option that runs every tier (tests/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# train.amp=auto picks bf16 on CPUs with bf16 units (engine/amp.py). Tests compare against float32
# references and exact reruns, so the suite runs as on a CPU without them, the same on every
# machine (subprocesses inherit it); tests of the rule set or clear it themselves.
os.environ.setdefault("DEEPCLUST_CPU_BF16", "0")  # DEEPCLUST_CPU_BF16=auto: the processor decides


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all",
        action="store_true",
        help="run every tier: drop the -m of pyproject.toml's addopts (and any other -m), so the "
        "slow, multiprocess and fault tests run too (tests/README.md)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # The default -m in addopts deselects the long tiers; --all empties it, which pytest reads
    # as "no mark filter" (the same as -m "").
    if config.getoption("--all"):
        config.option.markexpr = ""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared benchmark data folder ($DEEPCLUST_TEST_DATA, else ../shared/data), or skip."""
    env = os.environ.get("DEEPCLUST_TEST_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    if not path.is_dir():
        pytest.skip(
            f"shared data folder {path} not found: real-data tests run in CI where ../shared/data exists "
            "(or set DEEPCLUST_TEST_DATA)"
        )
    return path.resolve()


@pytest.fixture
def interrupt_in_epoch(monkeypatch: pytest.MonkeyPatch):
    """``interrupt_in_epoch(e, error=KeyboardInterrupt)``: the trainer raises ``error`` (Ctrl-C
    by default; a kill, a failure) as epoch ``e`` (0-based) starts, until the returned
    ``undo()`` (the test's ``monkeypatch.undo()``) is called."""
    from deepclust.engine.trainer import Trainer

    original = Trainer._train_epoch

    def arm(epoch: int, error: type[BaseException] = KeyboardInterrupt):
        def interrupted(self, images, e, iters):
            if e == epoch:
                raise error()
            return original(self, images, e, iters)

        monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
        return monkeypatch.undo

    return arm
