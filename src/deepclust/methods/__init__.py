"""Method registry: a plain dict from name to class, with ``list_methods`` / ``create_method``.

Adding a method: its file here (a :class:`ClusteringMethod` subclass that declares what the
rest of the library asks of it: ``name``, ``prediction``, ``Options``, ``defaults()``,
``accepts_images``, ``has_memory_bank``, ``glyph_preset`` / ``glyph_batch``), its loss under
``deepclust/losses/``, its configs under ``configs/<name>/`` and its docs page. A module
``deepclust/methods/<name>.py`` is found by its file name (:func:`discover_methods`); a method
defined outside the package is added with :func:`register_method`. Presets, config rules and the
tests over every method read the declarations; none names it.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from torch import nn

from deepclust.errors import ConfigError
from deepclust.methods.base import ClusteringMethod, DataInfo, StepOutput

# name -> "module:Class" (imported on first use, so one method's import cost is not everyone's)
# or the class itself (methods registered at run time with ``register_method``). The shipped
# methods are listed only to fix their order, which the records keep; any other module of this
# package is added after them by discover_methods.
METHODS: dict[str, str | type[ClusteringMethod]] = {
    "idfd": "deepclust.methods.idfd:IDFD",
    "secu": "deepclust.methods.secu:SeCu",
    "cdc": "deepclust.methods.cdc:CDC",
    "anchorcl": "deepclust.methods.anchorcl:AnchorCL",
    "scan": "deepclust.methods.scan:SCAN",
}
# modules of this package that hold no method
_NOT_METHODS = {"base"}


def discover_methods() -> None:
    """Add every module ``deepclust/methods/<name>.py`` not yet in :data:`METHODS` under its file
    name (imported on first use, its class being the one whose ``name`` is that file name), after
    the listed ones, whose order the records keep: a new method needs no line here."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in METHODS and info.name not in _NOT_METHODS and not info.name.startswith("_"):
            METHODS[info.name] = f"{__name__}.{info.name}:"


discover_methods()


def register_method(cls: type[ClusteringMethod]) -> type[ClusteringMethod]:
    """Add a method under ``cls.name`` (usable as a class decorator); the name must be new."""
    if not (isinstance(cls, type) and issubclass(cls, ClusteringMethod)) or not cls.name:
        raise TypeError(f"register_method needs a ClusteringMethod subclass with a name, got {cls!r}")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ConfigError(f"a method named '{cls.name}' is already registered; choose another name")
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Names accepted by ``--method``, configs and the estimator.

    Returns
    -------
    list[str]
        The registered methods' names, sorted.
    """
    return sorted(METHODS)


def get_method_class(name: str) -> type[ClusteringMethod]:
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint} (choose from {', '.join(list_methods())})")
    entry = METHODS[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        found = importlib.import_module(module)
        cls = getattr(found, attr) if attr else _named_class(found, name)
    else:
        cls = entry
    if not (isinstance(cls, type) and issubclass(cls, ClusteringMethod)) or cls.name != name:
        # A registry entry must name a ClusteringMethod whose ``name`` is its key: the key is what
        # checkpoints and configs record, so a mismatch would resume the wrong method.
        raise TypeError(f"registry entry '{name}' -> {METHODS[name]} is not a ClusteringMethod with name '{name}'")
    return cls


def _named_class(module: object, name: str) -> object:
    """The ClusteringMethod subclass of a discovered module whose ``name`` is the module's name."""
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, ClusteringMethod) and value.name == name:
            return value
    raise TypeError(f"{getattr(module, '__name__', module)} defines no ClusteringMethod with name '{name}'")


def create_method(cfg, info: DataInfo) -> ClusteringMethod:
    """Build the method named by ``cfg.method`` and check the contract of
    :class:`ClusteringMethod` that the engine relies on (a contributor's error, not a user's).

    Parameters
    ----------
    cfg : the run's :class:`deepclust.Config` (``method``, ``method_args``, model, augment).
    info : the data's :class:`DataInfo` (sizes, channel statistics, number of clusters).

    Returns
    -------
    ClusteringMethod
        The method, on the CPU in training mode.

    Raises
    ------
    ConfigError
        On an unknown method, invalid ``method_args``, or images for a feature-only method.
    """
    cls = get_method_class(cfg.method)
    if not info.n_features and not cls.accepts_images:
        raise ConfigError(
            f"method '{cfg.method}' clusters feature vectors, not images: embed the images with a pretrained network "
            "first (--features timm:NAME, or DeepClusterer(features=...)), or pass an (N, D) array"
        )
    method = cls(cfg, info)
    if not isinstance(getattr(method, "backbone", None), nn.Module):
        raise TypeError(
            f"method '{cfg.method}' ({type(method).__name__}) must assign self.backbone (an nn.Module) in __init__"
        )
    return method


__all__ = [
    "METHODS",
    "ClusteringMethod",
    "DataInfo",
    "StepOutput",
    "create_method",
    "get_method_class",
    "list_methods",
    "register_method",
]
