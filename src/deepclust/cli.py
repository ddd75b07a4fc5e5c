"""Command line: ``deepclust train | resume | eval | predict | report | sweep-k | demo | selflabel | embed | list``.

``embed`` computes (or reuses) a dataset's pretrained embedding in the embedding cache
(:mod:`deepclust.pretrained`) and prints the cache folder, N, D and the images per second.

Errors a person can fix (a missing path, an unknown key, ...) print one line on stderr and exit
with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    "features": "data.features",
}


def _config_from_args(positional: Sequence[str], flags: dict[str, Any]) -> dict[str, Any]:
    from deepclust.config import deep_merge, load_yaml, nest, packaged_config, parse_override

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
            raw = deep_merge(raw, parse_override(f"{key}={value}") if not isinstance(value, str) else nest(key, value))
    return raw


def cmd_train(args: argparse.Namespace) -> int:
    from deepclust.config import resolve_config
    from deepclust.engine import train
    from deepclust.engine.amp import typed_fp16

    raw = _config_from_args(args.config, vars(args))
    cfg = resolve_config(raw, auto=True)  # no dataset config: the data kind's defaults (presets.py)
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it again: pass one of them")
    record = train(cfg, resume=args.resume, overwrite=args.overwrite, keep_fp16=typed_fp16(args.config))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process reports
        _print_record(record)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from deepclust.config import deep_merge, load_yaml, parse_override, resolve_config
    from deepclust.engine import io, train
    from deepclust.engine.amp import typed_fp16

    run = Path(args.run_dir)
    if not (run / io.CONFIG).is_file():
        raise DeepClustError(
            f"'{run}' is not a run directory (no {io.CONFIG}); pass the --out of a 'deepclust train' run"
        )
    raw = load_yaml(run / io.CONFIG)
    method = raw.get("method")
    for item in args.overrides:
        raw = deep_merge(raw, parse_override(item))
    if raw.get("method") != method:
        raise ConfigError(
            f"'{run}' holds a run of method '{method}'; it cannot be resumed as {raw.get('method')}: "
            "train a new run with --method"
        )
    raw = deep_merge(raw, {"train": {"out": str(run), **({"device": args.device} if args.device else {})}})
    record = train(resolve_config(raw), resume=True, keep_fp16=typed_fp16(args.overrides))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process reports
        _print_record(record)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from deepclust.saved_run import evaluate_run

    record = evaluate_run(args.run_dir, features=args.features, split=args.split, device=args.device)
    _print_record(record)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from deepclust.predict import predict_to_csv

    out = args.out or str(Path(args.run_dir) / "clusters.csv")
    data = args.data or _run_dataset(args.run_dir)
    s = predict_to_csv(
        args.run_dir,
        data,
        out,
        device=args.device,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        data_dir=args.data_dir,
        split=args.split,
        progress=not args.quiet,
    )
    skipped = f"; skipped {len(s.skipped)} unreadable file(s)" if s.skipped else ""
    print(f"wrote {s.n_images} rows to {s.out} ({s.n_clusters} clusters, confidence: {s.confidence}){skipped}")
    return 0


def _run_dataset(run_dir: str) -> str:
    from deepclust.config import load_yaml
    from deepclust.engine import io

    cfg = Path(run_dir) / io.CONFIG
    if not cfg.is_file():
        raise DeepClustError(
            f"'{run_dir}' is not a run directory (no {io.CONFIG}); pass the --out of a 'deepclust train' run"
        )
    return str(load_yaml(cfg).get("data", {}).get("name", "digits"))


def cmd_report(args: argparse.Namespace) -> int:
    from deepclust.report import build_report

    page = build_report(
        args.run_dir,
        out=args.out,
        device=args.device,
        sample_size=args.sample,
        per_cluster=args.per_cluster,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"report: {page}")
    return 0


def cmd_sweep_k(args: argparse.Namespace) -> int:
    from deepclust.sweep import format_table, parse_ks, sweep_k

    ks = parse_ks(args.k)  # before any training: a bad --k fails at once
    flags = {f: v for f, v in vars(args).items() if f != "out"}
    raw = _config_from_args(args.config, flags)
    out = Path(args.out) if args.out else _default_sweep_dir(raw)
    rows = sweep_k(
        raw,
        ks,
        out,
        sample_size=args.sample,
        seed=args.sweep_seed,
        device=args.device or raw.get("train", {}).get("device", "auto"),
    )
    print(format_table(rows))
    print(f"written: {out / 'sweep.json'}, {out / 'sweep.csv'}, {out / 'sweep.png'}")
    return 0


def _default_sweep_dir(raw: dict[str, Any]) -> Path:
    from deepclust.engine.rundir import default_dir  # the naming of default_run_dir

    data = str(raw.get("data", {}).get("name", "digits"))
    return default_dir(f"sweep_{raw.get('method', 'idfd')}", data, whole_path=False)


def cmd_demo(args: argparse.Namespace) -> int:
    from deepclust.demo import run_demo

    run_demo(out=args.out, epochs=args.epochs, device=args.device, seed=args.seed)
    return 0


def cmd_selflabel(args: argparse.Namespace) -> int:
    from deepclust.selflabel import selflabel

    record = selflabel(
        args.run_dir,
        epochs=args.epochs,
        threshold=args.threshold,
        batch_size=args.batch_size,
        temperature=args.temperature,
        out=args.out,
        device=args.device,
        progress=not args.quiet,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process reports
        _print_record(record)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from deepclust.data.open import open_dataset
    from deepclust.pretrained import create_encoder, embed

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.image_size is not None and args.image_size < 8:
        raise ConfigError(f"--image-size must be at least 8 pixels, got {args.image_size}")
    encoder = create_encoder(args.features, args.image_size)  # a bad spec fails before the data is read
    # mixed-size folders held in memory are resized to one size: make it the encoder's resize size
    size = encoder.preprocess.resize_size if args.data.strip().lower().startswith("folder:") else None
    data = open_dataset(args.data, args.split, args.data_dir, image_size=size, stream="auto")
    emb = embed(
        data, encoder, args.cache, device=args.device, batch_size=args.batch_size or 256, progress=not args.quiet
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    speed = "reused from the cache" if emb.reused else f"{emb.rows_computed / max(emb.seconds, 1e-9):.1f} images/s"
    print(f"embedding: {emb.path}")
    print(f"{emb.n_samples} images x {emb.dim} features ({args.features} on {data.name}, split {data.split}); {speed}")
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
    head = (
        f"{record['method']} on {record['dataset']} "
        f"({record['protocol']}, split {record['split']}, epoch {record['epoch']})"
    )
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
    _add_train_flags(t, out_help="run directory")
    t.add_argument("--n-clusters", type=int)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an --out that holds a run (its checkpoint, metrics, results and config are removed)",
    )
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", help="continue a run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=100 to train longer")
    r.add_argument(
        "--device", help="auto | cpu | cuda | cuda:N | mps: continue on another device (a GPU run on a CPU and back)"
    )
    r.set_defaults(func=cmd_resume)

    e = sub.add_parser("eval", help="evaluate a run's checkpoint again")
    e.add_argument("run_dir")
    e.add_argument("--features", choices=["clean", "memory"], help="k-means on clean features or the memory bank")
    e.add_argument("--split", help="evaluated split (default: the run's eval split)")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="cluster images with a trained run and write a CSV (path, cluster, confidence)")
    pr.add_argument("run_dir")
    pr.add_argument("--data", help="folder:PATH (streamed), npz:PATH or a dataset name (default: the run's dataset)")
    pr.add_argument("--out", help="CSV file to write (default RUN_DIR/clusters.csv)")
    pr.add_argument("--split", help="split of a named dataset (default: the run's eval split, else test)")
    pr.add_argument("--data-dir", help="where datasets live (default: the run's, $DEEPCLUST_DATA or ./data)")
    pr.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default eval.batch_size)")
    pr.add_argument("--chunk-size", type=int, default=1024, help="images decoded at a time from a folder")
    pr.add_argument("--device", default="auto")
    pr.set_defaults(func=cmd_predict)

    rp = sub.add_parser(
        "report", help="write RUN_DIR/report/report.html: curves, sizes, cluster grids, t-SNE, confusion"
    )
    rp.add_argument("run_dir")
    rp.add_argument("--out", help="report folder (default RUN_DIR/report)")
    rp.add_argument("--sample", type=int, default=2000, help="images in the t-SNE sample")
    rp.add_argument("--per-cluster", type=int, default=8, help="images shown per cluster")
    rp.add_argument("--seed", type=int, default=0, help="seed of the t-SNE sample and embedding")
    rp.add_argument("--device", default="auto")
    rp.set_defaults(func=cmd_report)

    sk = sub.add_parser("sweep-k", help="train or reuse runs for several K and compare silhouette and size entropy")
    _add_train_flags(sk, out_help="sweep folder: runs go to OUT/k{K} (default runs/sweep_METHOD_DATA)")
    sk.add_argument("--k", required=True, help="numbers of clusters to try, comma-separated, e.g. 5,10,20")
    sk.add_argument("--sample", type=int, default=2000, help="images in the silhouette sample")
    sk.add_argument("--sweep-seed", type=int, default=0, help="seed of the silhouette sample")
    sk.set_defaults(func=cmd_sweep_k)

    d = sub.add_parser("demo", help="IDFD on scikit-learn's digits beside k-means on raw pixels")
    d.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)

    sl = sub.add_parser("selflabel", help="second stage: self-label a finished run (SCAN settings)")
    sl.add_argument("run_dir")
    sl.add_argument("--epochs", type=int, default=None, help="default: SCAN's 100 on STL-10, 200 elsewhere")
    sl.add_argument("--threshold", type=float, default=0.99)
    sl.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="cosine-classifier temperature; it decides which samples can pass the threshold "
        "(default min(SeCu's t_w, 0.1), else 0.1)",
    )
    sl.add_argument("--batch-size", type=int, default=1000)
    sl.add_argument("--out", default=None, help="output run directory (default RUN_DIR/selflabel)")
    sl.add_argument("--device", default="auto")
    sl.add_argument(
        "--resume",
        action="store_true",
        help="continue the stage in --out from its checkpoint, with the settings it started with",
    )
    sl.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a stage")
    sl.set_defaults(func=cmd_selflabel)

    from deepclust.bench import add_bench_parser

    add_bench_parser(sub)  # sets func=run_bench: training throughput vs a reference loop, k-means vs scikit-learn

    em = sub.add_parser("embed", help="compute (or reuse) a dataset's pretrained embedding in the embedding cache")
    em.add_argument("--data", required=True, help="folder:PATH, npz:PATH, a dataset name or imagenet")
    em.add_argument(
        "--features",
        required=True,
        help="encoder: timm:NAME[@PATH] or torchvision:ARCH.WEIGHTS[@PATH] (weights from local files only)",
    )
    em.add_argument("--data-dir", help="where datasets live (default $DEEPCLUST_DATA or ./data)")
    em.add_argument("--split", default="train", help="split of the dataset (default train)")
    em.add_argument("--cache", help="cache folder (default $DEEPCLUST_CACHE or ~/.cache/deepclust/embeddings)")
    em.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 256)")
    em.add_argument("--image-size", type=int, default=None, help="encoder input size (default: the weights')")
    em.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    em.set_defaults(func=cmd_embed)

    ls = sub.add_parser("list", help="list methods, datasets and backbones")
    ls.set_defaults(func=cmd_list)
    return p


def _add_train_flags(t: argparse.ArgumentParser, out_help: str) -> None:
    """The flag form of a run's config (shared by ``train`` and ``sweep-k``)."""
    t.add_argument(
        "config", nargs="*", help="CONFIG.yaml (or a packaged name such as idfd/cifar10), then key=value overrides"
    )
    t.add_argument("--method", help="a method (`deepclust list` names them)")
    t.add_argument("--data", help="dataset: digits, cifar10, fashion-mnist, npz:PATH, folder:PATH, ...")
    t.add_argument("--data-dir", help="where datasets live (default $DEEPCLUST_DATA or ./data)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--out", help=out_help)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    t.add_argument("--backbone", help="auto | small_cnn | resnet18 | resnet34 | resnet50")
    t.add_argument("--train-split", help="train | test | train+test | ...")
    t.add_argument("--eval-split", help="train | test | train+test | ...")
    t.add_argument(
        "--init",
        help="initial backbone weights: a deepclust run or checkpoint, a torchvision ResNet state dict, "
        "a MoCo v2/v3, DINO or SwAV ResNet checkpoint, or torchvision:NAME.WEIGHTS",
    )
    t.add_argument(
        "--features",
        help="cluster the images' pretrained embedding instead of training a CNN: "
        "timm:NAME[@PATH] or torchvision:ARCH.WEIGHTS[@PATH] (data.features; cached, see 'deepclust embed')",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after the flags (``train CFG --out RUN train.epochs=5``):
    # argparse stops collecting a positional list at the first flag, so gather the rest here.
    positional = "config" if hasattr(args, "config") else "overrides" if hasattr(args, "overrides") else None
    if extra and positional and all("=" in e and not e.startswith("-") for e in extra):
        setattr(args, positional, [*getattr(args, positional), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
    except OSError as exc:  # permissions, a directory where a file was expected, a full disk
        print(f"deepclust: error: {exc.strerror or exc}: {exc.filename or ''}; check the path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # predict / report / eval: nothing to save, no traceback
        print("deepclust: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
