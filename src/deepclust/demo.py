"""``deepclust demo``: IDFD on scikit-learn's digits beside k-means on the raw pixels.

Both are scored in the same run, on the same 1,797 images (train+test protocol), so the
comparison is fair: same images, same metric code, same k-means (n_init 20).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from deepclust.cluster import kmeans
from deepclust.config import deep_merge, load_yaml, packaged_config, resolve_config
from deepclust.data import load_dataset
from deepclust.engine import train
from deepclust.metrics import evaluate

log = logging.getLogger(__name__)


def run_demo(
    out: str | None = None, epochs: int | None = None, device: str = "auto", seed: int = 0
) -> dict[str, dict[str, float]]:
    """Train IDFD on digits and print its ACC/NMI/ARI beside raw-pixel k-means."""
    path = packaged_config("idfd/digits")
    raw = load_yaml(path if path is not None else "idfd/digits.yaml")  # a missing file: load_yaml's one line
    over: dict = {"train": {"seed": seed, "device": device}}
    if epochs is not None:
        over["train"]["epochs"] = epochs
    with tempfile.TemporaryDirectory() as tmp:
        over["train"]["out"] = out or str(Path(tmp) / "idfd_digits")
        cfg = resolve_config(deep_merge(raw, over))
        data = load_dataset("digits", "train+test")
        t0 = time.time()
        pixels = data.images.flatten(1).float() / 255.0
        km = kmeans(pixels, data.n_classes, n_init=cfg.eval.n_init, seed=cfg.eval.kmeans_seed)
        base = evaluate(data.labels.numpy(), km.labels.numpy())
        t_km = time.time() - t0
        record = train(cfg)
    rows = {
        f"k-means on raw pixels (n_init {cfg.eval.n_init})": {**base, "time_s": t_km},
        f"IDFD, {record['backbone']} ({record['epoch']} epochs) + k-means": {
            "acc": record["acc"],
            "nmi": record["nmi"],
            "ari": record["ari"],
            "time_s": record["wall_time_s"],
        },
    }
    print(f"\ndigits: {data.n_samples} images, {data.n_classes} classes, train+test protocol, seed {seed}")
    print(f"{'':48s} {'ACC':>7s} {'NMI':>7s} {'ARI':>7s} {'time':>7s}")
    for name, r in rows.items():
        print(f"{name:48s} {r['acc']:7.4f} {r['nmi']:7.4f} {r['ari']:7.4f} {r['time_s']:6.1f}s")
    if out:
        print(f"run directory: {out}")
    return rows
