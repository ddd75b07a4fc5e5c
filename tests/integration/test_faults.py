"""A short version of benchmarks/faults.py (issue #17): a tiny run killed with SIGKILL three times
(a seeded random moment, inside a checkpoint write, during the final evaluation) and resumed each
time ends with the weights of an uninterrupted run, no checkpoint lost and a clean metrics.jsonl."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def faults():
    spec = importlib.util.spec_from_file_location("faults", ROOT / "benchmarks" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.fault
def test_three_kills_lose_nothing(faults, tmp_path: Path) -> None:
    fig = faults.fault_injection(tmp_path, kills=3, seed=0, epochs=3)
    assert fig["kills"] == 3 and fig["by_kind"] == {"random": 1, "checkpoint_write": 1, "final_eval": 1}, fig
    assert fig["kills_survived"] == 3 and fig["runs"] >= 1, fig
    assert fig["checkpoints_lost"] == 0 and fig["runs_with_different_weights"] == 0, fig
    assert fig["metrics_inconsistencies"] == 0, fig
