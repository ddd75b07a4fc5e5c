"""The copy-paste examples of the README and the docs run as written (epochs made small, paths in a
temporary folder). A block is marked ``<!-- readme-test: NAME -->`` in README.md or a page of docs/."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepclust.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def block(name: str) -> str:
    """The fenced code block that follows ``<!-- readme-test: name -->`` (exactly one, README or docs)."""
    found = [
        m.group(1)
        for page in PAGES
        for m in re.finditer(rf"<!-- readme-test: {name} -->\s*```\w*\n(.*?)```", page.read_text(), re.S)
    ]
    assert len(found) == 1, f"{len(found)} blocks marked readme-test: {name} in README.md and docs/ (want one)"
    return found[0]


def test_every_marked_block_has_a_test() -> None:
    marked = {n for page in PAGES for n in re.findall(r"^<!-- readme-test: ([\w-]+) -->", page.read_text(), re.M)}
    assert marked == {"folder", "python", "research", "method"}


def run_commands(text: str, short: dict[str, str]) -> None:
    for line in text.strip().splitlines():
        for old, new in short.items():
            line = line.replace(old, new)
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "deepclust", line
        assert main(argv[1:] + []) == 0, line


def make_photos(folder: Path, n_per_kind: int = 12) -> None:
    """A folder of small RGB images of three kinds (mixed sizes), as a user's photos would be."""
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]
    folder.mkdir()
    for k, c in enumerate(colours):
        for i in range(n_per_kind):
            size = int(rng.integers(14, 24))
            img = np.clip(np.array(c) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"img_{k}_{i}.png")


@pytest.mark.slow
def test_folder_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos")
    run_commands(
        block("folder"), {"--epochs 30": "--epochs 1", "--k 3,5,8": "--k 2,3", "--n-clusters 5": "--n-clusters 3"}
    )
    rows = (tmp_path / "clusters.csv").read_text().strip().splitlines()
    assert rows[0] == "path,cluster,confidence" and len(rows) == 1 + 36
    report = tmp_path / "runs/photos/report/report.html"
    assert report.is_file() and report.stat().st_size > 0
    assert (tmp_path / "runs/sweep/sweep.csv").is_file()


@pytest.mark.slow
def test_python_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = block("python").replace("epochs=10", "epochs=1")
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "idfd_digits.pt").is_file()


@pytest.mark.slow
def test_research_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_commands(
        block("research"), {"train.epochs=20": "train.epochs=1 train.device=cpu", "train.epochs=40": "train.epochs=2"}
    )
    import json

    assert json.loads((tmp_path / "runs/idfd_digits/results.json").read_text())["epoch"] == 2


@pytest.mark.slow
def test_adding_a_method_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepclust import methods

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))  # the example registers "simclr"
    namespace: dict = {}
    exec(compile(block("method").replace("epochs=10", "epochs=1"), "docs/adding-a-method.md", "exec"), namespace)
    assert "simclr" in methods.list_methods()
    assert namespace["labels"].shape == (1797,) and len(set(namespace["labels"].tolist())) > 1


def test_ci_runs_the_readme_test_command_with_every_tier() -> None:
    # .ci/run's last line is the README's test command, and that command runs every tier (--all)
    command = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert command in README.read_text().splitlines()  # a whole line of the README
    assert "pytest" in command and "--all" in command.split()
