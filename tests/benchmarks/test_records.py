"""benchmarks/results/ holds one folder per benchmark, each with a README naming its current
files, and every benchmark script writes into its own folder by default."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
# script -> its folder under benchmarks/results (an independent list: a script that starts writing
# elsewhere, or a folder renamed without its script, fails here)
SCRIPTS = {
    "quality_matrix.py": "quality_matrix",
    "pretrained.py": "pretrained",
    "quality.py": "quality",
    "throughput.py": "throughput",
    "kmeans_speed.py": "kmeans",
    "time_to_accuracy.py": "tta",
    "stream.py": "stream",
    "stream_cluster.py": "stream_cluster",
    "ddp_quality.py": "ddp",
    "faults.py": "faults",
    "gpu_suite.py": "gpu_suite",
    "cpu_precision.py": "cpu_precision",
}


def _script_results(name: str) -> Path:
    spec = importlib.util.spec_from_file_location(f"_bench_{name[:-3]}", ROOT / "benchmarks" / name)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return Path(module.RESULTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_writes_into_its_records_folder(script: str) -> None:
    assert _script_results(script) == RESULTS / SCRIPTS[script]
    assert (RESULTS / SCRIPTS[script] / "README.md").is_file()


def test_every_records_folder_has_a_readme_naming_files_that_exist() -> None:
    folders = sorted(p for p in RESULTS.iterdir() if p.is_dir())
    assert {p.name for p in folders} == set(SCRIPTS.values())
    assert not [p.name for p in RESULTS.iterdir() if p.is_file() and p.name != "README.md"], "loose records"
    for folder in folders:
        text = (folder / "README.md").read_text()
        named = set(re.findall(r"`([\w.+-]+\.(?:json|md|png))`", text))
        for name in named:
            if "<" not in name and not name.startswith("quality_matrix_NAME"):
                assert (folder / name).is_file(), f"{folder.name}/README.md names {name}, which is not there"
        records = {p.name for p in folder.iterdir() if p.suffix in (".json", ".png")}
        described = {n for n in records if n in text or n.rsplit(".", 1)[0] in text}
        assert records == described, f"{folder.name}: records its README does not describe: {records - described}"
