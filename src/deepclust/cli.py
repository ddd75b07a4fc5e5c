"""Command line: ``deepclust train | resume | eval | demo | list``.

Errors a person can fix (a missing path, an unknown key, ...) print one line on stderr and exit
with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from deepclust.errors import ConfigError, DeepClustError

log = logging.getLogger("deepclust")

# Flag -> config key for the flag form of ``train``.
_FLAGS = {
    "method": "method",
    "data": "data.name",
    "data_dir": "data.data_dir",
    "n_clusters": "n_clusters",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "out": "train.out",
    "seed": "train.seed",
    "device": "train.device",
    "backbone": "model.backbone",
    "train_split": "data.train_split",
    "eval_split": "data.eval_split",
    "init": "model.init",
}


def packaged_config(name: str) -> Path | None:
    """``idfd/cifar10`` -> the config shipped in the package, if there is one."""
    p = Path(__file__).parent / "configs" / (name if name.endswith(".yaml") else f"{name}.yaml")
    return p if p.is_file() else None


def _config_from_args(positional: Sequence[str], flags: dict[str, Any]) -> dict[str, Any]:
    from deepclust.config import deep_merge, load_yaml, parse_override

    raw: dict[str, Any] = {}
    rest = list(positional)
    if rest and "=" not in rest[0]:
        src = rest.pop(0)
        path = Path(src) if Path(src).is_file() else packaged_config(src)
        raw = load_yaml(path if path is not None else src)
    for item in rest:
        raw = deep_merge(raw, parse_override(item))
    for flag, key in _FLAGS.items():
        value = flags.get(flag)
        if value is not None:
            raw = deep_merge(raw, parse_override(f"{key}={value}") if not isinstance(value, str) else _nest(key, value))
    return raw


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from deepclust.config import resolve_config
    from deepclust.engine import train

    raw = _config_from_args(args.config, vars(args))
    cfg = resolve_config(raw)
    record = train(cfg, resume=args.resume)
    _print_record(record)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from deepclust.config import deep_merge, load_yaml, parse_override, resolve_config
    from deepclust.engine import io, train

    run = Path(args.run_dir)
    if not (run / io.CONFIG).is_file():
        raise DeepClustError(f"'{run}' is not a run directory (no {io.CONFIG}); pass the --out of a 'deepclust train' run")
    raw = load_yaml(run / io.CONFIG)
    for item in args.overrides:
        raw = deep_merge(raw, parse_override(item))
    raw = deep_merge(raw, {"train": {"out": str(run)}})
    record = train(resolve_config(raw), resume=True)
    _print_record(record)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from deepclust.evaluation import evaluate_run

    record = evaluate_run(args.run_dir, features=args.features, split=args.split, device=args.device)
    _print_record(record)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from deepclust.demo import run_demo

    run_demo(out=args.out, epochs=args.epochs, device=args.device, seed=args.seed)
    return 0


def cmd_selflabel(args: argparse.Namespace) -> int:
    from deepclust.selflabel import selflabel

    record = selflabel(args.run_dir, epochs=args.epochs, threshold=args.threshold, batch_size=args.batch_size,
                       out=args.out, device=args.device, progress=not args.quiet)
    _print_record(record)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from deepclust.data import list_datasets
    from deepclust.methods import list_methods
    from deepclust.models import list_backbones

    print("methods:  ", ", ".join(list_methods()))
    print("datasets: ", ", ".join(list_datasets()), "(plus npz:PATH and folder:PATH)")
    print("backbones:", ", ".join(list_backbones()))
    return 0


def _print_record(record: dict[str, Any]) -> None:
    head = f"{record['method']} on {record['dataset']} ({record['protocol']}, split {record['split']}, epoch {record['epoch']})"
    if "acc" in record:
        print(f"{head}: ACC {record['acc']:.4f}  NMI {record['nmi']:.4f}  ARI {record['ari']:.4f}")
    else:
        print(f"{head}: {record['n_clusters']} clusters; no labels to score")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepclust", description="Deep image clustering: IDFD, SeCu, CDC, AnchorCL.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a method (YAML config and key=value overrides, or flags)")
    t.add_argument("config", nargs="*", help="CONFIG.yaml (or a packaged name such as idfd/cifar10), then key=value overrides")
    t.add_argument("--method", help="idfd | secu | cdc | anchorcl")
    t.add_argument("--data", help="dataset: digits, cifar10, fashion-mnist, npz:PATH, folder:PATH, ...")
    t.add_argument("--data-dir", help="where datasets live (default $DEEPCLUST_DATA or ./data)")
    t.add_argument("--n-clusters", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--out", help="run directory")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    t.add_argument("--backbone", help="auto | small_cnn | resnet18 | resnet34 | resnet50")
    t.add_argument("--train-split", help="train | test | train+test | ...")
    t.add_argument("--eval-split", help="train | test | train+test | ...")
    t.add_argument("--init", help="a deepclust run directory or checkpoint whose backbone initialises this model")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", help="continue a run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=100 to train longer")
    r.set_defaults(func=cmd_resume)

    e = sub.add_parser("eval", help="evaluate a run's checkpoint again")
    e.add_argument("run_dir")
    e.add_argument("--features", choices=["clean", "memory"], help="k-means on clean features or the memory bank")
    e.add_argument("--split", help="evaluated split (default: the run's eval split)")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="IDFD on scikit-learn's digits beside k-means on raw pixels")
    d.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)

    sl = sub.add_parser("selflabel", help="second stage: self-label a finished run (SCAN settings)")
    sl.add_argument("run_dir")
    sl.add_argument("--epochs", type=int, default=200)
    sl.add_argument("--threshold", type=float, default=0.99)
    sl.add_argument("--batch-size", type=int, default=1000)
    sl.add_argument("--out", default=None, help="output run directory (default RUN_DIR/selflabel)")
    sl.add_argument("--device", default="auto")
    sl.set_defaults(func=cmd_selflabel)

    ls = sub.add_parser("list", help="list methods, datasets and backbones")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet and hasattr(args, "config"):
        args.config = [*args.config, "train.progress=false"]
    try:
        return args.func(args)
    except DeepClustError as exc:
        print(f"deepclust: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"deepclust: error: file not found: {exc.filename}; check the path", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
