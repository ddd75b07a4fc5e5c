"""Config validation up front (issue #17): every field has a rule (or is declared free-form or
validated by its own section), and a bad value is one ConfigError line that names the field, the
value and what is allowed, raised before any data is read."""

from __future__ import annotations

import pytest

from deepclust.config import Config, resolve_config
from deepclust.config_rules import DELEGATED, FREE, RULES, unruled_fields
from deepclust.errors import ConfigError


def test_every_field_has_a_rule() -> None:
    # A new config field fails here until it gets a line in config_rules.RULES (or FREE).
    assert unruled_fields(Config()) == []
    assert not set(RULES) & set(FREE) and set(DELEGATED) == {"augment", "method_args"}


# override -> a piece of the allowed text
BAD = {
    "train.checkpoint_every=0": "at least 1",
    "eval.batch_size=0": "at least 1",
    "optim.lr=-1": "(0, inf)",
    "optim.lr=.nan": "finite",
    "model.feature_dim=0": "at least 1",
    "model.width=0": "at least 1",
    "model.stem=foo": "cifar, stl, imagenet",
    "train.eval_every=-1": "at least 0",
    "train.device=gpu": "cuda:N",
    "model.backbone=resnet19": "resnet18",
    "optim.momentum=1.5": "[0, 1)",
    "optim.weight_decay=-0.1": "[0, inf)",
    "train.amp=fp8": "bf16",
    "train.seed=-3": "0..",
    "eval.n_init=0": "at least 1",
    "data.image_size=0": "at least 1",
    "optim.fused=maybe": "auto, true or false",
    "model.init=''": "non-empty string",
    "data.std=[0.0]": "> 0",
}


@pytest.mark.parametrize("override", list(BAD))
def test_bad_value_is_one_line_naming_field_value_and_rule(override: str) -> None:
    key, value = override.split("=", 1)
    from deepclust.config import parse_override

    with pytest.raises(ConfigError) as e:
        resolve_config({"method": "idfd", **parse_override(override)})
    msg = str(e.value)
    assert "\n" not in msg and key in msg and BAD[override] in msg, msg


CROSS = {
    "milestones not increasing": ({"optim": {"milestones": [5, 3]}}, "strictly increasing"),
    "mean without std": ({"data": {"mean": [0.5]}}, "both"),
    "mean/std lengths": ({"data": {"mean": [0.5, 0.5], "std": [0.2]}}, "2 value(s)"),
    "memory features of another method": ({"method": "cdc", "eval": {"features": "memory"}}, "IDFD"),
    "memory features train->test": (
        {"data": {"train_split": "train", "eval_split": "test"}, "eval": {"features": "memory"}},
        "eval_split",
    ),
}


@pytest.mark.parametrize("case", list(CROSS))
def test_cross_field_rules(case: str) -> None:
    raw, text = CROSS[case]
    with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace(")", r"\)")):
        resolve_config({"method": "idfd", **raw})


def test_batch_must_split_over_the_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="multiple of 3"):
        resolve_config({"method": "idfd", "train": {"batch_size": 128}})
    resolve_config({"method": "idfd", "train": {"batch_size": 129}})


def test_bad_value_fails_before_any_data_is_read(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import deepclust.engine.trainer as trainer
    from deepclust.cli import main

    def no_data(*a, **k):
        raise AssertionError("data was read before the config was checked")

    monkeypatch.setattr(trainer, "load_data", no_data)
    assert main(["-q", "train", "--method", "idfd", "--data", "digits", "eval.batch_size=0"]) == 2
    assert "eval.batch_size=0" in capsys.readouterr().err
