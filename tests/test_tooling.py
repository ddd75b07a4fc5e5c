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
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


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


def _public_api() -> dict[str, object]:
    import deepclust
    from deepclust.methods import create_method
    from deepclust.pretrained import create_encoder, embed

    api: dict[str, object] = {n: getattr(deepclust, n) for n in deepclust.__all__ if n != "__version__"}
    api.update(create_method=create_method, embed=embed, create_encoder=create_encoder)
    for name in ("fit", "predict", "transform", "save", "load"):
        api[f"DeepClusterer.{name}"] = getattr(deepclust.DeepClusterer, name)
    return api


def test_public_api_docstrings_say_arguments_and_returns() -> None:
    """Each export of deepclust (and create_method, embed, create_encoder, the estimator's
    methods) documents every argument under a NumPy-style ``Parameters`` (``Attributes`` for a
    dataclass) heading and, when it returns something, has a ``Returns`` section."""
    import inspect
    import re

    problems = []
    for name, obj in _public_api().items():
        doc = inspect.getdoc(obj) or ""
        sig = inspect.signature(obj)
        args = [p for p in sig.parameters if p not in ("self", "cls")]
        heading = re.search(r"^(Parameters|Attributes)\n-+\n", doc, re.M)
        if args and heading is None:
            problems.append(f"{name}: no Parameters section")
            continue
        for arg in args:
            if not re.search(rf"^(\w+, )*{arg}(, \w+)* :", doc[heading.end() :] if heading else "", re.M):
                problems.append(f"{name}: argument {arg!r} not documented")
        returns = sig.return_annotation
        if not inspect.isclass(obj) and returns not in (None, "None") and not re.search(r"^Returns\n-+\n", doc, re.M):
            problems.append(f"{name}: no Returns section")
    assert not problems, "\n".join(problems)
