"""A folder of many images clustered end to end without holding them decoded.

    python benchmarks/stream_cluster.py --root /tmp/stream_bench --n 100000 --size 32 --epochs 1

Makes (once, with ``benchmarks/stream.py``'s generator) a folder of ``--n`` JPEGs of 48-96 px in
8 class folders, then runs ``deepclust train --method idfd --data folder:PATH`` on it in this
process with ``data.stream`` = ``--stream`` (default ``true``: streamed from disk; ``auto`` lets the library
decide from the decoded size, and the record keeps the line it logged), a small CNN at
``--size`` px, and records the wall time, the final ACC/NMI/ARI/AMI against the class folders,
what the data stage chose, and the peak PSS of this process plus its DataLoader workers
(sampled every 50 ms) against the decoded size of the dataset at the input size.

Writes ``benchmarks/results/stream_cluster/stream_cluster_<device>[_<tag>].json`` with the machine and load
averages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import PeakMemory, _pss_kb, make_folder

RESULTS = Path(__file__).resolve().parent / "results" / "stream_cluster"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/stream_bench")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--stream", default="true", choices=["true", "auto", "false"])
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import os

    from deepclust.bench import machine_info, stamp_record, write_record
    from deepclust.cli import main as cli

    start = machine_info()
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    folder = make_folder(Path(a.root) / ("large" if a.n == 100_000 else f"n{a.n}"), a.n, 48, 96, 1)
    out = Path(a.root) / f"cluster_run_{os.getpid()}"
    chosen: list[str] = []  # what the data stage decided, as it logged it

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            chosen.append(record.getMessage())

    logging.getLogger("deepclust.data.open").addHandler(_Keep())
    base_mb = _pss_kb(os.getpid()) / 1024
    mem = PeakMemory()
    t0 = time.perf_counter()
    rc = cli(
        [
            "-q",
            "train",
            "--method",
            "idfd",
            "--data",
            f"folder:{folder}",
            "--n-clusters",
            "8",
            "--epochs",
            str(a.epochs),
            "--out",
            str(out),
            "--device",
            "cpu",
            f"data.image_size={a.size}",
            f"data.stream={a.stream}",
            "model.backbone=small_cnn",
            f"train.batch_size={a.batch_size}",
            "train.progress=false",
            "eval.n_init=3",
        ]
    )
    wall = time.perf_counter() - t0
    peak = mem.stop()
    if rc != 0:
        logging.error("training failed with exit status %d", rc)
        return rc
    res = json.loads((out / "results.json").read_text())
    n = res.get("n_samples") or a.n
    rec = {
        "benchmark": "stream_cluster",
        "n_files": a.n,
        "size": a.size,
        "epochs": a.epochs,
        "method": "idfd",
        "backbone": "small_cnn",
        "batch_size": a.batch_size,
        "wall_s": round(wall, 1),
        "metrics": {k: res.get(k) for k in ("acc", "nmi", "ari", "ami")},
        "n_evaluated": n,
        "data_stream": a.stream,
        "data_stage_log": chosen,
        "cluster_sizes": res.get("cluster_sizes"),
        "decoded_dataset_mb_at_size": round(a.n * 3 * a.size * a.size / 2**20, 1),
        "pss_mb_after_imports": round(base_mb, 1),
        **peak,
    }
    stamp_record(rec, start, "benchmarks/stream_cluster.py", argv if argv is not None else sys.argv[1:], date)
    name = f"stream_cluster_cpu{'_' + a.tag if a.tag else ''}.json"
    logging.info("wrote %s: %s", write_record(rec, RESULTS / name), json.dumps(rec["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
