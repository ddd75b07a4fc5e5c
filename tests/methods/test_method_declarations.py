"""What a method declares about itself (``ClusteringMethod.has_memory_bank``, ``glyph_preset``,
``glyph_batch``) is what presets.py and config_rules.py use: a method added at run time with its
own declarations gets them without an edit to either module, and every registered method's
declarations agree with what it does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deepclust import methods
from deepclust.config import resolve_config
from deepclust.data.peek import DataShape
from deepclust.errors import ConfigError
from deepclust.methods import create_method, get_method_class, list_methods
from deepclust.presets import kind_defaults

from .test_method_contract import FEATURE_INFO, INFO  # the contract tests' tiny image and feature data


@pytest.mark.parametrize("name", list_methods())
def test_has_memory_bank_says_whether_the_method_keeps_one(name: str) -> None:
    cls = get_method_class(name)
    info = INFO if cls.accepts_images else FEATURE_INFO
    method = create_method(resolve_config({"method": name, "n_clusters": 3}), info)
    bank = method.memory_bank()
    assert (bank is not None) == cls.has_memory_bank
    if bank is not None:
        assert tuple(bank.shape[:1]) == (INFO.n_samples,)


@pytest.mark.parametrize("name", list_methods())
def test_every_declared_glyph_value_reaches_the_resolved_config(name: str) -> None:
    cls = get_method_class(name)
    cfg = resolve_config({"method": name, "defaults": "glyph", "n_clusters": 3}, shape=DataShape(1, 8, 3000)).to_dict()
    for section, values in cls.glyph_preset.items():
        for key, value in values.items():
            got = cfg[section][key]
            assert (list(got) if isinstance(got, (list, tuple)) else got) == value, f"{name}: {section}.{key}"
    batch = cls.glyph_batch(3000)
    if batch is not None and "batch_size" not in cls.glyph_preset.get("train", {}):
        assert cfg["train"]["batch_size"] == batch[0] >= 2
        assert cfg["optim"]["lr"] == pytest.approx(batch[1], abs=1e-6) and batch[1] > 0


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> type:
    """A method registered at run time on top of CDC, declaring its own bank and glyph values."""
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))

    class Toy(get_method_class("cdc")):  # type: ignore[misc, valid-type]
        name = "toy"
        has_memory_bank = True
        glyph_preset = {"optim": {"name": "sgd", "momentum": 0.5}, "method_args": {"tau_p": 0.25}}

        @classmethod
        def glyph_batch(cls, n_samples: int) -> tuple[int, float]:
            return 24, 0.0123456789

    return methods.register_method(Toy)


def test_a_new_method_brings_its_glyph_preset_without_editing_presets(toy: type) -> None:
    preset = kind_defaults("toy", "glyph", DataShape(1, 16, 5000))
    assert preset["train"] == {"batch_size": 24}
    assert preset["optim"] == {"schedule": "cosine", "lr": 0.012346, "name": "sgd", "momentum": 0.5}
    assert preset["method_args"] == {"tau_p": 0.25}
    assert preset["model"]["backbone"] == "small_cnn"  # the shared part stays
    assert "train" not in kind_defaults("toy", "glyph", DataShape(1, 16, 0))  # no size known: no batch rule
    assert kind_defaults("toy", "natural", DataShape(3, 32, 5000)) == {"optim": {"schedule": "cosine"}}


def test_a_new_method_with_a_memory_bank_may_cluster_it(toy: type) -> None:
    cfg = resolve_config({"method": "toy", "n_clusters": 3, "eval": {"features": "memory"}})
    assert cfg.eval.features == "memory"
    with pytest.raises(ConfigError, match=r"memory bank \(IDFD, Toy\)"):
        resolve_config({"method": "cdc", "n_clusters": 3, "eval": {"features": "memory"}})


def test_a_module_in_the_methods_package_is_found_by_its_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a method is its own file: deepclust/methods/<name>.py is registered under <name>
    with no line in the registry (methods/__init__.py's discover_methods)."""
    (tmp_path / "toyfile.py").write_text(
        "from deepclust.methods.cdc import CDC\n\n\nclass ToyFile(CDC):\n    name = 'toyfile'\n"
    )
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "deepclust.methods.toyfile", raising=False)
    assert "toyfile" not in methods.list_methods()
    methods.discover_methods()
    assert "toyfile" in methods.list_methods()
    cls = get_method_class("toyfile")
    assert cls.__name__ == "ToyFile" and issubclass(cls, get_method_class("cdc"))
    sys.modules.pop("deepclust.methods.toyfile", None)
