"""Quality benchmark: a method against k-means on the raw pixels, on the same images.

    python benchmarks/quality.py --method idfd --data fashion-mnist --split test \
        --data-dir ../shared/data [--epochs N] [key=value ...]

Trains with ``configs/<method>/<data>.yaml`` on the chosen split (train+test protocol on that
split), runs k-means (same n_init) on the raw pixels of the same images, and writes
``benchmarks/results/quality/<method>_<data>_<split>_<device>.json`` with both scores, the machine,
the command, the date and the wall times. For a method that predicts with its own head (SeCu,
CDC, AnchorCL) the record also holds k-means on the trained network's clean features (the
method's ``infer`` features, same n_init), as a diagnostic: how the head compares with k-means
on the representation it was trained with. A config on a data kind's preset (``defaults:
glyph``, as the digits and Fashion-MNIST ones) is sized for the images it trains on (a
``--subset``'s), as the flag form is (``--defaults``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

from deepclust.bench import bench_config, machine_info, stamp_record, write_record
from deepclust.cluster import kmeans
from deepclust.config import packaged_config
from deepclust.data import load_dataset
from deepclust.data.peek import shape_of
from deepclust.engine.trainer import Trainer
from deepclust.errors import DeepClustError
from deepclust.metrics import evaluate

RESULTS = Path(__file__).resolve().parent / "results" / "quality"


def flag_form_config(
    method: str, data: str, data_dir: str, device: str, n_clusters: int, overrides: list[str], images=None
):
    """What ``deepclust train --method M --data D --n-clusters K --epochs E`` resolves to (no
    shipped config: the data kind's defaults), plus the split, seed and ``overrides``;
    progress bars off. ``images``: the loaded images, whose shape (a subset's size) the data
    kind's preset then reads instead of the dataset's headers."""
    from deepclust.cli import _config_from_args
    from deepclust.config import resolve_config

    flags = {"method": method, "data": data, "data_dir": data_dir, "n_clusters": n_clusters, "device": device}
    raw = _config_from_args([*overrides, "train.progress=false"], flags)
    return resolve_config(raw, auto=True, shape=None if images is None else shape_of(tuple(images.shape)))


def subset(data, n: int | None, seed: int = 0):
    """``n`` images of ``data`` drawn without replacement by a generator of its own seed (the
    same images in every cell and for every method), in their original order; all when None."""
    import torch

    if n is None or n >= data.n_samples:
        return data
    idx = torch.randperm(data.n_samples, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return data.subset(idx)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", required=True)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=os.environ.get("DEEPCLUST_DATA", "../shared/data"))
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", default=str(RESULTS), help="where the record goes")
    p.add_argument(
        "--defaults",
        action="store_true",
        help="the flag form a new user types (--method --data --n-clusters --epochs): the method's "
        "defaults, not configs/<method>/<data>.yaml",
    )
    p.add_argument(
        "--subset", type=int, help="train and evaluate on this many images of the split (a fixed seeded draw)"
    )
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)

    over = [
        f"data.train_split={a.split}",
        f"data.eval_split={a.split}",
        f"train.seed={a.seed}",
        *([f"train.epochs={a.epochs}"] if a.epochs else []),
        *a.overrides,
    ]
    start = machine_info()
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory() as tmp:
        if a.defaults:
            data = subset(load_dataset(a.data, a.split, a.data_dir), a.subset)
            cfg = flag_form_config(a.method, a.data, a.data_dir, a.device, data.n_classes, over, data.images)
        else:
            cfg = bench_config(a.method, a.data, a.data_dir, device=a.device, overrides=over)
            data = subset(load_dataset(cfg.data.name, a.split, a.data_dir), a.subset)
            if cfg.defaults != "method":  # a config on a kind's preset: sized for the images it trains on
                cfg = bench_config(
                    a.method,
                    a.data,
                    a.data_dir,
                    device=a.device,
                    overrides=over,
                    shape=shape_of(tuple(data.images.shape)),
                )
        cfg.train.out = str(Path(tmp) / "run")
        t0 = time.time()
        pixels = data.images.flatten(1).float() / 255.0
        km = kmeans(pixels, cfg.n_clusters or data.n_classes, n_init=cfg.eval.n_init, seed=cfg.eval.kmeans_seed)
        base = {**evaluate(data.labels.numpy(), km.labels.numpy()), "wall_time_s": round(time.time() - t0, 2)}
        trainer = Trainer(cfg, data=data)  # the very images k-means saw (a subset too)
        rec = trainer.fit()
        feat_km = None
        pred = trainer.prediction
        if pred is not None and pred.centers is None:  # head argmax: k-means on the final evaluation's features
            t1 = time.time()
            feats = pred.features
            km_f = kmeans(feats, cfg.n_clusters or data.n_classes, n_init=cfg.eval.n_init, seed=cfg.eval.kmeans_seed)
            feat_km = {
                **{
                    k: v
                    for k, v in evaluate(data.labels.numpy(), km_f.labels.numpy()).items()
                    if k in ("acc", "nmi", "ari")
                },
                "features": (
                    f"{trainer.method.name} infer() features of the final evaluation, clean (eval transform, eval mode)"
                ),
                "dim": feats.shape[1],
                "n_init": cfg.eval.n_init,
                "wall_time_s": round(time.time() - t1, 2),
            }
    device = rec["device"]
    out = {
        "benchmark": "quality",
        "method": a.method,
        "config_source": "defaults (flag form)"
        if a.defaults
        else "shipped config"
        if packaged_config(f"{a.method}/{a.data}")
        else "defaults (no shipped config)",
        "dataset": data.name,
        "split": a.split,
        "protocol": f"train+test on the {data.n_samples} {a.split} images"
        + (f" (a seeded subset of {a.subset})" if a.subset else ""),
        "data_kind": cfg.defaults,
        "device": device,
        "kmeans_raw_pixels": {k: base[k] for k in ("acc", "nmi", "ari", "wall_time_s")} | {"n_init": cfg.eval.n_init},
        "method_result": {
            k: rec.get(k)
            for k in (
                "acc",
                "nmi",
                "ari",
                "epoch",
                "wall_time_s",
                "train_images_per_s",
                "n_init",
                "prediction",
                "cluster_sizes",
                "extras",
            )
        },
        "beats_kmeans_acc": rec["acc"] > base["acc"],
        **({"kmeans_on_method_features": feat_km} if feat_km is not None else {}),
        "config": cfg.to_dict(),
    }
    stamp_record(out, start, "benchmarks/quality.py", argv if argv is not None else sys.argv[1:], date, device=device)
    dev = "gpu" if device.startswith("cuda") else "cpu"
    label = Path(a.data.split(":", 1)[1]).stem if ":" in a.data else a.data  # npz:PATH -> the file's stem
    path = write_record(out, Path(a.out_dir) / f"{a.method}_{label}_{a.split}_{dev}{a.tag}.json")
    print(f"k-means raw pixels: ACC {base['acc']:.4f} NMI {base['nmi']:.4f} ARI {base['ari']:.4f}")
    if feat_km is not None:
        print(
            f"k-means on {a.method}'s features: ACC {feat_km['acc']:.4f} NMI {feat_km['nmi']:.4f} "
            f"ARI {feat_km['ari']:.4f}"
        )
    print(
        f"{a.method}: ACC {rec['acc']:.4f} NMI {rec['nmi']:.4f} ARI {rec['ari']:.4f} "
        f"in {rec['wall_time_s']:.0f}s -> {path}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DeepClustError as exc:  # a bad override, a missing dataset: one line, not a traceback
        print(f"quality: error: {exc}", file=sys.stderr)
        sys.exit(2)
