"""Strict typed configs: unknown keys, wrong types, overrides, method defaults."""

from __future__ import annotations

import pytest

from deepclust.config import Config, deep_merge, parse_override, resolve_config
from deepclust.errors import ConfigError


def test_defaults_and_method_defaults() -> None:
    cfg = resolve_config({"method": "idfd"})
    assert isinstance(cfg, Config)
    assert cfg.eval.n_init == 20  # IDFD overrides the library default of 10
    assert cfg.method_args == {"temperature": 1.0, "fd_temperature": 2.0, "fd_weight": 1.0, "memory_momentum": 0.5}
    assert cfg.protocol == "train+test"


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({"method": "idfd", "trian": {}}, "did you mean 'train'"),
        ({"method": "idfd", "train": {"epoch": 3}}, "did you mean 'train.epochs'"),
        ({"method": "idfd", "method_args": {"temprature": 1}}, "method_args.temperature"),
        ({"method": "idfdd"}, "did you mean 'idfd'"),
        ({"method": "idfd", "train": {"epochs": "ten"}}, "must be an integer"),
        ({"method": "idfd", "train": {"epochs": 0}}, "at least 1"),
        ({"method": "idfd", "n_clusters": 1}, "at least 2"),
        ({"method": "idfd", "eval": {"features": "raw"}}, "clean"),
    ],
)
def test_bad_configs_raise_one_line(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(raw)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_overrides_parse_yaml_values() -> None:
    assert parse_override("train.epochs=5") == {"train": {"epochs": 5}}
    assert parse_override("data.mean=[0.5, 0.5]") == {"data": {"mean": [0.5, 0.5]}}
    merged = deep_merge({"train": {"epochs": 1, "seed": 3}}, parse_override("train.epochs=7"))
    assert merged == {"train": {"epochs": 7, "seed": 3}}
    with pytest.raises(ConfigError):
        parse_override("train.epochs")


def test_protocol_follows_splits() -> None:
    cfg = resolve_config({"method": "idfd", "data": {"train_split": "train", "eval_split": "test"}})
    assert cfg.protocol == "train->test"


def test_round_trip_through_dict() -> None:
    cfg = resolve_config({"method": "idfd", "train": {"epochs": 4}, "augment": {"flip_p": 0.5}})
    again = resolve_config(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text", ["train.amp=off", "train.amp=no", "train.amp=false"])
def test_amp_off_survives_yaml_booleans(text: str) -> None:
    """YAML 1.1 reads ``off`` as false; the NaN error tells users to set train.amp=off, so it
    must resolve to "off" (it failed as 'False'), while true is still refused."""
    raw = deep_merge({"method": "idfd"}, parse_override(text))
    assert resolve_config(raw).train.amp == "off"
    with pytest.raises(ConfigError, match="train.amp"):
        resolve_config(deep_merge({"method": "idfd"}, parse_override("train.amp=on")))
