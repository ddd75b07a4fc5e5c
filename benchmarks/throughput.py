"""Training throughput: deepclust's step against a published-style reference loop.

    python benchmarks/throughput.py --method idfd --data cifar10 --data-dir ../shared/data
    python benchmarks/throughput.py --method idfd secu --data fashion-mnist --split test

For every method: the packaged ``<method>/<data>`` config (its model, views and batch size;
``--backbone`` / ``--batch-size`` / ``key=value`` override it), then
:func:`deepclust.bench.bench_throughput` (deepclust's real trainer step, then the reference:
PIL + torchvision per-image transforms in DataLoader workers, fp32, the same model, batch and
loss), the median images/s of ``--windows`` timed windows after ``--warmup`` steps, peak
memory, and the ratio. Writes
``benchmarks/results/throughput/throughput_<method>_<dataset>-<split>_<backbone>_<device>[_<tag>].json`` with the
machine (device, versions, CPU and thread counts, load average at start and end), the command
and the date. Device-agnostic: ``--device cuda`` (or auto on a GPU machine) runs unchanged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from pathlib import Path

from deepclust.bench import bench_config, bench_throughput, machine_info, print_throughput, stamp_record, write_record
from deepclust.engine.device import resolve_device

RESULTS = Path(__file__).resolve().parent / "results" / "throughput"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", nargs="+", default=["idfd"])
    p.add_argument("--data", default="cifar10")
    p.add_argument("--split", default=None, help="training split (default: the config's)")
    p.add_argument("--data-dir", default=os.environ.get("DEEPCLUST_DATA", "../shared/data"))
    p.add_argument("--backbone", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="alternate deepclust and reference windows this often")
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default: CPU count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for deepclust's side")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    for method in a.method:
        over = [*a.overrides, f"train.seed={a.seed}"]
        if a.split:
            over += [f"data.train_split={a.split}", f"data.eval_split={a.split}"]
        cfg = bench_config(method, a.data, a.data_dir, a.backbone, a.batch_size, a.device, over)
        start = machine_info(resolve_device(a.device))
        date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        rec = bench_throughput(cfg, a.warmup, a.windows, a.steps, a.workers, rounds=a.rounds)
        stamp_record(
            rec,
            start,
            "benchmarks/throughput.py",
            argv if argv is not None else sys.argv[1:],
            date,
            device=rec["device"],
            device_name=rec["device_name"],
        )
        rec["overrides"] = a.overrides
        split = rec["split"].replace("+", "")  # train+test -> traintest
        name = f"throughput_{method}_{rec['dataset']}-{split}_{rec['backbone']}_{rec['machine']['device']}"
        path = write_record(rec, RESULTS / f"{name}{'_' + a.tag if a.tag else ''}.json")
        print_throughput(rec)
        print(f"  written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
