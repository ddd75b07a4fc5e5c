"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
