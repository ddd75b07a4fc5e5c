"""Method registry: a plain dict from name to class, with ``list_methods`` / ``create_method``."""

from __future__ import annotations

import difflib
import importlib

from deepclust.errors import ConfigError
from deepclust.methods.base import ClusteringMethod, DataInfo, StepOutput
from deepclust.methods.idfd import IDFD

# name -> "module:Class"; imported on first use so one method's import cost is not everyone's.
METHODS: dict[str, str] = {
    "idfd": "deepclust.methods.idfd:IDFD",
    "secu": "deepclust.methods.secu:SeCu",
    "cdc": "deepclust.methods.cdc:CDC",
    "anchorcl": "deepclust.methods.anchorcl:AnchorCL",
}


def secu_size_assign(similarity, dual):
    """SeCu's size-constrained assignment (see :mod:`deepclust.methods.secu`)."""
    from deepclust.methods.secu import secu_size_assign as f

    return f(similarity, dual)


def secu_dual_update(dual, labels, lower_ratio: float, lr: float):
    """SeCu's projected dual ascent step (see :mod:`deepclust.methods.secu`)."""
    from deepclust.methods.secu import secu_dual_update as f

    return f(dual, labels, lower_ratio, lr)


def list_methods() -> list[str]:
    """Names accepted by ``--method``, configs and the estimator."""
    return sorted(METHODS)


def get_method_class(name: str) -> type[ClusteringMethod]:
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint} (choose from {', '.join(list_methods())})")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_method(cfg, info: DataInfo) -> ClusteringMethod:
    """Build the method named by ``cfg.method``."""
    return get_method_class(cfg.method)(cfg, info)


__all__ = ["METHODS", "ClusteringMethod", "DataInfo", "IDFD", "StepOutput", "create_method", "get_method_class", "list_methods", "secu_dual_update", "secu_size_assign"]
