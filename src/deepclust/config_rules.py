"""The allowed values of every config field, checked before any data is read or any epoch runs.

:data:`RULES` maps ``section.field`` to a :class:`Rule`; :data:`DELEGATED` names the sections
whose own dataclass checks itself (``augment``: ``AugmentConfig.__post_init__``;
``method_args``: the method's ``Options``); :data:`FREE` lists the fields any value of the
annotated type may take, with the reason. :data:`CROSS` holds the rules over several fields.
A field in none of these is not rejected (a newer field of another module), but the test suite
fails until it gets a rule (``tests/test_config_rules.py``). To add a field: one line in RULES.

Every failure is one :class:`ConfigError` line naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepclust.errors import ConfigError, DataError
from deepclust.methods import get_method_class, list_methods
from deepclust.presets import DEFAULTS_CHOICES

__all__ = ["CROSS", "DELEGATED", "FREE", "RULES", "Rule", "check_n_clusters", "validate", "unruled_fields"]


@dataclass(frozen=True)
class Rule:
    """``check(value)`` is True when ``value`` is allowed; ``allowed`` says what is."""

    check: Callable[[Any], bool]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def check_n_clusters(k: Any, n_samples: int, samples: str = "samples") -> int:
    """The one rule for a number of clusters K against the data: an integer, 2 <= K <= N
    (``samples``: what N counts, for the message). The config value alone is checked by
    :data:`RULES` (``n_clusters``); this is for K once the data is known."""
    if not _is_int(k):
        raise ConfigError(f"n_clusters must be an integer, got {k!r}")
    if k < 2:
        raise ConfigError(f"n_clusters must be at least 2, got {k}")
    if k > n_samples:
        raise DataError(
            f"n_clusters={k} is larger than the number of {samples} ({n_samples}); choose at most {n_samples}"
        )
    return int(k)


def integer(low: int, high: int | None = None, note: str = "") -> Rule:
    bound = f"of at least {low}" if high is None else f"in {low}..{high}"
    return Rule(lambda v: _is_int(v) and v >= low and (high is None or v <= high), f"an integer {bound}{note}")


def number(low: float, high: float | None = None, low_open: bool = False, high_open: bool = False) -> Rule:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    text = f"a finite number in {lo}{low:g}, {'inf' if high is None else f'{high:g}'}{hi if high is not None else ')'}"

    def ok(v: Any) -> bool:
        if not _is_num(v):
            return False
        x = float(v)
        if x < low or (low_open and x == low):
            return False
        return high is None or x < high or (not high_open and x == high)

    return Rule(ok, text)


def choice(*values: str) -> Rule:
    return Rule(lambda v: v in values, "one of " + ", ".join(values))


def optional(rule: Rule, meaning: str) -> Rule:
    return Rule(lambda v: v is None or rule.check(v), f"null ({meaning}) or {rule.allowed}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
SWITCH = Rule(
    lambda v: (
        isinstance(v, bool) or str(v).strip().lower() in ("auto", "true", "false", "on", "off", "yes", "no", "1", "0")
    ),
    "auto, true or false",
)
TEXT = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
DEVICE = Rule(lambda v: isinstance(v, str) and bool(_DEVICE.match(v)), "auto, cpu, cuda, cuda:N or mps")
STATS = optional(
    Rule(
        lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_num(x) for x in v),
        "a list of finite numbers, one per channel",
    ),
    "the training images' statistics",
)


def _backbone() -> Rule:
    from deepclust.models import list_backbones  # local: models is heavy and imports torch

    names = ("auto", *list_backbones())
    return Rule(lambda v: v in names, "one of " + ", ".join(names))


# The optimiser names the engine knows; a new optimiser adds its name here.
OPTIMIZERS = ("sgd", "adam", "adamw", "lars")

RULES: dict[str, Rule | Callable[[], Rule]] = {
    "n_clusters": optional(integer(2), "the number of classes of the data"),
    "defaults": choice(*DEFAULTS_CHOICES),
    "data.name": TEXT,
    "data.train_split": TEXT,
    "data.eval_split": TEXT,
    "data.image_size": optional(integer(1), "the native size"),
    "data.mean": STATS,
    "data.std": optional(
        Rule(
            lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_num(x) and x > 0 for x in v),
            "a list of numbers > 0, one per channel",
        ),
        "the training images' statistics",
    ),
    "data.stored_size": optional(integer(1), "the native size, or the input size for folders"),
    "data.stream": SWITCH,
    "data.memory_budget_gb": optional(number(0.0, low_open=True), "a quarter of the physical memory"),
    "data.eval_crop": optional(number(0.0, 1.0, low_open=True), "0.875 for imagenet, the whole image for folders"),
    "data.decoder": choice("pil", "torchvision"),
    "data.workers": optional(integer(0), "cores - 1, at most 8"),
    "data.gpu_decode": BOOL,
    # the spec itself (kind, name, weights file) is checked by pretrained.create_encoder before the images are read
    "data.features": optional(TEXT, "train on the images"),
    "data.features_size": optional(integer(8, note=" pixels"), "the weights' own input size"),
    "model.backbone": _backbone,
    "model.stem": choice("auto", "cifar", "stl", "imagenet", "none"),
    "model.feature_dim": integer(1),
    "model.width": integer(1),
    # the source itself (a path, an SSL checkpoint, torchvision:NAME.WEIGHTS) is checked where it is read
    "model.init": optional(TEXT, "random initialisation"),
    "optim.name": choice(*OPTIMIZERS),
    "optim.lr": number(0.0, low_open=True),
    "optim.momentum": number(0.0, 1.0, high_open=True),
    "optim.weight_decay": number(0.0),
    "optim.nesterov": BOOL,
    "optim.schedule": choice("constant", "step", "cosine"),
    "optim.milestones": Rule(
        lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) and x >= 1 for x in v), "a list of epochs >= 1"
    ),
    "optim.gamma": number(0.0, low_open=True),
    "optim.warmup_epochs": integer(0),
    "optim.trust_coefficient": number(0.0, low_open=True),
    "optim.fused": SWITCH,
    "train.epochs": integer(1),
    "train.batch_size": integer(2),
    "train.seed": integer(0, 2**32 - 1),
    "train.device": DEVICE,
    "train.amp": choice("auto", "bf16", "fp16", "off"),
    "train.drop_last": BOOL,
    "train.eval_every": integer(0, note=" (0: evaluate only at the end)"),
    "train.checkpoint_every": integer(1, note=" (epochs between checkpoints)"),
    "train.progress": BOOL,
    "train.channels_last": SWITCH,
    "train.compile": SWITCH,
    "train.data_on_device": SWITCH,
    "train.sync_bn": BOOL,
    "eval.n_init": integer(1),
    "eval.kmeans_seed": integer(0, 2**32 - 1),
    "eval.features": choice("clean", "memory"),
    "eval.batch_size": integer(1),
    "eval.distributed_kmeans": BOOL,
}

# Fields that take any value of their annotated type, and why.
FREE: dict[str, str] = {
    "method": "checked against the method registry (with the closest name) by resolve_config",
    "data.data_dir": "a path; whether the data is there is checked when it is read",
    "data.cache_dir": (
        "a path (null: $DEEPCLUST_CACHE or ~/.cache/deepclust/embeddings); created when an embedding is written"
    ),
    "train.out": "a path; the run directory rules are in engine/rundir.py",
}

# Sections whose dataclass validates itself on construction.
DELEGATED: dict[str, str] = {
    "augment": "AugmentConfig.__post_init__ (deepclust/augment/pipeline.py)",
    "method_args": "the method's Options dataclass (deepclust/methods/)",
}


def _cross_world(cfg: Any) -> str | None:
    from deepclust.engine.process_group import env_world_size  # local: engine imports config

    world = env_world_size()
    if world > 1 and cfg.train.batch_size % world:
        return (
            f"train.batch_size={cfg.train.batch_size} is the global batch and must split evenly over the "
            f"{world} processes; use a multiple of {world}"
        )
    return None


def _cross_stats(cfg: Any) -> str | None:
    m, s = cfg.data.mean, cfg.data.std
    if (m is None) != (s is None):
        return "data.mean and data.std must both be given or both be null"
    if m is not None and len(m) != len(s):
        return f"data.mean has {len(m)} value(s) but data.std has {len(s)}; give one of each per channel"
    return None


def _cross_milestones(cfg: Any) -> str | None:
    ms = list(cfg.optim.milestones)
    if any(b <= a for a, b in zip(ms, ms[1:], strict=False)):  # consecutive pairs
        return f"optim.milestones={ms} must be strictly increasing epochs"
    return None


def _cross_memory(cfg: Any) -> str | None:
    if cfg.eval.features == "memory" and not get_method_class(cfg.method).has_memory_bank:
        banks = ", ".join(c.__name__ for c in map(get_method_class, list_methods()) if c.has_memory_bank)
        return (
            f"eval.features=memory needs a method with a memory bank ({banks}), but the method is "
            f"'{cfg.method}'; use eval.features=clean"
        )
    if cfg.eval.features == "memory" and cfg.data.train_split != cfg.data.eval_split:
        return (
            "eval.features=memory clusters the trained images' memory bank, so data.eval_split must equal "
            f"data.train_split ('{cfg.data.train_split}'); use eval.features=clean for train->test"
        )
    return None


def _cross_lars(cfg: Any) -> str | None:
    if cfg.optim.name == "lars" and cfg.optim.nesterov:
        return "optim.nesterov is not supported by lars; set optim.nesterov=false"
    return None


CROSS: list[Callable[[Any], str | None]] = [_cross_world, _cross_stats, _cross_milestones, _cross_memory, _cross_lars]


def _fields(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, value) of every leaf field; delegated sections are not entered."""
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if key in DELEGATED:
            continue
        if dataclasses.is_dataclass(value):
            out.extend(_fields(value, f"{key}."))
        else:
            out.append((key, value))
    return out


def unruled_fields(cfg: Any) -> list[str]:
    """Fields of ``cfg`` with no rule, not free-form and not in a delegated section."""
    return [k for k, _ in _fields(cfg) if k not in RULES and k not in FREE]


def validate(cfg: Any) -> None:
    """Raise a one-line :class:`ConfigError` for the first field (then cross-field rule) that fails."""
    for key, value in _fields(cfg):
        rule = RULES.get(key)
        if rule is None:
            continue  # free-form, or a field this table does not know yet (see unruled_fields)
        if not isinstance(rule, Rule):
            rule = rule()
        if not rule.check(value):
            raise ConfigError(f"invalid config value {key}={value!r}: must be {rule.allowed}")
    for cross in CROSS:
        msg = cross(cfg)
        if msg is not None:
            raise ConfigError(msg)
