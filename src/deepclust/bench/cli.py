"""``deepclust bench``: the subcommand's parser, its printing and its entry point."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import torch

from deepclust.bench.kmeans import bench_kmeans, kmeans_features
from deepclust.bench.records import bench_config, loadavg, machine_info, write_record
from deepclust.bench.throughput import bench_throughput
from deepclust.engine.amp import typed_fp16
from deepclust.errors import ConfigError


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the CLI's subparsers; the handler is :func:`run_bench`."""
    b = subparsers.add_parser(
        "bench",
        help="training images/s against a published-style loop, or k-means against scikit-learn",
        description="Throughput: deepclust's training step against a reference loop written like the published "
        "codes (per-image torchvision transforms in DataLoader workers, fp32), same model, batch and loss. "
        "With --kmeans: deepclust's k-means against scikit-learn's (and faiss's) on the same features.",
    )
    b.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. train.amp=off)")
    b.add_argument(
        "--method", default="idfd", help="a method that trains on images (default idfd; `deepclust list` names them)"
    )
    b.add_argument("--data", default="cifar10", help="dataset (default cifar10); its packaged config is the base")
    b.add_argument("--data-dir", default=None, help="data directory (default: $DEEPCLUST_DATA)")
    b.add_argument("--split", default=None, help="training split (default: the config's)")
    b.add_argument("--backbone", default=None, help="backbone (default: the config's)")
    b.add_argument("--batch-size", type=int, default=None, help="batch size (default: the config's)")
    b.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    b.add_argument("--windows", type=int, default=5, help="timed windows; the median is reported (default 5)")
    b.add_argument("--steps", type=int, default=5, help="steps per window (default 5)")
    b.add_argument("--rounds", type=int, default=1, help="alternate the sides this many times (default 1)")
    b.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default: CPU count)")
    b.add_argument("--no-reference", action="store_true", help="time deepclust only")
    b.add_argument(
        "--amp",
        default=None,
        help="comma-separated train.amp values timed side by side in one run, e.g. off,bf16 "
        "(default: the config's train.amp alone)",
    )
    b.add_argument("--kmeans", action="store_true", help="benchmark k-means instead of training")
    b.add_argument("--features", default="blobs", help="k-means features: blobs | fashion-mnist | FILE.npy")
    b.add_argument("--n", type=int, default=60000, help="k-means: rows (default 60000)")
    b.add_argument("--dim", type=int, default=128, help="k-means: dimensions (default 128)")
    b.add_argument("--k", type=int, default=10, help="k-means: clusters (default 10)")
    b.add_argument("--n-init", type=int, default=10, help="k-means: restarts, the same for every library (default 10)")
    b.add_argument("--max-iter", type=int, default=300)
    b.add_argument("--tol", type=float, default=1e-4)
    b.add_argument("--repeats", type=int, default=3, help="k-means: timed runs per library (median reported)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=None, help="write the record as JSON to this file")
    b.set_defaults(func=run_bench)
    return b


AMP_NAMES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16", "auto": "auto"}


def amp_variants(text: str) -> dict[str, list[str]]:
    """``"off,bf16"`` -> ``{"fp32": ["train.amp=off"], "bf16": ["train.amp=bf16"]}``."""
    values = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in AMP_NAMES]
    if not values or bad:
        raise ConfigError(f"--amp takes a comma-separated list of auto, off, bf16, fp16; got {text!r}")
    return {AMP_NAMES[v]: [f"train.amp={v}"] for v in values}


def print_throughput(r: dict[str, Any]) -> None:
    d = r["deepclust"]
    head = (
        f"{r['method']} on {r['dataset']} ({r['backbone']}, {r['image_size']} px, "
        f"batch {r['batch_size']}, {r['machine']['device']})"
    )
    print(head)
    for name, v in (r.get("variants") or {"deepclust": d}).items():
        print(
            f"  {name:10s} {v['images_per_s']:9.1f} images/s   peak {v['peak_mem_mb']:.0f} MB   ({v['precision']}, "
            + ", ".join(f"{k}={x}" for k, x in v["fast_paths"].items())
            + ")"
            + (f"   {v['speedup']:.2f}x the reference" if "speedup" in v else "")
        )
    if "reference" in r:
        ref = r["reference"]
        print(
            f"  reference  {ref['images_per_s']:9.1f} images/s   peak {ref['peak_mem_mb']:.0f} MB   "
            f"(fp32, {ref['workers']} workers, views: {', '.join(ref['views'])})"
        )
        print(f"  speed-up   {r['speedup']:.2f}x")


def print_kmeans(r: dict[str, Any]) -> None:
    print(
        f"k-means on {r['features']}: n={r['n']} d={r['dim']} k={r['k']} n_init={r['n_init']} "
        f"({r['machine']['device']})"
    )
    for lib in ("deepclust", "sklearn", "faiss"):
        if lib in r:
            e = r[lib]
            print(f"  {lib:9s}  {e['time_s']:8.2f} s   inertia {e['inertia_f64']:.6g}")
    print(f"  speed-up vs scikit-learn {r['speedup_vs_sklearn']:.2f}x at inertia ratio {r['inertia_ratio']:.4f}")


def run_bench(args: argparse.Namespace) -> int:
    """The ``deepclust bench`` command; prints a summary and writes ``--out`` when given."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "deepclust bench"
    start = machine_info(None if args.device == "auto" else torch.device(args.device))
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if args.kmeans:
        if args.overrides:
            raise ConfigError("key=value overrides apply to training benchmarks, not to --kmeans")
        x, desc = kmeans_features(args.features, args.n, args.dim, args.k, args.seed, args.data_dir)
        dev = (
            "cuda"
            if args.device == "auto" and torch.cuda.is_available()
            else ("cpu" if args.device == "auto" else args.device)
        )
        record = {
            "benchmark": "kmeans",
            "features": desc,
            **bench_kmeans(x, args.k, args.n_init, args.max_iter, args.tol, args.seed, args.repeats, dev),
        }
    else:
        over = list(args.overrides)
        if args.split:
            over += [f"data.train_split={args.split}", f"data.eval_split={args.split}"]
        over.append(f"train.seed={args.seed}")
        cfg = bench_config(args.method, args.data, args.data_dir, args.backbone, args.batch_size, args.device, over)
        variants = amp_variants(args.amp) if args.amp else None
        keep = typed_fp16(args.overrides) or bool(variants and "fp16" in variants)
        record = bench_throughput(
            cfg,
            args.warmup,
            args.windows,
            args.steps,
            args.workers,
            not args.no_reference,
            args.rounds,
            variants=variants,
            keep_fp16=keep,
        )
    load_start = start.pop("loadavg")
    record["machine"] = {**start, "loadavg_start": load_start, "loadavg_end": loadavg()}
    record["command"] = command
    record["date"] = date
    (print_kmeans if args.kmeans else print_throughput)(record)
    if args.out:
        print(f"  written to {write_record(record, args.out)}")
    return 0
