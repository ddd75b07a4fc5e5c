"""The method contract of :class:`deepclust.methods.ClusteringMethod` and the registry checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepclust import methods
from deepclust.config import resolve_config
from deepclust.methods import METHODS, ClusteringMethod, DataInfo, create_method, get_method_class

INFO = DataInfo(n_samples=32, n_channels=1, image_size=8, mean=[0.5], std=[0.25], n_clusters=3)
# feature mode: 64 flattened 8x8 "images", so the same inputs below serve both kinds
FEATURE_INFO = DataInfo(
    n_samples=32,
    n_channels=1,
    image_size=1,
    mean=[0.0],
    std=[1.0],
    n_clusters=3,
    n_features=64,
    feature_mean=[0.0] * 64,
    feature_std=[1.0] * 64,
)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_keeps_the_contract(name: str) -> None:
    cls = get_method_class(name)
    assert cls.name == name and issubclass(cls, ClusteringMethod)
    info = INFO if cls.accepts_images else FEATURE_INFO
    method = create_method(resolve_config({"method": name, "n_clusters": 3}), info)
    assert isinstance(method.backbone, nn.Module)
    assert method.prediction in ("kmeans", "head_argmax")
    bank = method.memory_bank()
    assert bank is None or (bank.shape[0] == INFO.n_samples and bank.ndim == 2)
    centers = method.head_centers()
    if centers is not None:
        w, t = centers
        assert w.ndim == 2 and w.shape[0] == INFO.n_clusters and t > 0
    method.eval()
    x = torch.randn(4, 1, 8, 8)
    feats, probs = method.infer(x if cls.accepts_images else method.eval_transform(x.flatten(1)))
    assert feats.shape[0] == 4
    if method.prediction == "head_argmax":
        assert probs is not None and probs.shape == (4, INFO.n_clusters)
        torch.testing.assert_close(probs.sum(1), torch.ones(4))


class _Nameless(ClusteringMethod):
    name = "other"


class _NoBackbone(ClusteringMethod):
    name = "nobackbone"


def test_registry_checks_name_and_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "nameless", f"{__name__}:_Nameless")
    with pytest.raises(TypeError, match="name 'nameless'"):
        get_method_class("nameless")
    monkeypatch.setitem(METHODS, "nobackbone", f"{__name__}:_NoBackbone")
    cfg = resolve_config({"method": "idfd", "n_clusters": 3})
    cfg.method, cfg.method_args = "nobackbone", {}
    with pytest.raises(TypeError, match="self.backbone"):
        create_method(cfg, INFO)


def test_methods_load_on_first_use() -> None:
    # The registry module must not import a method module eagerly (its comment says so).
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(methods))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    eager = {m for m in imported if m.startswith("deepclust.methods.") and m != "deepclust.methods.base"}
    # secu's helper functions import lazily inside their bodies; only top-level imports count
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not (eager & top)


def test_register_method_adds_a_class_and_refuses_a_taken_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepclust.errors import ConfigError

    monkeypatch.setattr(methods, "METHODS", dict(METHODS))

    class Mine(ClusteringMethod):
        name = "mine"

    assert methods.register_method(Mine) is Mine and get_method_class("mine") is Mine
    assert "mine" in methods.list_methods()

    class Taken(ClusteringMethod):
        name = "idfd"

    with pytest.raises(ConfigError, match="already registered"):
        methods.register_method(Taken)
    with pytest.raises(TypeError):
        methods.register_method(nn.Linear)  # type: ignore[arg-type]


def test_a_features_only_method_refuses_images_with_one_line() -> None:
    from deepclust.errors import ConfigError

    names = [n for n in sorted(METHODS) if not get_method_class(n).accepts_images]
    assert names  # scan
    for name in names:
        with pytest.raises(ConfigError, match="--features") as e:
            create_method(resolve_config({"method": name, "n_clusters": 3}), INFO)
        assert "\n" not in str(e.value)
