"""Distributed quality benchmark: one process against N torchrun processes, same global batch.

    python benchmarks/ddp_quality.py --method idfd --data fashion-mnist --split test \
        --data-dir /work/shared/data [--epochs E] [--nproc 2] [--device cpu] [--sync-bn]

Trains ``configs/<method>/<data>.yaml`` on the chosen split (train+test protocol on that split)
twice through the command line: ``python -m deepclust train ...`` (one process, ``--single-threads``
threads) and ``python -m torch.distributed.run --standalone --nproc_per_node=N -m deepclust train
...`` (``--threads-per-proc`` threads each; gloo on CPU, NCCL on CUDA), with the same global batch,
epochs and seed. Writes ``benchmarks/results/ddp/ddp_<method>_<data>_<split>_<device>[tag].json`` with
both runs' ACC/NMI/ARI, wall times (the whole command, start-up included, and the trainer's own),
the machine, the versions and the exact commands.

On a single GPU, ``--device cuda --nproc 1`` compares a plain launch with torchrun on one process
(WORLD_SIZE=1: the same single-process code path, so the numbers should agree).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from subprocess import run

from deepclust.bench import machine_info  # the shared machine description (quality.py no longer has its own)

RESULTS = Path(__file__).resolve().parent / "results" / "ddp"
ROOT = Path(__file__).resolve().parents[1]


def _train(cmd: list[str], threads: int, log: Path) -> float:
    """Run one training command with ``threads`` threads per process; its wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.time()
    with open(log, "w") as fh:
        proc = run(cmd, env=env, stdout=fh, stderr=fh, cwd=ROOT)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}), see {log}: {' '.join(cmd)}")
    return wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="idfd")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=os.environ.get("DEEPCLUST_DATA", "../shared/data"))
    p.add_argument("--epochs", type=int, help="default: the config's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--sync-bn", action="store_true", help="train.sync_bn=true for the torchrun run")
    p.add_argument("--single-threads", type=int, default=2, help="threads of the one-process run")
    p.add_argument("--threads-per-proc", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("overrides", nargs="*", help="key=value, applied to both runs")
    a = p.parse_args(argv)

    config = ROOT / "configs" / a.method / f"{a.data}.yaml"
    common = [
        str(config),
        f"data.data_dir={a.data_dir}",
        f"data.train_split={a.split}",
        f"data.eval_split={a.split}",
        f"train.seed={a.seed}",
        f"train.device={a.device}",
        "train.progress=false",
        *a.overrides,
    ]
    if a.epochs:
        common.append(f"train.epochs={a.epochs}")
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        single = [sys.executable, "-m", "deepclust", "train", *common, f"train.out={tmp}/single"]
        ddp = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={a.nproc}",
            "-m",
            "deepclust",
            "train",
            *common,
            f"train.out={tmp}/ddp",
            f"train.sync_bn={str(a.sync_bn).lower()}",
        ]
        for name, cmd, threads in (
            ("single_process", single, a.single_threads),
            (f"torchrun_{a.nproc}", ddp, a.threads_per_proc),
        ):
            wall = _train(cmd, threads, Path(tmp) / f"{name}.log")
            rec = json.loads(
                (Path(tmp) / ("single" if name == "single_process" else "ddp") / "results.json").read_text()
            )
            runs[name] = {
                "command": " ".join(["OMP_NUM_THREADS=" + str(threads), *[c.replace(tmp, "RUN") for c in cmd]]),
                "processes": 1 if name == "single_process" else a.nproc,
                "threads_per_process": threads,
                "command_wall_time_s": round(wall, 1),
                **{
                    k: rec.get(k)
                    for k in (
                        "acc",
                        "nmi",
                        "ari",
                        "epoch",
                        "wall_time_s",
                        "train_images_per_s",
                        "n_init",
                        "cluster_sizes",
                        "distributed",
                        "device",
                    )
                },
            }
            print(f"{name}: ACC {rec['acc']:.4f} NMI {rec['nmi']:.4f} ARI {rec['ari']:.4f} in {wall:.0f}s", flush=True)
        cfg_text = (Path(tmp) / "single" / "config.yaml").read_text()
    one, many = runs["single_process"], runs[f"torchrun_{a.nproc}"]
    out = {
        "benchmark": "ddp_quality",
        "method": a.method,
        "dataset": a.data,
        "split": a.split,
        "protocol": f"train+test on the {a.split} split",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "device": a.device,
        "same": "global batch, epochs, seed and config; only the number of processes differs"
        + ("; BatchNorm synchronised over the processes" if a.sync_bn else "; BatchNorm per process (DDP default)"),
        "runs": runs,
        "delta_torchrun_minus_single": {k: round(many[k] - one[k], 4) for k in ("acc", "nmi", "ari")},
        "config": cfg_text,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    dev = "gpu" if a.device.startswith("cuda") else "cpu"
    path = RESULTS / f"ddp_{a.method}_{a.data}_{a.split}_{dev}{a.tag}.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
