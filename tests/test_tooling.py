"""The linters the README's test command runs: ruff (lint, import order, format) and mypy.

Their configuration is in ``pyproject.toml`` (``[tool.ruff]``, ``[tool.mypy]``); each test runs
the tool as a developer would, from the repository root, and fails with the tool's own report.
A test skips only when its tool is not installed (``pip install -e ".[test]"`` installs both).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
LINTED = ["src", "benchmarks", "tests"]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install -e '.[test]' installs it)")
    return subprocess.run(
        [sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(map(str, result.args[2:]))} failed:\n{result.stdout}{result.stderr}"


def test_ruff_lint_passes() -> None:
    """pycodestyle, pyflakes, import order, bugbear, pyupgrade and the rest of [tool.ruff.lint]."""
    _check(_run("ruff", "check", "--no-fix", *LINTED))


def test_ruff_format_is_applied() -> None:
    """Every file is as ``ruff format`` writes it."""
    _check(_run("ruff", "format", "--check", *LINTED))


def test_mypy_passes_on_the_package() -> None:
    """mypy over src/deepclust with [tool.mypy]'s settings (check_untyped_defs, unused ignores)."""
    _check(_run("mypy"))


def test_every_name_in_all_exists() -> None:
    """``from deepclust.X import *`` works: every name a module lists in ``__all__`` is defined
    there (ruff cannot see through ``*other.__all__``; deepclust.augment once listed two ops it
    did not import)."""
    import importlib
    import pkgutil

    import deepclust
    import deepclust.augment
    import deepclust.augment.ops

    missing = {}
    for info in pkgutil.walk_packages(deepclust.__path__, "deepclust."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        absent = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
        if absent:
            missing[info.name] = absent
    assert not missing, f"names in __all__ that the module does not define: {missing}"
    assert set(deepclust.augment.ops.__all__) <= set(deepclust.augment.__all__)
