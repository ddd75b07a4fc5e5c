"""Time to accuracy: train a method through the real trainer until a target ACC or a time limit.

    python benchmarks/time_to_accuracy.py --method idfd --data fashion-mnist --split test \
        --target 0.5 --time-limit 600 --data-dir ../shared/data [key=value ...]

Trains with the packaged ``<method>/<data>`` config (train+test protocol on ``--split``) and
``train.eval_every=1``: after every epoch the trainer's own evaluation (k-means or head argmax,
as the method predicts) gives ACC / NMI / ARI. The run stops at the first evaluation with
ACC >= ``--target``, when the training time passes ``--time-limit`` seconds, or at the config's
last epoch (its schedule ends there). Training time excludes the evaluations; wall time
includes them. Writes ``tta_<method>_<dataset>_<split>_<device>[_<tag>].json`` (``train+test``
written ``traintest``) to ``--out-dir`` (default ``benchmarks/results/tta/``): the curve of (train
time, wall time, epoch, ACC, NMI, ARI), the outcome, the machine, the command, the date; and a
PNG plot of ACC against training time beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from deepclust.bench import bench_config, machine_info, write_record
from deepclust.engine.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "tta"
log = logging.getLogger("tta")


class _Stop(Exception):
    """Raised from an evaluation to end the run (target reached or time up)."""


class TimedTrainer(Trainer):
    """The trainer, with every evaluation timed and recorded on the curve."""

    def __init__(self, cfg: Any, target: float, time_limit: float) -> None:
        super().__init__(cfg)
        self.target, self.time_limit = target, time_limit
        self.curve: list[dict[str, Any]] = []
        self.eval_s = 0.0
        self.t0 = time.perf_counter()
        self.outcome = "epochs done"

    def evaluate(self, epoch: int) -> tuple[dict[str, Any], Any]:
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_s = start - self.t0 - self.eval_s
        record, pred = super().evaluate(epoch)
        self.eval_s += time.perf_counter() - start
        point = {
            "train_s": round(train_s, 2),
            "wall_s": round(time.perf_counter() - self.t0, 2),
            "epoch": epoch,
            **{k: record[k] for k in ("acc", "nmi", "ari") if k in record},
        }
        if not self.curve or self.curve[-1]["epoch"] != epoch:  # fit's final evaluation repeats the last epoch
            self.curve.append(point)
            log.info("epoch %d: train %.1f s, ACC %.4f", epoch, train_s, point.get("acc", float("nan")))
        if point.get("acc", -1.0) >= self.target:
            self.outcome = "target reached"
            raise _Stop
        if train_s >= self.time_limit:
            self.outcome = "time limit"
            raise _Stop
        return record, pred


def _plot(rec: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["train_s"] for p in rec["curve"]]
    ys = [p["acc"] for p in rec["curve"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o", label=f"{rec['method']} ({rec['machine']['device']})")
    ax.axhline(rec["target_acc"], color="grey", ls="--", label=f"target {rec['target_acc']}")
    ax.set_xlabel("training time (s, evaluations excluded)")
    ax.set_ylabel("ACC")
    ax.set_title(f"{rec['method']} on {rec['dataset']} ({rec['split']}): {rec['outcome']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _file_part(dataset: str) -> str:
    """A dataset name fit for a file name: ``npz:/a/b/x.npz`` -> ``npz-x`` (no path separators)."""
    if ":" in dataset:
        scheme, path = dataset.split(":", 1)
        return f"{scheme}-{Path(path).stem}"
    return dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="idfd")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=os.environ.get("DEEPCLUST_DATA", "../shared/data"))
    p.add_argument("--target", type=float, default=0.5, help="target ACC")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds of training")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", default=str(RESULTS), help="where the record and plot go (default results/tta)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    over = [
        f"data.train_split={a.split}",
        f"data.eval_split={a.split}",
        "train.eval_every=1",
        f"train.seed={a.seed}",
        *a.overrides,
    ]
    cfg = bench_config(a.method, a.data, a.data_dir, device=a.device, overrides=over)
    start = machine_info()
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="deepclust-tta-") as tmp:
        cfg.train.out = str(Path(tmp) / "run")
        trainer = TimedTrainer(cfg, a.target, a.time_limit)
        trainer.t0 = time.perf_counter()  # data loading and model building are not training
        try:
            trainer.fit()
        except _Stop:
            pass
    cfg = trainer.cfg  # with the concrete backbone and stem
    curve = trainer.curve
    hit = next((pt for pt in curve if pt.get("acc", -1.0) >= a.target), None)
    load_start = start.pop("loadavg")
    rec = {
        "benchmark": "time_to_accuracy",
        "method": cfg.method,
        "dataset": trainer.train_data.name,
        "split": a.split,
        "protocol": cfg.protocol,
        "n_images": trainer.train_data.n_samples,
        "backbone": cfg.model.backbone,
        "batch_size": cfg.train.batch_size,
        "epochs_configured": cfg.train.epochs,
        "seed": a.seed,
        "target_acc": a.target,
        "time_limit_s": a.time_limit,
        "outcome": trainer.outcome,
        "time_to_target_s": hit["train_s"] if hit else None,
        "epoch_at_target": hit["epoch"] if hit else None,
        "best_acc": max((pt.get("acc", 0.0) for pt in curve), default=None),
        "fast_paths": trainer.fast.as_dict() if hasattr(trainer, "fast") else {},
        "curve": curve,
        "overrides": a.overrides,
        "machine": {
            **start,
            "device": trainer.device.type,
            "loadavg_start": load_start,
            "loadavg_end": machine_info()["loadavg"],
        },
        "command": " ".join(
            ["python", "benchmarks/time_to_accuracy.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": date,
    }
    split = a.split.replace("+", "")  # train+test -> traintest: file names of letters, digits, . _ - only
    name = f"tta_{cfg.method}_{_file_part(rec['dataset'])}_{split}_{trainer.device.type}{'_' + a.tag if a.tag else ''}"
    out_dir = Path(a.out_dir)
    path = write_record(rec, out_dir / f"{name}.json")
    if curve and "acc" in curve[0]:
        _plot(rec, out_dir / f"{name}.png")
    print(
        f"{cfg.method} on {rec['dataset']} ({a.split}): {rec['outcome']}; "
        f"time to ACC {a.target}: {rec['time_to_target_s']} s; best ACC {rec['best_acc']}; written to {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
