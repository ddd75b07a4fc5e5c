"""Typed, strict run configuration.

A run is described by :class:`Config`, a tree of dataclasses. It is built from, in order of
precedence (later wins): the dataclass defaults, the method's own defaults
(``METHOD.defaults``), the preset of the data's kind (``defaults: auto``, see
:mod:`deepclust.presets`; shipped configs say ``defaults: method`` and skip it, the digits and
Fashion-MNIST ones ``defaults: glyph``), a YAML file, and ``key.sub=value`` overrides or
command-line flags. Unknown keys are errors that name the closest valid key. The resolved
config is saved next to every run's results.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepclust.augment import AugmentConfig
from deepclust.config_rules import validate
from deepclust.data.peek import DataShape, peek
from deepclust.errors import ConfigError, DataError
from deepclust.methods import get_method_class
from deepclust.presets import DEFAULTS_CHOICES, data_kind, describe, kind_defaults

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Which images to train and evaluate on."""

    name: str = "digits"
    data_dir: str | None = None
    train_split: str = "train+test"  # the protocol follows from train_split and eval_split
    eval_split: str = "train+test"
    image_size: int | None = None  # None: the dataset's native size
    mean: list[float] | None = None  # None: per-channel statistics of the training images
    std: list[float] | None = None
    # Storage and streaming (data/open.py, data/stream.py)
    stored_size: int | None = None  # in memory: None keeps the native size (or the input size for folders)
    stream: bool | str = "auto"  # auto: folders stream when decoded they exceed memory_budget_gb; imagenet always
    memory_budget_gb: float | None = None  # None: a quarter of the physical memory
    eval_crop: float | None = (
        None  # streamed evaluation: centred fraction of the shorter side (None: 0.875 imagenet, whole image folders)
    )
    decoder: str = "pil"  # streamed decoding: pil | torchvision (benchmarks/stream.py)
    workers: int | None = None  # streamed decoding processes (None: cores - 1, at most 8)
    gpu_decode: bool = False  # CUDA: decode the JPEGs of a streamed batch on the GPU (unmeasured)
    # Pretrained embeddings (issue #27, deepclust/pretrained): cluster the images' features
    features: str | None = (
        None  # an encoder spec (timm:NAME[@PATH], torchvision:ARCH.WEIGHTS[@PATH]); None: train on the images
    )
    features_size: int | None = None  # the encoder's input size; None: the weights' own
    cache_dir: str | None = None  # the embedding cache root; None: $DEEPCLUST_CACHE or ~/.cache/deepclust/embeddings


@dataclass
class ModelConfig:
    """Backbone and projection."""

    backbone: str = "auto"  # auto: small_cnn for small grayscale images, else resnet18
    stem: str = "auto"  # cifar | stl | imagenet | auto (from the image size)
    feature_dim: int = 128
    width: int = 32  # small_cnn: channels of the first stage (then 2x, 4x)
    # initial backbone weights: a run, an SSL / torchvision checkpoint, torchvision:NAME.WEIGHTS (models/init.py)
    init: str | None = None


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (stepped per iteration)."""

    name: str = "sgd"  # sgd | adam | adamw | lars (engine/lars.py)
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "step"  # constant | step | cosine
    milestones: list[int] = field(default_factory=list)  # epochs, for "step"
    gamma: float = 0.1
    warmup_epochs: int = 0
    trust_coefficient: float = 0.001  # lars only: eta in eta * ||w|| / ||g + wd * w||
    fused: bool | str = "auto"  # auto: fused kernels where torch has them for this device (engine/fastpath.py)


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 30
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with AMX-BF16, else off; engine/amp.py) | bf16 | fp16 | off
    drop_last: bool = False
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 1
    out: str | None = None
    progress: bool = True
    # fast paths (engine/fastpath.py): "auto" or true/false
    channels_last: bool | str = "auto"  # auto: on for conv backbones on CUDA and the CPU
    compile: bool | str = "auto"  # torch.compile of the backbone; auto: CUDA with Triton and >= 5,000 steps
    data_on_device: bool | str = (
        "auto"  # auto: resident when it fits, else streamed from host memory (engine/loader.py)
    )
    sync_bn: bool = False  # torchrun: BatchNorm statistics of the global batch (no effect with one process)


@dataclass
class EvalConfig:
    """How predictions are made and scored (see spec/evaluation.md)."""

    n_init: int = 10  # k-means restarts
    kmeans_seed: int = 0
    features: str = "clean"  # clean | memory (IDFD's memory bank, train+test only)
    batch_size: int = 512
    distributed_kmeans: bool = False  # torchrun: fit k-means over the processes' feature shards, not on rank 0


@dataclass
class Config:
    """A whole run: one field per section of a config file.

    Attributes
    ----------
    method : a name from :func:`deepclust.list_methods`.
    n_clusters : K (None: the number of classes of the dataset).
    defaults : which preset was merged under the file's values (see :func:`resolve_config`).
    data, model, optim, train, augment, eval : the sections' dataclasses.
    method_args : the method's own options (validated against its ``Options`` dataclass).
    """

    method: str = "idfd"
    n_clusters: int | None = None  # None: the number of classes of the dataset
    # auto: the preset of the data's kind under this config's values (deepclust/presets.py);
    # method: the method's defaults only (shipped configs); glyph | natural | features: that kind.
    # The user-facing entry points (CLI train, sweep-k, the estimator) resolve with auto=True,
    # where a missing key means auto; library calls of resolve_config keep method.
    defaults: str = "method"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method_args: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        """``train+test`` when the evaluated images are the trained ones, else ``train->test``."""
        return "train+test" if self.data.train_split == self.data.eval_split else "train->test"

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{where}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown config key '{where}{key}'{hint}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check and convert a YAML value to the annotated type (int, float, str, bool, lists)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if tp is type(None) or type(None) in args or tp is Any:
            return None
        raise ConfigError(f"config key '{where}' must not be empty")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{where}' has an invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"config key '{where}' must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans: train.amp=off is "off"
            return "on" if value else "off"
        if not isinstance(value, str):
            return str(value)
        return value
    return value


def build_dataclass(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, strictly: unknown keys raise :class:`ConfigError`."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{where.rstrip('.') or 'root'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(str(key), names, where)
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value or {}, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{where}{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid config section '{where.rstrip('.') or 'root'}': {exc}") from None


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins. ``method_args`` merges like any section."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``train.epochs=10`` -> ``{"train": {"epochs": 10}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value (e.g. train.epochs=10)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return nest(key.strip(), value)


def nest(key: str, value: Any) -> dict[str, Any]:
    """``("train.epochs", 10)`` -> ``{"train": {"epochs": 10}}`` (the value as given, unparsed)."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def packaged_config(name: str) -> Path | None:
    """``idfd/cifar10`` -> the config shipped in the package, if there is one."""
    p = Path(__file__).parent / "configs" / (name if name.endswith(".yaml") else f"{name}.yaml")
    return p if p.is_file() else None


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{path}' not found; pass a YAML file such as configs/idfd/digits.yaml")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{at}; fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (method, data, train, ...)")
    return data


def resolve_config(raw: dict[str, Any], shape: DataShape | None = None, auto: bool = False) -> Config:
    """Merge the method's defaults and the data kind's preset under ``raw`` and build a strict
    :class:`Config`.

    ``raw["defaults"]`` (missing: ``auto`` when ``auto`` is True, as the CLI and the estimator
    resolve a user's run, else ``method``): ``auto`` classifies the data (``shape``, else
    :func:`deepclust.data.peek.peek` of ``data.name``) and merges that kind's preset
    (:func:`deepclust.presets.kind_defaults`); a kind name forces it; ``method`` merges none.
    The resolved config stores the kind applied (or ``method``). The method's ``method_args``
    are validated against its own options dataclass.

    Parameters
    ----------
    raw : the nested config as read from YAML / overrides (``{"method": ..., "data": {...}}``).
    shape : the data's shape for ``auto`` (None: peeked from ``data.name``).
    auto : resolve a missing ``defaults`` as ``auto`` (the CLI and the estimator do).

    Returns
    -------
    Config
        The strict, validated config.

    Raises
    ------
    ConfigError
        On an unknown key, a value of the wrong type, or an invalid combination.
    """
    method = raw.get("method", Config.method)
    cls = get_method_class(method)
    merged = deep_merge(cls.defaults(), _preset(raw, method, shape, auto))
    merged = deep_merge(merged, raw)
    cfg = build_dataclass(Config, merged)
    # Validate and fill the method's own options; store them fully resolved.
    opts = build_dataclass(cls.Options, cfg.method_args, "method_args.")
    cfg.method_args = _to_plain(dataclasses.asdict(opts))
    validate(cfg)  # every field against its rule: one line naming field, value and what is allowed
    return cfg


def _preset(raw: dict[str, Any], method: str, shape: DataShape | None, auto: bool) -> dict[str, Any]:
    """The data kind's preset for ``raw`` (``{}`` for ``defaults: method``), with ``defaults``
    set to the kind applied; one info line names it."""
    choice = raw.get("defaults", "auto" if auto else Config.defaults)
    if choice not in DEFAULTS_CHOICES:
        raise ConfigError(f"config key 'defaults' must be one of {', '.join(DEFAULTS_CHOICES)}, got {choice!r}")
    if choice == "method":
        return {}
    spec = (raw.get("data") or {}).get("features")
    if choice == "auto" and spec:
        # --features: the run trains on the images' pretrained embedding, whatever the images are
        n = shape.n_samples if shape is not None else 0
        log.info("defaults for features data (the pretrained embedding %s of the images; docs/configs.md)", spec)
        return {**kind_defaults(method, "features", DataShape(channels=0, size=0, n_samples=n)), "defaults": "features"}
    if shape is None:
        data = raw.get("data") or {}
        try:
            shape = peek(str(data.get("name", DataConfig.name)), data.get("data_dir"))
        except DataError:
            if choice == "auto":
                raise
            # A named kind (a saved run's config, every value written out) needs no shape;
            # its data may be in memory (the estimator) or moved since.
            shape = DataShape(channels=0, size=0, n_samples=0)
    kind = data_kind(shape) if choice == "auto" else choice
    if choice == "auto":
        log.info("%s", describe(kind, shape))
    return {**kind_defaults(method, kind, shape), "defaults": kind}


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML (every default written out), as run directories store it."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
